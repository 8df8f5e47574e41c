"""Reliability drills for the engine, sources, trainer and checkpoints (issue 6).

Each public function runs one drill and returns a JSON-able dict of figures with
``passed`` (bool), ``failures`` (what broke, one line each) and the exact ``command``
it ran. Size and duration parameters default to the issue's figures; the test suite
calls the same functions with bounded sizes. The drills run the real programs in
subprocesses (``python -m c2p_stream.cli``, ``python -m trainer.cli``) wherever the
behaviour under test is the process's (exit code, terminal, signals), and in-process
only where the drill must reach inside (a delay changed while running, cache files).

The microphone drills need the private PulseAudio server of ``tests/pulse.py`` (a source
checkout) and PulseAudio, the ALSA pulse plugin and PortAudio; without them they return
``{"skipped": why}``. Models are tiny log-mel checkpoints built here (random heads), or,
where labels must mean something (``bad_audio``), trained by ``c2p-train`` on a tiny
synthetic corpus in seconds.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16_000
REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN_CONFIG = """\
corpus: {kind: synthetic, seed: 3, n_train: 3, n_dev: 1, session_s: 40.0}
front_end: {kind: logmel, n_mels: 32, device: cpu}
model: {k: 4, speech_preset: small}
train: {batch_size: 32, max_epochs: EPOCHS, patience: EPOCHS, lr: 0.002, seed: SEED, ATTRIBUTES baselines: []}
cache_dir: CACHE
"""
DETECT_LIMIT_S = 2.0  # device loss: terminal and clients told within this
EXIT_LIMIT_S = 10.0  # any drilled process: exits within this after its fault, else it "hangs"


# ----------------------------------------------------------------------------- shared helpers


def stream_command(*args: Any) -> list[str]:
    """argv of `c2p-stream ARGS` run by this interpreter."""
    return [sys.executable, "-m", "c2p_stream.cli", *map(str, args)]


def train_command(*args: Any) -> list[str]:
    """argv of `c2p-train ARGS` run by this interpreter."""
    return [sys.executable, "-m", "trainer.cli", *map(str, args)]


def shown(command: list[str]) -> str:
    """A command as one would type it: `c2p-stream ...` / `c2p-train ...`, paths kept."""
    words = list(command)
    if words[:3] == [sys.executable, "-m", "c2p_stream.cli"]:
        words = ["c2p-stream", *words[3:]]
    elif words[:3] == [sys.executable, "-m", "trainer.cli"]:
        words = ["c2p-train", *words[3:]]
    return " ".join(words)


@contextlib.contextmanager
def _workspace(work_dir: str | Path | None, name: str) -> Iterator[Path]:
    """`work_dir/name` (kept), or a temporary folder removed afterwards."""
    if work_dir is not None:
        root = Path(work_dir) / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix=f"c2p-drill-{name}-") as tmp:
        yield Path(tmp)


def _result(drill: str, failures: list[str], **figures: Any) -> dict[str, Any]:
    return {"drill": drill, "passed": not failures, "failures": failures, **figures}


def random_checkpoint(*, k: int = 3, n_mels: int = 16, seed: int = 0):
    """A Checkpoint with random small SpeechCNN heads over an n_mels log-mel front end."""
    import torch

    from c2p_stream.checkpoint import AttributeHead, Checkpoint
    from c2p_stream.clusters import describe_clusters
    from c2p_stream.models import SpeechCNN, SpeechCNNDims

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    contours = rng.standard_normal((40, 50))
    heads = {}
    for name in ("arousal", "valence"):
        labels = rng.integers(0, k, len(contours))
        speech = SpeechCNN(SpeechCNNDims(dim=n_mels, k=k, preset="small"))
        heads[name] = AttributeHead(name, "acc", speech, contours[:k].astype(np.float32),
                                    describe_clusters(contours, labels, k))
    return Checkpoint(front_end={"kind": "logmel", "n_mels": n_mels, "dim": n_mels}, heads=heads,
                      info={"name": "tiny-random"})


def tiny_checkpoint(path: str | Path, *, k: int = 3, n_mels: int = 16, seed: int = 0) -> Path:
    """`random_checkpoint` saved to `path`."""
    from c2p_stream.checkpoint import save_checkpoint

    return save_checkpoint(random_checkpoint(k=k, n_mels=n_mels, seed=seed), path)


def tiny_train_config(path: str | Path, cache_dir: str | Path, *, seed: int = 0, epochs: int = 6,
                      attributes: tuple[str, ...] = ("arousal", "valence")) -> Path:
    """The tiny c2p-train config of tests/test_train_cli.py, C2P only: trains in seconds."""
    attrs = f"attributes: [{', '.join(attributes)}],"
    text = (TINY_TRAIN_CONFIG.replace("EPOCHS", str(epochs)).replace("SEED", str(seed))
            .replace("ATTRIBUTES", attrs).replace("CACHE", str(cache_dir)))
    Path(path).write_text(text)
    return Path(path)


def train_tiny_checkpoint(root: str | Path, *, seed: int = 0, epochs: int = 6) -> Path:
    """Run c2p-train on the tiny config into `root/run`; returns its checkpoint directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = tiny_train_config(root / "tiny.yaml", root / "cache", seed=seed, epochs=epochs)
    command = train_command("--config", config, "--out", root / "run", "--no-progress")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{shown(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return root / "run" / "checkpoint"


def write_speech(path: str | Path, seconds: float, *, seed: int = 0, piece_s: float = 300.0,
                 subtype: str = "FLOAT", lead_silence_s: float = 0.0) -> Path:
    """Synthetic speech (trainer.synthetic), written piece by piece so an hour needs no hour in memory."""
    import soundfile as sf

    from trainer.synthetic import synthesize_session

    with sf.SoundFile(path, "w", SAMPLE_RATE_HZ, 1, subtype=subtype) as out:
        if lead_silence_s > 0:
            out.write(np.zeros(round(lead_silence_s * SAMPLE_RATE_HZ), np.float32))
        left_s, piece = seconds, 0
        while left_s > 1e-9:
            part_s = min(piece_s, left_s)
            out.write(synthesize_session(max(part_s, 2.0), seed + piece).audio[: round(part_s * SAMPLE_RATE_HZ)])
            left_s -= part_s
            piece += 1
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Complete JSON lines of `path` (a line still being written is left out)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


class _Lines:
    """A text stream read on a thread: every line with its arrival time (time.monotonic())."""

    def __init__(self, stream) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout_s: float) -> tuple[float, re.Match] | None:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for at, line in self.lines[seen:]:
                if match := re.search(pattern, line):
                    return at, match
            seen = len(self.lines)
            if not self._thread.is_alive() and seen == len(self.lines):
                return None
            time.sleep(0.01)
        return None

    def join(self, timeout_s: float = 5.0) -> str:
        self._thread.join(timeout_s)
        return "\n".join(line for _, line in self.lines)


def _proc_status(pid: int) -> dict[str, float]:
    """RSS (MB) and thread count of a live process, and its open file descriptors."""
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                status[key] = int(value)
    status["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return status


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(10)


def _pulse_module():
    """(tests/pulse.py of this checkout, None) or (None, why the mic drills cannot run)."""
    path = REPO_ROOT / "tests" / "pulse.py"
    if not path.is_file():
        return None, f"{path} not found: the microphone drills need a source checkout"
    spec = importlib.util.spec_from_file_location("c2p_drills_pulse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason = module.missing()
    return (None, reason) if reason else (module, None)


# ----------------------------------------------------------------------------- 1. soak


def soak(audio_s: float = 3600.0, *, sample_s: float = 0.01, warmup_fraction: float = 0.1,
         max_growth_mb: float = 16.0, work_dir: str | Path | None = None) -> dict[str, Any]:
    """`audio_s` of synthetic speech through `c2p-stream --file --fast`: memory flat, events
    continuous, no skipped hops. RSS, threads and fds of the process are sampled every
    `sample_s` against the events written so far (= stream seconds); after the first
    `warmup_fraction` of the events RSS may grow by at most `max_growth_mb`."""
    from c2p_stream.audio import count_windows

    failures: list[str] = []
    with _workspace(work_dir, "soak") as root:
        checkpoint = tiny_checkpoint(root / "ckpt")
        wav = write_speech(root / "soak.wav", audio_s, seed=11, subtype="PCM_16")
        jsonl = root / "events.jsonl"
        command = stream_command("--checkpoint", checkpoint, "--file", wav, "--fast", "--no-dashboard", "--quiet",
                                 "--no-ws", "--jsonl", jsonl)
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root)
        stderr = _Lines(process.stderr)
        samples, offset, n_events = [], 0, 0
        try:
            with open(jsonl, "a+b") as reader:
                while process.poll() is None:
                    reader.seek(offset)
                    chunk = reader.read()
                    offset += len(chunk)
                    n_events += chunk.count(b"\n")
                    try:
                        status = _proc_status(process.pid)
                    except (FileNotFoundError, ProcessLookupError):
                        break
                    samples.append((time.monotonic() - started, n_events, status))
                    time.sleep(sample_s)
            code = process.wait(600)
        finally:
            _stop(process)
        wall_s = time.monotonic() - started
        err = stderr.join()
        events = read_jsonl(jsonl)
    expected = count_windows(round(audio_s * SAMPLE_RATE_HZ))
    if code != 0:
        failures.append(f"exit code {code}: {err[-500:]}")
    if "Traceback" in err:
        failures.append("a traceback on stderr")
    seqs = [e["seq"] for e in events]
    if seqs != list(range(expected)):
        missing = sorted(set(range(expected)) - set(seqs))
        failures.append(f"events not continuous: {len(events)} of {expected}, first missing {missing[:5]}")
    if any(e["start_s"] != e["seq"] or e["end_s"] != e["seq"] + 2 for e in events):
        failures.append("event times do not follow seq")
    skipped = max((e["skipped_hops"] for e in events), default=0)
    if skipped:
        failures.append(f"{skipped} skipped hops in --fast mode")

    # while processing, after warm-up (start-up and shutdown create and end threads)
    warm = [s for s in samples if max(1, warmup_fraction * expected) <= s[1] < expected]
    rss = [s[2]["VmRSS"] for s in warm]
    figures: dict[str, Any] = {"samples": len(samples), "samples_after_warmup": len(warm)}
    if len(warm) >= 2:
        hops = np.array([s[1] for s in warm], dtype=np.float64)
        slope_mb_per_hop = float(np.polyfit(hops, rss, 1)[0]) if np.ptp(hops) > 0 else 0.0
        growth = rss[-1] - rss[0]
        figures.update(
            processing_s=_r(warm[-1][0] - warm[0][0], 2), rss_mb_at_warmup=_r(rss[0], 1), rss_mb_at_end=_r(rss[-1], 1), rss_mb_max=_r(max(rss), 1),
            rss_mb_min_after_warmup=_r(min(rss), 1), rss_growth_after_warmup_mb=_r(growth, 1),
            rss_range_after_warmup_mb=_r(max(rss) - min(rss), 1),
            rss_slope_mb_per_hour_of_stream=_r(slope_mb_per_hop * 3600, 2),
            threads_min_max=[min(s[2]["Threads"] for s in warm), max(s[2]["Threads"] for s in warm)],
            fds_min_max=[min(s[2]["fds"] for s in warm), max(s[2]["fds"] for s in warm)],
        )
        if max(rss) - rss[0] > max_growth_mb:
            failures.append(f"RSS grew {max(rss) - rss[0]:.1f} MB after warm-up (limit {max_growth_mb} MB)")
        if figures["threads_min_max"][0] != figures["threads_min_max"][1]:
            failures.append(f"thread count changed during the soak: {figures['threads_min_max']}")
        if figures["fds_min_max"][0] != figures["fds_min_max"][1]:
            failures.append(f"open file descriptors changed during the soak: {figures['fds_min_max']}")
    else:
        failures.append(f"only {len(warm)} memory samples after warm-up: the run was too short to judge")
    latencies = [e["latency_ms"] for e in events]
    return _result(
        "soak", failures, command=shown(command), audio_s=audio_s, events=len(events), expected_events=expected,
        seq_continuous=seqs == list(range(expected)), skipped_hops=skipped, exit_code=code,
        wall_s=_r(wall_s, 1), realtime_factor=_r(audio_s / wall_s, 1),
        decoded_file_mb=_r(audio_s * SAMPLE_RATE_HZ * 4 / 2**20, 1),
        latency_ms_p50=_r(_percentile(latencies, 50), 2), latency_ms_p99=_r(_percentile(latencies, 99), 2),
        **figures,
    )


# ----------------------------------------------------------------------------- 2. falling behind


def falling_behind(delay_s: float = 1.5, *, slow_s: float = 60.0, recover_s: float = 20.0,
                   on_time_s: float = 0.5, cli_s: float = 12.0, seed: int = 5,
                   work_dir: str | Path | None = None) -> dict[str, Any]:
    """A paced stream through a LiveRunner whose inference is slowed by `delay_s` per hop for
    the first `slow_s` of stream time, then not at all for `recover_s`.

    Lag of an event = wall time it was handed on - wall time its window's last sample was
    due. Checks: every skipped window is counted (the last event's skipped_hops equals the
    gaps in seq), lag stays under delay + 1 hop + 0.3 s, and once the delay stops at most
    2 windows are skipped or late (lag > `on_time_s`). With `cli_s` > 0 also runs
    `c2p-stream --file F --inject-delay-s delay_s` (paced) for `cli_s` s of audio and checks
    the counts it writes to JSONL."""
    from c2p_stream.checkpoint import load_checkpoint
    from c2p_stream.engine import Engine, LiveRunner
    from c2p_stream.features import build_front_end
    from trainer.synthetic import synthesize_session

    failures: list[str] = []
    with _workspace(work_dir, "falling_behind") as root:
        checkpoint = load_checkpoint(tiny_checkpoint(root / "ckpt"))
        engine = Engine(checkpoint, build_front_end(checkpoint.front_end_config(device="cpu")))
        engine.warm_up()
        audio = synthesize_session(slow_s + recover_s, seed).audio
        handed: list[tuple[Any, float]] = []
        runner = LiveRunner(engine, [lambda event: handed.append((event, time.perf_counter()))],
                            inject_delay_s=delay_s).start()
        step = SAMPLE_RATE_HZ // 10  # 100 ms chunks, as the CLI's sources
        started = time.perf_counter()
        stop_s = None  # stream time at which the delay was switched off
        for begin in range(0, len(audio), step):
            end = min(begin + step, len(audio))
            wait_s = started + end / SAMPLE_RATE_HZ - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            if stop_s is None and end / SAMPLE_RATE_HZ >= slow_s:
                runner.inject_delay_s = 0.0  # the model is fast again from this window on
                stop_s = end / SAMPLE_RATE_HZ
            runner.feed(audio[begin:end])
        runner.close(drain=True)
        cli = _falling_behind_cli(root, delay_s, cli_s, failures) if cli_s > 0 else None

    lags = {e.seq: at - (started + e.end_s) for e, at in handed}
    seqs = [e.seq for e, _ in handed]
    n_windows = (len(audio) - 2 * SAMPLE_RATE_HZ) // SAMPLE_RATE_HZ + 1
    missing = sorted(set(range(n_windows)) - set(seqs))
    if seqs != sorted(set(seqs)):
        failures.append("events out of order")
    last_count = handed[-1][0].skipped_hops if handed else 0
    if last_count != len(missing) or engine.skipped_hops != len(missing):
        failures.append(f"skipped windows {len(missing)} but the last event says {last_count} "
                        f"(engine: {engine.skipped_hops})")
    counts = [e.skipped_hops for e, _ in handed]
    if counts != sorted(counts):
        failures.append("skipped_hops decreased between events")
    if n_windows - 1 not in lags:
        failures.append("the last window was not labelled")
    bound_s = delay_s + 1.0 + 0.3
    max_lag = max(lags.values(), default=0.0)
    if max_lag > bound_s:
        failures.append(f"maximum lag {max_lag:.2f} s exceeds delay + 1 hop + 0.3 s = {bound_s:.2f} s")

    # after the delay stops: windows completed at or after that moment (window i ends at i + 2 s)
    after = [i for i in range(n_windows) if i + 2 >= stop_s]
    bad = [i for i in after if i not in lags or lags[i] > on_time_s]
    recovery_hops = 0
    for i in after:
        if not any(j >= i for j in bad):
            break
        recovery_hops += 1
    if recovery_hops > 2:
        failures.append(f"recovery took {recovery_hops} hops after the delay stopped (limit 2)")
    slow = [i for i in range(n_windows) if i + 2 < stop_s]  # completed while inference was slow
    settled = [lags[i] for i in after[recovery_hops:] if i in lags]
    return _result(
        "falling_behind", failures,
        command=f"in-process: Engine + LiveRunner, paced 100 ms chunks, inject_delay_s={delay_s} for "
                f"{slow_s:g} s of stream then 0 for {recover_s:g} s",
        delay_s=delay_s, windows=n_windows, labelled=len(handed), skipped=len(missing),
        skipped_reported_in_last_event=last_count,
        slow_phase={"windows": len(slow), "labelled": sum(i in lags for i in slow),
                    "skipped": sum(i not in lags for i in slow),
                    "max_lag_s": _r(max((lags[i] for i in slow if i in lags), default=0.0)),
                    "lag_bound_s": bound_s},
        max_lag_s=_r(max_lag), recovery_hops=recovery_hops,
        recovery_windows=[{"seq": i, "lag_s": _r(lags.get(i)), "skipped": i not in lags}
                          for i in after[: recovery_hops + 2]],
        lag_after_recovery_ms_p50=_r(_percentile([x * 1000 for x in settled], 50), 1),
        lag_after_recovery_ms_p99=_r(_percentile([x * 1000 for x in settled], 99), 1),
        cli=cli,
    )


def _falling_behind_cli(root: Path, delay_s: float, cli_s: float, failures: list[str]) -> dict[str, Any]:
    """`c2p-stream --file F --inject-delay-s delay_s` (paced): the skipped hops it reports."""
    wav = write_speech(root / "cli.wav", cli_s, seed=21)
    jsonl = root / "cli.jsonl"
    command = stream_command("--checkpoint", root / "ckpt", "--file", wav, "--no-dashboard", "--quiet", "--no-ws",
                             "--jsonl", jsonl, "--inject-delay-s", delay_s)
    done = subprocess.run(command, capture_output=True, text=True, timeout=cli_s + 120)
    events = read_jsonl(jsonl)
    from c2p_stream.audio import count_windows

    seqs = [e["seq"] for e in events]
    n_windows = count_windows(round(cli_s * SAMPLE_RATE_HZ))
    gaps = len(set(range(n_windows)) - set(seqs))
    reported = events[-1]["skipped_hops"] if events else None
    max_latency_ms = max((e["latency_ms"] for e in events), default=0.0)
    if done.returncode != 0 or not events:
        failures.append(f"cli: exit {done.returncode}, {len(events)} events: {done.stderr[-300:]}")
    elif reported != gaps or gaps == 0:
        failures.append(f"cli: {gaps} windows missing from JSONL, the last event reports {reported}")
    if max_latency_ms > (delay_s + 1.3) * 1000:
        failures.append(f"cli: latency {max_latency_ms:.0f} ms exceeds delay + 1 hop + 0.3 s")
    return {"command": shown(command), "exit_code": done.returncode, "windows": n_windows, "labelled": len(events),
            "skipped": gaps, "skipped_reported": reported, "max_latency_ms": _r(max_latency_ms, 1)}


# ----------------------------------------------------------------------------- 3. device loss


def device_loss(repeats: int = 10, *, signals: tuple[str, ...] = ("SIGKILL", "SIGSTOP"),
                labels_before_kill: int = 2, work_dir: str | Path | None = None) -> dict[str, Any]:
    """`c2p-stream --mic --ws-port 0` on a private PulseAudio server with a websocket client
    connected; the server is killed (SIGKILL: crash) or frozen (SIGSTOP) once the client has
    `labels_before_kill` labels. Each of `repeats` rounds per signal must: print "source
    lost" on stderr and deliver `end` with a reason starting "source lost" within 2 s of
    the kill, exit with code 1 within 10 s, and print no traceback."""
    pulse, why = _pulse_module()
    if pulse is None:
        return {"drill": "device_loss", "skipped": why}
    failures: list[str] = []
    trials = []
    with _workspace(work_dir, "device_loss") as root:
        checkpoint = tiny_checkpoint(root / "ckpt")
        wav = write_speech(root / "talk.wav", 40.0, seed=31, subtype="PCM_16")
        command = stream_command("--mic", "--no-dashboard", "--quiet", "--ws-port", 0, "--checkpoint", checkpoint)
        for round_ in range(repeats):
            for name in signals:
                trial = _device_loss_trial(pulse, command, wav, getattr(signal, name), labels_before_kill)
                trial = {"signal": name, "round": round_, **trial}
                trials.append(trial)
                if trial["problems"]:
                    failures.append(f"{name} round {round_}: {'; '.join(trial['problems'])}")
    by_signal = {}
    for name in signals:
        mine = [t for t in trials if t["signal"] == name]
        term = [t["terminal_s"] for t in mine if t["terminal_s"] is not None]
        client = [t["client_s"] for t in mine if t["client_s"] is not None]
        exits = [t["exit_s"] for t in mine if t["exit_s"] is not None]
        by_signal[name] = {
            "rounds": len(mine), "passed": sum(not t["problems"] for t in mine),
            "terminal_s": term, "client_s": client,
            "terminal_s_max": max(term, default=None), "client_s_max": max(client, default=None),
            "exit_s_max": max(exits, default=None),
        }
    return _result("device_loss", failures, command=shown(command), repeats=repeats, by_signal=by_signal,
                   end_reasons=sorted({t["end_reason"] or "" for t in trials}),
                   exit_codes=sorted({t["exit_code"] for t in trials}, key=str),
                   stderr_other_lines=sorted({line for t in trials for line in t["other_stderr"]})[:10],
                   trials=trials)


def _device_loss_trial(pulse, command: list[str], wav: Path, sig: int, labels_before_kill: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    problems: list[str] = []
    out: dict[str, Any] = {"terminal_s": None, "client_s": None, "exit_s": None, "exit_code": None,
                           "end_reason": None, "other_stderr": []}
    with pulse.PulseServer() as server:
        process = subprocess.Popen(command, env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        stderr = _Lines(process.stderr)
        try:
            found = stderr.wait_for(r"feed on ws://127\.0\.0\.1:(\d+)/ws", 60)
            if found is None:
                problems.append("the feed never came up: " + stderr.join()[-300:])
                return {**out, "problems": problems}
            port = int(found[1][1])

            async def client() -> tuple[float | None, float | None, str | None]:
                killed_at = end_at = reason = None
                labels = 0
                async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
                    server.play(wav)
                    while True:
                        timeout = 60 if killed_at is None else max(0.1, killed_at + EXIT_LIMIT_S - time.monotonic())
                        try:
                            message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                        except (ConnectionClosed, asyncio.TimeoutError):
                            break
                        if message["type"] == "labels":
                            labels += 1
                            if labels == labels_before_kill and killed_at is None:
                                killed_at = time.monotonic()
                                await asyncio.to_thread(server.kill, sig)
                        elif message["type"] == "end":
                            end_at, reason = time.monotonic(), message.get("reason")
                            break
                return killed_at, end_at, reason

            killed_at, end_at, reason = asyncio.run(client())
            if killed_at is None:
                problems.append("no labels arrived before the kill")
                return {**out, "problems": problems}
            try:
                out["exit_code"] = process.wait(max(0.1, killed_at + EXIT_LIMIT_S - time.monotonic()))
                out["exit_s"] = time.monotonic() - killed_at
            except subprocess.TimeoutExpired:
                problems.append(f"hang: still running {EXIT_LIMIT_S:g} s after the kill")
            text = stderr.join()
            lost = [at for at, line in stderr.lines if "source lost" in line]
            out["terminal_s"] = lost[0] - killed_at if lost else None
            out["client_s"] = end_at - killed_at if end_at is not None else None
            out["end_reason"] = reason
            out["other_stderr"] = sorted({re.sub(r"\d+", "N", line) for _, line in stderr.lines
                                          if "feed on" not in line and "source lost" not in line})
            if out["terminal_s"] is None or out["terminal_s"] > DETECT_LIMIT_S:
                problems.append(f"terminal told after {out['terminal_s']} s")
            if out["client_s"] is None or out["client_s"] > DETECT_LIMIT_S or not (reason or "").startswith("source lost"):
                problems.append(f"client got end {reason!r} after {out['client_s']} s")
            if out["exit_code"] != 1:
                problems.append(f"exit code {out['exit_code']}")
            if "Traceback" in text:
                problems.append("traceback on stderr")
        finally:
            _stop(process)
    return {**{k: (_r(v) if isinstance(v, float) else v) for k, v in out.items()}, "problems": problems}


# ----------------------------------------------------------------------------- 4. capture lag


def capture_lag(stall_s: float = 3.0, *, events_before: int = 3, events_after: int = 8,
                work_dir: str | Path | None = None) -> dict[str, Any]:
    """`c2p-stream --mic --jsonl` on the private PulseAudio server; the whole c2p-stream
    process is stopped (SIGSTOP) for `stall_s`, then continued. PulseAudio buffers the
    audio meanwhile, so no overflow is flagged: the stall must show as capture_lag_s >=
    stall_s - 0.3 in the next event, the stream must go on (no false "source lost"), lag
    must fall back under 0.5 s, and SIGTERM must still end the run with exit code 0."""
    pulse, why = _pulse_module()
    if pulse is None:
        return {"drill": "capture_lag", "skipped": why}
    failures: list[str] = []
    with _workspace(work_dir, "capture_lag") as root:
        checkpoint = tiny_checkpoint(root / "ckpt")
        wav = write_speech(root / "talk.wav", 40.0, seed=41, subtype="PCM_16")
        jsonl = root / "events.jsonl"
        command = stream_command("--mic", "--no-dashboard", "--quiet", "--no-ws", "--jsonl", jsonl,
                                 "--checkpoint", checkpoint)
        with pulse.PulseServer() as server:
            process = subprocess.Popen(command, env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
            stderr = _Lines(process.stderr)
            try:
                server.play(wav)
                if not _wait_events(jsonl, events_before, 60, process):
                    failures.append("too few events before the stall: " + stderr.join()[-300:])
                    return _result("capture_lag", failures, command=shown(command))
                before = read_jsonl(jsonl)
                process.send_signal(signal.SIGSTOP)
                time.sleep(stall_s)
                process.send_signal(signal.SIGCONT)
                _wait_events(jsonl, len(before) + events_after, 30, process)
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(EXIT_LIMIT_S)
                except subprocess.TimeoutExpired:
                    code = None
                    failures.append("hang after SIGTERM")
            finally:
                _stop(process)
        events = read_jsonl(jsonl)
        err = stderr.join()
    after = events[len(before):]
    lag_before = max(e["capture_lag_s"] for e in before)
    first_after = after[0]["capture_lag_s"] if after else None
    peak_after = max((e["capture_lag_s"] for e in after), default=None)
    if lag_before >= 0.5:
        failures.append(f"capture lag {lag_before:.2f} s before the stall")
    if first_after is None or first_after < stall_s - 0.3:
        failures.append(f"the first event after a {stall_s:g} s stall shows capture_lag_s {first_after}")
    if not after or after[-1]["capture_lag_s"] >= 0.5:
        failures.append("capture lag did not fall back under 0.5 s")
    if code != 0 or "source lost" in err:
        failures.append(f"exit code {code} (a stall is not a lost device): {err[-300:]}")
    if "Traceback" in err:
        failures.append("traceback on stderr")
    return _result(
        "capture_lag", failures, command=shown(command) + f"; SIGSTOP for {stall_s:g} s, SIGCONT, SIGTERM",
        stall_s=stall_s, capture_lag_before_max_s=_r(lag_before), capture_lag_first_after_s=_r(first_after),
        capture_lag_after_max_s=_r(peak_after),
        lags_after=[[e["seq"], _r(e["capture_lag_s"])] for e in after],
        skipped_hops_after=after[-1]["skipped_hops"] if after else None,
        overflows=max((e["overflows"] for e in events), default=0), exit_code=code,
    )


def _wait_events(jsonl: Path, n: int, timeout_s: float, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if len(read_jsonl(jsonl)) >= n:
            return True
        time.sleep(0.05)
    return len(read_jsonl(jsonl)) >= n


# ----------------------------------------------------------------------------- 5. training killed


def training_killed(kills: int = 12, *, phases: tuple[str, ...] = ("cache", "state", "checkpoint", "state", "checkpoint",
                                                                   "random"),
                    seed: int = 0, epochs: int = 6, attributes: tuple[str, ...] = ("arousal", "valence"),
                    rng_seed: int = 1, work_dir: str | Path | None = None) -> dict[str, Any]:
    """`c2p-train` on the tiny config, SIGKILLed `kills` times, then `--resume`d to the end.

    Kill targets cycle through `phases`: "cache" (a feature-cache temp file exists),
    "state" (an epoch state's temp file exists: mid-save), "checkpoint" (a checkpoint
    directory's temp exists: mid-save), "random" (uniform in the reference run's duration).
    A save is targeted once, so each kill makes progress. After every kill, every state and
    checkpoint visible under its final name must load. The final metrics.json must equal
    that of an uninterrupted run with the same seed, number for number."""
    import torch

    from c2p_stream.checkpoint import CheckpointError, load_checkpoint

    failures: list[str] = []
    rng = random.Random(rng_seed)
    with _workspace(work_dir, "training_killed") as root:
        reference = tiny_train_config(root / "reference.yaml", root / "cache-reference", seed=seed, epochs=epochs,
                                      attributes=attributes)
        config = tiny_train_config(root / "killed.yaml", root / "cache-killed", seed=seed, epochs=epochs,
                                   attributes=attributes)
        ref_command = train_command("--config", reference, "--out", root / "reference", "--no-progress")
        started = time.monotonic()
        done = subprocess.run(ref_command, capture_output=True, text=True, timeout=900)
        reference_s = time.monotonic() - started
        if done.returncode != 0:
            return _result("training_killed", [f"the uninterrupted run failed: {done.stderr[-500:]}"],
                           command=shown(ref_command))
        out = root / "killed"
        command = train_command("--config", config, "--out", out, "--no-progress", "--resume")
        records, logs, targeted = [], [], set()
        for i in range(kills):
            phase = phases[i % len(phases)]
            left = _work_left(out, attributes, epochs)
            if not _reachable(phase, out, root / "cache-killed", attributes, epochs, targeted):
                phase = "random"  # nothing of that kind is left to interrupt
            log = root / f"attempt-{i}.log"
            with open(log, "w") as handle:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)
            started = time.monotonic()
            kill_at = started + rng.uniform(0.2, STARTUP_S + left * max(reference_s - STARTUP_S, 1.0))
            hit = None
            while process.poll() is None:
                if phase == "random":
                    hit = (("random",), None) if time.monotonic() >= kill_at else None
                else:
                    hit = _kill_target(phase, out, root / "cache-killed", targeted)
                if hit is not None:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.0002)
            code = process.wait()
            logs.append(log.read_text())
            if hit is None:
                records.append({"attempt": i, "phase": phase, "killed": False, "exit_code": code})
                break
            key, temp = hit
            targeted.add(key)
            last_line = ([line for line in logs[-1].splitlines() if line.strip()] or ["(nothing yet)"])[-1]
            broken = _unloadable_saves(out, torch, load_checkpoint, CheckpointError)
            if broken:
                failures.append(f"after kill {i}: a partial save is visible under its final name: {broken}")
            records.append({"attempt": i, "phase": phase, "killed": True, "target": "/".join(key),
                            "at_s": _r(time.monotonic() - started, 2),
                            "temp_left_behind": bool(temp is not None and temp.exists()),
                            "last_log_line": last_line[:120]})
        final_code, resumes = None, 0
        while final_code != 0 and resumes < 5:
            log = root / f"resume-{resumes}.log"
            with open(log, "w") as handle:
                final_code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=handle, timeout=900).returncode
            logs.append(log.read_text())
            resumes += 1
        if final_code != 0:
            failures.append(f"--resume did not finish after {resumes} tries: {logs[-1][-500:]}")
            return _result("training_killed", failures, command=shown(command), kills=records)
        expected = json.loads((root / "reference" / "metrics.json").read_text())
        got = json.loads((out / "metrics.json").read_text())
        differences = _differences(expected, got)
        if differences:
            failures.append(f"final metrics differ from the uninterrupted run: {differences[:5]}")
        weights = [json.loads((run / "checkpoint" / "checkpoint.json").read_text())["weights_sha256"]
                   for run in (root / "reference", out)]
        if weights[0] != weights[1]:
            failures.append("the final checkpoint's weights differ from the uninterrupted run's")
        text = "\n".join(logs)
        leftovers = sorted(str(path.relative_to(root)) for folder in (out, root / "cache-killed")
                           for path in folder.rglob(".*") if ".tmp" in path.name or ".old-" in path.name)
        unreadable = [line for line in text.splitlines() if "unreadable training state" in line]
        if unreadable:
            failures.append(f"resume met a partial state file: {unreadable[:2]}")
    done_kills = [r for r in records if r["killed"]]
    phase_counts: dict[str, int] = {}
    for r in done_kills:
        phase_counts[r["phase"]] = phase_counts.get(r["phase"], 0) + 1
    return _result(
        "training_killed", failures, command=shown(command) + "  (SIGKILLed, then rerun until exit 0)",
        reference_command=shown(ref_command), reference_s=_r(reference_s, 1),
        kills_done=len(done_kills), kills_by_phase=phase_counts,
        kills_inside_a_save=sum(r["temp_left_behind"] for r in done_kills if r["phase"] in ("state", "checkpoint")),
        resumes_to_finish=resumes, resumed_from=re.findall(r"resumed after epoch \d+", text),
        metrics_equal=not differences, weights_equal=weights[0] == weights[1],
        temp_files_left_behind=leftovers, kills=records,
    )


STARTUP_S = 4.0  # c2p-train's imports and corpus loading, roughly, before any training


def _epochs_done(out: Path, attribute: str) -> int:
    states = sorted((out / "state" / f"{attribute}-c2p").glob("epoch-*.pt"))
    return int(states[-1].stem.split("-")[1]) if states else 0


def _work_left(out: Path, attributes: tuple[str, ...], epochs: int) -> float:
    """Fraction of the run's epochs not yet saved (a rough clock for "random" kills)."""
    done = sum(epochs if (out / "state" / f"{a}-c2p" / "final").is_dir() else _epochs_done(out, a) for a in attributes)
    return 1.0 - done / (epochs * len(attributes))


def _reachable(phase: str, out: Path, cache: Path, attributes: tuple[str, ...], epochs: int, targeted: set) -> bool:
    """Whether a save of kind `phase` that was not targeted yet is still ahead in this run."""
    unfinished = [a for a in attributes if not (out / "state" / f"{a}-c2p" / "final").is_dir()]
    if phase == "cache":
        return len(list(cache.glob("*/meta.json"))) < 2
    if phase == "state":
        return any((f"{a}-c2p", f"epoch-{e:03d}.pt") not in targeted
                   for a in unfinished for e in range(_epochs_done(out, a) + 1, epochs + 1))
    if phase == "checkpoint":
        keys = [(f"{a}-c2p", "final") for a in unfinished]
        keys += [] if (out / "checkpoint").is_dir() else [("run", "checkpoint")]
        return any(key not in targeted for key in keys)
    return True


def _kill_target(phase: str, out: Path, cache: Path, targeted: set) -> tuple[tuple, Path] | None:
    """The (key, temp path) of a save of kind `phase` in progress that was not targeted before."""
    def entries(folder: Path) -> list[str]:
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []

    if phase == "cache":
        for entry in entries(cache):
            for name in entries(cache / entry):
                if name.startswith(".features.") and name.endswith(".npy.tmp") and ("cache", entry) not in targeted:
                    return ("cache", entry), cache / entry / name
        return None
    state = out / "state"
    for variant in entries(state):
        for name in entries(state / variant):
            if phase == "state" and name.startswith(".epoch-") and ".pt.tmp-" in name:
                key = (variant, name[1:].split(".tmp-")[0])
            elif phase == "checkpoint" and name.startswith(".final.tmp-"):
                key = (variant, "final")
            else:
                continue
            if key not in targeted:
                return key, state / variant / name
    if phase == "checkpoint":
        for name in entries(out):
            if name.startswith(".checkpoint.tmp-") and ("run", "checkpoint") not in targeted:
                return ("run", "checkpoint"), out / name
    return None


def _unloadable_saves(out: Path, torch, load_checkpoint, CheckpointError) -> list[str]:
    """Saves under their final names that do not load (should be none, whatever the kill)."""
    broken = []
    for path in sorted(out.glob("state/*/epoch-*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            broken.append(f"{path.name}: {type(err).__name__}")
    for path in [*sorted(out.glob("state/*/final")), out / "checkpoint"]:
        if path.is_dir():
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                broken.append(str(err)[:120])
    for path in (out / "metrics.json", out / "config.yaml"):
        if path.exists() and path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError:
                broken.append(path.name)
    return broken


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


# ----------------------------------------------------------------------------- 6. corruption


def corruption(*, manifest_flips: int = 200, seed: int = 0, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Feature cache: a truncated, a bit-flipped features.npy and a truncated meta.json are
    detected, reported and rebuilt to the same features. Checkpoint: a truncated and a
    bit-flipped model.safetensors and checkpoint.json are refused by `c2p-stream
    --checkpoint` with one error line and a non-zero exit; then `manifest_flips` random
    single-bit flips of checkpoint.json are loaded: none may be used silently."""
    from c2p_stream.checkpoint import CheckpointError, load_checkpoint
    from c2p_stream.config import CorpusConfig, FrontEndConfig
    from trainer.cache import cached_features
    from trainer.corpora import corpus_identity, load_corpus, split_recordings

    failures: list[str] = []
    rng = np.random.default_rng(seed)
    with _workspace(work_dir, "corruption") as root:
        # -- feature cache
        corpus = CorpusConfig(kind="synthetic", seed=1, n_train=1, n_dev=1, session_s=20.0)
        recordings = split_recordings(load_corpus(corpus), "train")
        front_end = FrontEndConfig(kind="logmel", n_mels=16, device="cpu")
        cache_dir = root / "cache"

        def features(log: list[str]) -> np.ndarray:
            mapped = cached_features(recordings, "train", front_end, corpus_identity(corpus), cache_dir,
                                     progress=False, log=log.append)
            copy = np.array(mapped)
            del mapped
            return copy

        original = features([])
        entry = next(cache_dir.glob("*/features.npy")).parent
        cache_cases = {}
        for case, damage in (
            ("features.npy truncated", lambda: _truncate(entry / "features.npy", 0.5)),
            ("features.npy bit-flipped", lambda: _flip_bit(entry / "features.npy", rng, skip=128)),
            ("features.npy header bit-flipped", lambda: _flip_bit(entry / "features.npy", rng, stop=128)),
            ("meta.json truncated", lambda: _truncate(entry / "meta.json", 0.5)),
        ):
            damage()
            log: list[str] = []
            rebuilt = features(log)
            reported = [line for line in log if "rebuilding" in line]
            equal = bool(np.array_equal(rebuilt, original))
            cache_cases[case] = {"reported": reported[0] if reported else None, "rebuilt_equal": equal}
            if not reported or not equal:
                failures.append(f"cache, {case}: reported={bool(reported)}, rebuilt equal={equal}")

        # -- checkpoints
        checkpoint = tiny_checkpoint(root / "ckpt")
        wav = write_speech(root / "talk.wav", 6.0, seed=3)
        damages = {
            "model.safetensors truncated": ("model.safetensors", lambda p: _truncate(p, 0.5)),
            "model.safetensors bit-flipped": ("model.safetensors", lambda p: _flip_bit(p, rng)),
            "model.safetensors header bit-flipped": ("model.safetensors", lambda p: _flip_bit(p, rng, skip=8, stop=64)),
            "checkpoint.json truncated": ("checkpoint.json", lambda p: _truncate(p, 0.5)),
            "checkpoint.json bit-flipped (a digit of a prototype)": ("checkpoint.json", _flip_prototype_digit),
        }
        jobs = {}
        for case, (file, damage) in damages.items():
            broken = root / f"ckpt-{len(jobs)}"
            shutil.copytree(checkpoint, broken)
            damage(broken / file)
            jobs[case] = stream_command("--checkpoint", broken, "--file", wav, "--fast", "--no-dashboard",
                                        "--quiet", "--no-ws", "--jsonl", root / f"out-{len(jobs)}.jsonl")
        checkpoint_cases = _run_error_cases(jobs, failures, "checkpoint")

        # -- random single-bit flips of checkpoint.json, loaded in-process
        manifest = (checkpoint / "checkpoint.json").read_bytes()
        meaning = _canonical_json(json.loads(manifest))
        silent, crashed, refused, harmless = [], [], 0, 0
        for _ in range(manifest_flips):
            position = int(rng.integers(len(manifest) * 8))
            flipped = bytearray(manifest)
            flipped[position // 8] ^= 1 << (position % 8)
            (checkpoint / "checkpoint.json").write_bytes(bytes(flipped))
            try:
                load_checkpoint(checkpoint)
                if _canonical_json(json.loads(bytes(flipped))) == meaning:
                    harmless += 1  # e.g. 'e' -> 'E' in an exponent: same numbers, nothing misread
                else:
                    silent.append(manifest[max(0, position // 8 - 12): position // 8 + 12].decode(errors="replace"))
            except CheckpointError:
                refused += 1
            except Exception as err:  # noqa: BLE001 - a crash instead of a clear error is the finding
                crashed.append(f"{type(err).__name__}: {err}"[:120])
        (checkpoint / "checkpoint.json").write_bytes(manifest)
        if silent:
            failures.append(f"{len(silent)} of {manifest_flips} single-bit flips of checkpoint.json loaded "
                            f"silently, e.g. near {silent[0]!r}")
        if crashed:
            failures.append(f"{len(crashed)} flips of checkpoint.json crashed the loader: {crashed[0]}")
    return _result(
        "corruption", failures,
        command="in-process trainer.cache.cached_features (log-mel, synthetic corpus); "
                "c2p-stream --checkpoint BROKEN --file F --fast --no-dashboard --quiet --no-ws --jsonl OUT",
        cache=cache_cases, checkpoint=checkpoint_cases,
        manifest_bit_flips={"tried": manifest_flips, "refused": refused, "loaded_silently": len(silent),
                            "loaded_same_meaning": harmless, "crashed": len(crashed)},
    )


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_bit(path: Path, rng: np.random.Generator, skip: int = 0, stop: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = int(rng.integers(skip * 8, (stop or len(data)) * 8))
    data[position // 8] ^= 1 << (position % 8)
    path.write_bytes(bytes(data))


def _flip_prototype_digit(path: Path) -> None:
    """Flip the lowest bit of a digit inside the first cluster's mean contour (stays valid JSON)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"mean"')
    at = next(i for i in range(at, len(data)) if chr(data[i]) in "2345678")
    data[at] ^= 1
    path.write_bytes(bytes(data))


def _run_error_cases(jobs: dict[str, list[str]], failures: list[str], what: str) -> dict[str, dict]:
    """Run each command (in parallel); each must exit non-zero with one `c2p-stream: error:` line."""
    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(jobs, pool.map(run, jobs.values())))
    cases = {}
    for case, result in done.items():
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        ok = (result.returncode != 0 and len(lines) == 1 and lines[0].startswith("c2p-stream: error:")
              and "Traceback" not in result.stderr)
        cases[case] = {"exit_code": result.returncode, "stderr": lines[:3], "clear_one_line_error": ok}
        if not ok:
            failures.append(f"{what}, {case}: exit {result.returncode}, stderr {lines[:3]}")
    return cases


# ----------------------------------------------------------------------------- 7. bad audio


def bad_audio(*, audio_s: float = 300.0, checkpoint: str | Path | None = None, min_agreement: float = 0.99,
              seed: int = 7, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Broken audio files each give one clear error line and a non-zero exit from
    `c2p-stream --file X --fast`; valid files at other rates and layouts give labels that
    agree with those of their 16 kHz mono reference on >= `min_agreement` of hops (same
    speech flag, same arousal and valence clusters). The model is `checkpoint`, or one
    trained here by c2p-train on the tiny synthetic config (peaked heads, unlike random ones).

    References are `audio_s` s of synthetic speech at 16 kHz mono float, the other files
    are made from them (resampled with soxr VHQ, channels duplicated, requantised). A rate
    conversion keeps only its passband (soxr: ~91% of the lower Nyquist rate), so the
    resampled formats are made from the reference low-passed below it (7 kHz; 3.4 kHz for
    8 kHz) and compared with that low-passed reference: what they test is the reading, not
    the band a conversion must drop. That loss is shown separately, as the agreement of
    full-band 48 kHz and 8 kHz files with the full-band reference. Likewise 8-bit audio is
    compared with the reference rounded to 8-bit steps (a float file): that tests the
    reading; its agreement with the clean reference is reported, not failed, since its
    quantisation noise (SNR in the figures) makes it a different signal."""
    import soundfile as sf
    import soxr

    from c2p_stream.audio import load_audio
    from trainer.synthetic import synthesize_session

    failures: list[str] = []
    with _workspace(work_dir, "bad_audio") as root:
        trained_here = checkpoint is None
        if checkpoint is None:
            checkpoint = train_tiny_checkpoint(root / "train")
        full = synthesize_session(audio_s, seed).audio
        references = {"full band": full, "below 7 kHz": _lowpass(full, 7000.0), "below 3.4 kHz": _lowpass(full, 3400.0),
                      "8-bit steps": (np.clip(np.round(full * 128), -128, 127) / 128).astype(np.float32)}
        formats = [  # name, reference, rate, subtype, channels, counts toward `passed`
            ("8 kHz mono float", "below 3.4 kHz", 8000, "FLOAT", 1, True),
            ("44.1 kHz mono int16", "below 7 kHz", 44100, "PCM_16", 1, True),
            ("48 kHz mono float", "below 7 kHz", 48000, "FLOAT", 1, True),
            ("192 kHz mono float", "below 7 kHz", 192000, "FLOAT", 1, True),
            ("8 channels 16 kHz float", "full band", SAMPLE_RATE_HZ, "FLOAT", 8, True),
            ("int16 stereo 16 kHz", "full band", SAMPLE_RATE_HZ, "PCM_16", 2, True),
            ("8-bit unsigned 16 kHz mono", "8-bit steps", SAMPLE_RATE_HZ, "PCM_U8", 1, True),
            ("48 kHz mono float, full band (band loss only)", "full band", 48000, "FLOAT", 1, False),
            ("8 kHz mono float, full band (band loss only)", "full band", 8000, "FLOAT", 1, False),
        ]
        files: dict[str, Path] = {}
        for i, (name, audio) in enumerate(references.items()):
            files[f"reference {name}"] = root / f"reference-{i}.wav"
            sf.write(files[f"reference {name}"], audio, SAMPLE_RATE_HZ, subtype="FLOAT")
        for i, (name, ref, rate_hz, subtype, channels, _) in enumerate(formats):
            audio = references[ref]
            if rate_hz != SAMPLE_RATE_HZ:
                audio = soxr.resample(audio, SAMPLE_RATE_HZ, rate_hz, "VHQ")
            bits = {"PCM_U8": 8, "PCM_16": 16}.get(subtype)
            if bits:  # round to the nearest step here: libsndfile's float -> integer conversion truncates
                step = 2.0 ** (1 - bits)
                audio = np.clip(np.round(audio / step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * step
            files[name] = root / f"format-{i}.wav"
            sf.write(files[name], np.repeat(audio[:, None], channels, axis=1), rate_hz, subtype=subtype)

        def stream(path: Path, jsonl: Path) -> list[str]:
            return stream_command("--checkpoint", checkpoint, "--file", path, "--fast", "--no-dashboard", "--quiet",
                                  "--no-ws", "--jsonl", jsonl)

        jobs = {name: (stream(path, path.with_suffix(".jsonl")), path.with_suffix(".jsonl"))
                for name, path in files.items()}
        with ThreadPoolExecutor(max_workers=4) as pool:
            runs = dict(zip(jobs, pool.map(lambda job: subprocess.run(job[0], capture_output=True, text=True,
                                                                       timeout=600), jobs.values())))
        events = {name: read_jsonl(jobs[name][1]) for name in jobs}
        for name, run in runs.items():
            if run.returncode != 0 or not events[name]:
                failures.append(f"valid input {name!r}: exit {run.returncode}, {len(events[name])} events: "
                                f"{run.stderr[-300:]}")
        ref_events = events["reference full band"]
        confidence = [max(max(e["arousal"]["probabilities"]), max(e["valence"]["probabilities"]))
                      for e in ref_events if e["speech"]]
        valid, shortfalls = {}, []
        for name, ref, rate_hz, subtype, channels, counts in formats:
            figures = _agreement(events[f"reference {ref}"], events[name])
            decoded = load_audio(files[name])
            n = min(len(decoded), len(references[ref]))
            noise = float(np.sum((decoded[:n] - references[ref][:n]) ** 2.0))
            snr_db = 10 * math.log10(float(np.sum(references[ref][:n] ** 2.0)) / max(noise, 1e-30))
            valid[name] = {"compared_with": f"reference {ref}", "file": f"{rate_hz} Hz, {channels} ch, {subtype}",
                           **figures, "decoded_snr_db": _r(snr_db, 1)}
            met = figures["agreement"] is not None and figures["agreement"] >= min_agreement
            if not met:
                line = f"{name}: labels agree with the reference on {figures['agreement']} of hops (need {min_agreement})"
                (failures if counts else shortfalls).append(line)
            if subtype == "PCM_U8":  # the reading is exact; the quantisation noise is what changes labels
                clean = _agreement(ref_events, events[name])["agreement"]
                m = min(len(decoded), len(full))
                snr_clean_db = 10 * math.log10(float(np.sum(full[:m] ** 2.0)) /
                                               max(float(np.sum((decoded[:m] - full[:m]) ** 2.0)), 1e-30))
                valid[name].update(agreement_with_full_band_reference=clean, snr_vs_full_band_db=_r(snr_clean_db, 1))
                if clean is None or clean < min_agreement:
                    shortfalls.append(f"{name}: labels agree with the clean full-band reference on {clean} of hops "
                                      f"(its quantisation noise: SNR {snr_clean_db:.1f} dB)")
        for name in valid:
            valid[name]["counts_toward_passed"] = next(f[5] for f in formats if f[0] == name)

        # -- broken files
        broken = _broken_audio(root)
        error_jobs = {name: stream(path, root / f"broken-{i}.jsonl") for i, (name, path) in enumerate(broken.items())}
        errors = _run_error_cases(error_jobs, failures, "bad audio")
        for i, name in enumerate(broken):
            if read_jsonl(root / f"broken-{i}.jsonl"):
                failures.append(f"{name}: events were written for a broken file")
        # a file cut short in its data (header says more): valid, what is there is labelled
        truncated = root / "truncated_data.wav"
        data = files["int16 stereo 16 kHz"].read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        run = subprocess.run(stream(truncated, root / "truncated.jsonl"), capture_output=True, text=True, timeout=300)
        cut = read_jsonl(root / "truncated.jsonl")
        truncated_case = {"exit_code": run.returncode, "events": len(cut), "stderr": run.stderr.strip()[-200:],
                          "agreement_on_its_hops": _agreement(ref_events[: len(cut)], cut)["agreement"]}
        if run.returncode != 0 or not cut:
            failures.append(f"a file truncated in its data: exit {run.returncode}, {len(cut)} events")
    return _result(
        "bad_audio", failures,
        command="c2p-stream --checkpoint CKPT --file X --fast --no-dashboard --quiet --no-ws --jsonl OUT",
        model=("trained here: c2p-train on the tiny synthetic config (logmel 32, k=4, 6 epochs, C2P only)"
               if trained_here else str(checkpoint)),
        reference_hops=len(ref_events),
        reference_speech_hops=len(confidence),
        reference_max_probability_mean=_r(float(np.mean(confidence)) if confidence else None),
        valid=valid, below_criterion_reported=shortfalls, errors=errors, truncated_data=truncated_case,
    )


def _lowpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """(n,) at 16 kHz -> the same, without content above `cutoff_hz` (1023-tap FIR, ~50 Hz transition)."""
    from scipy.signal import fftconvolve, firwin

    taps = firwin(1023, cutoff_hz, fs=SAMPLE_RATE_HZ)
    return fftconvolve(audio, taps, mode="same").astype(np.float32)


def _agreement(reference: list[dict], other: list[dict]) -> dict[str, Any]:
    if not reference or len(reference) != len(other):
        return {"agreement": None, "hops": len(other), "reference_hops": len(reference)}

    def cluster(event: dict, attribute: str) -> int | None:
        return event[attribute]["cluster"] if event[attribute] else None

    same = [(a["speech"] == b["speech"], cluster(a, "arousal") == cluster(b, "arousal"),
             cluster(a, "valence") == cluster(b, "valence")) for a, b in zip(reference, other)]
    n = len(same)
    return {"agreement": _r(sum(all(s) for s in same) / n, 4), "hops": n,
            "speech_flag": _r(sum(s[0] for s in same) / n, 4), "arousal": _r(sum(s[1] for s in same) / n, 4),
            "valence": _r(sum(s[2] for s in same) / n, 4), "disagreeing_hops": sum(not all(s) for s in same)}


def _broken_audio(root: Path) -> dict[str, Path]:
    import soundfile as sf

    folder = root / "broken"
    folder.mkdir()
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(3 * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ)).astype(np.float32)
    sf.write(folder / "good.wav", tone, SAMPLE_RATE_HZ, subtype="PCM_16")
    good = (folder / "good.wav").read_bytes()
    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / f"{len(files)}.wav"
        files[name].write_bytes(data)

    put("truncated header (20 bytes)", good[:20])
    put("header only (44 bytes, no data)", good[:44])
    put("empty file (0 bytes)", b"")
    files["zero samples"] = folder / "zero.wav"
    sf.write(files["zero samples"], np.zeros(0, np.float32), SAMPLE_RATE_HZ)
    for name, value in (("NaN floats", np.nan), ("Inf floats", np.inf), ("-Inf floats", -np.inf)):
        bad = tone.copy()
        bad[len(bad) // 2] = value
        files[name] = folder / f"{len(files)}.wav"
        sf.write(files[name], bad, SAMPLE_RATE_HZ, subtype="FLOAT")
    put("a text file renamed .wav", b"this is not audio\n" * 50)
    put("random bytes named .wav", np.random.default_rng(0).bytes(50_000))
    files["shorter than one window (1 s)"] = folder / "short.wav"
    sf.write(files["shorter than one window (1 s)"], tone[:SAMPLE_RATE_HZ], SAMPLE_RATE_HZ)
    files["a directory"] = folder / "adir.wav"
    files["a directory"].mkdir()
    files["no such file"] = folder / "absent.wav"
    return files


# ----------------------------------------------------------------------------- 8. bad corpora


def bad_corpora(*, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Broken RECOLA-layout and manifest corpora: each must raise a CorpusError naming the
    file (and the line, where the problem is on one), and `c2p-train` must print it as one
    error line with exit code 2. Returns the error text per case."""
    import soundfile as sf

    from c2p_stream.config import CorpusConfig
    from trainer.cli import main as train_main
    from trainer.corpora import RATERS, CorpusError, load_corpus
    from trainer.synthetic import synthesize_session

    failures: list[str] = []
    with _workspace(work_dir, "bad_corpora") as root:
        base = root / "recola"
        audio_s = 6.0
        for name, seed in (("train_1", 1), ("dev_1", 2)):
            (base / "recordings_audio").mkdir(parents=True, exist_ok=True)
            sf.write(base / "recordings_audio" / f"{name}.wav", synthesize_session(audio_s, seed).audio, SAMPLE_RATE_HZ)
            for attribute in ("arousal", "valence"):
                folder = base / "ratings_individual" / attribute
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}.csv").write_text(_ratings_csv(audio_s, seed))
        manifest = root / "manifest"
        manifest.mkdir()
        for name, seed in (("a", 1), ("b", 2)):
            sf.write(manifest / f"{name}.wav", synthesize_session(audio_s, seed).audio, SAMPLE_RATE_HZ)
            rows = [f"{i / 25:.2f},{0.1 * math.sin(i / 20):.4f},{0.1 * math.cos(i / 30):.4f}"
                    for i in range(int(audio_s * 25))]
            (manifest / f"{name}.csv").write_text("time,arousal,valence\n" + "\n".join(rows) + "\n")
        (manifest / "corpus.csv").write_text("audio,contour,split\na.wav,a.csv,train\nb.wav,b.csv,dev\n")

        def recola_case(change) -> tuple[CorpusConfig, Path]:
            folder = root / f"case-{len(cases)}"
            shutil.copytree(base, folder)
            change(folder)
            return CorpusConfig(kind="recola", path=str(folder)), folder

        def manifest_case(change) -> tuple[CorpusConfig, Path]:
            folder = root / f"case-{len(cases)}"
            shutil.copytree(manifest, folder)
            change(folder)
            return CorpusConfig(kind="manifest", path=str(folder / "corpus.csv")), folder

        def edit(path: Path, fn) -> None:
            path.write_text(fn(path.read_text()))

        ratings = "ratings_individual/{}/{}.csv"
        cases: dict[str, tuple[CorpusConfig, Path, str, int | None]] = {}
        specs = [
            ("missing rater column (FF3)", recola_case,
             lambda f: edit(f / ratings.format("arousal", "train_1"),
                            lambda t: "\n".join(";".join(r.split(";")[:-1]) for r in t.splitlines()) + "\n"),
             ratings.format("arousal", "train_1"), 1),
            ("contours shorter than the audio (3 s of 6 s)", recola_case,
             lambda f: edit(f / ratings.format("valence", "dev_1"), lambda t: "\n".join(t.splitlines()[:76]) + "\n"),
             ratings.format("valence", "dev_1"), None),
            ("audio without ratings (mismatched file lists)", recola_case,
             lambda f: (f / ratings.format("valence", "dev_1")).unlink(), "recordings_audio/dev_1.wav", None),
            ("ratings without audio (mismatched file lists)", recola_case,
             lambda f: shutil.copy(f / ratings.format("arousal", "dev_1"), f / ratings.format("arousal", "dev_2")),
             ratings.format("arousal", "dev_2"), None),
            ("NaN rating", recola_case,
             lambda f: edit(f / ratings.format("arousal", "dev_1"), lambda t: _set_cell(t, 10, 2, "nan", ";")),
             ratings.format("arousal", "dev_1"), 10),
            ("empty rating cell", recola_case,
             lambda f: edit(f / ratings.format("valence", "train_1"), lambda t: _set_cell(t, 40, 4, "", ";")),
             ratings.format("valence", "train_1"), 40),
            ("time not increasing", recola_case,
             lambda f: edit(f / ratings.format("arousal", "train_1"), lambda t: _set_cell(t, 30, 0, "0.5", ";")),
             ratings.format("arousal", "train_1"), 30),
            ("manifest: missing column 'contour'", manifest_case,
             lambda f: (f / "corpus.csv").write_text("audio,split\na.wav,train\nb.wav,dev\n"), "corpus.csv", 1),
            ("manifest: listed audio file missing", manifest_case,
             lambda f: (f / "b.wav").unlink(), "corpus.csv", 3),
            ("manifest: NaN rating", manifest_case,
             lambda f: edit(f / "a.csv", lambda t: _set_cell(t, 7, 1, "NaN", ",")), "a.csv", 7),
            ("manifest: contour missing the valence column", manifest_case,
             lambda f: edit(f / "b.csv", lambda t: "\n".join(",".join(r.split(",")[:2]) for r in t.splitlines()) + "\n"),
             "b.csv", 1),
        ]
        results = {}
        for name, make, change, file, line in specs:
            config, folder = make(change)
            cases[name] = (config, folder, file, line)
            try:
                load_corpus(config)
                message = None
            except CorpusError as err:
                message = str(err)
            except Exception as err:  # noqa: BLE001 - anything but a CorpusError is the finding
                message = f"UNEXPECTED {type(err).__name__}: {err}"
            names_file = message is not None and str(folder / file) in message
            names_line = line is None or (message is not None and f"line {line}" in message)
            code, stderr = _train_error(train_main, config, folder)
            one_line = code == 2 and len(stderr) == 1 and stderr[0].startswith("c2p-train: error:")
            results[name] = {"error": message, "names_file": names_file,
                             "names_line": None if line is None else names_line,
                             "c2p_train_exit_code": code, "c2p_train_one_line": one_line}
            if message is None or message.startswith("UNEXPECTED") or not names_file or not names_line or not one_line:
                failures.append(f"{name}: {results[name]}")
        ok = load_corpus(CorpusConfig(kind="recola", path=str(base)))
        if len(ok) != 2:
            failures.append("the unbroken corpus did not load")
        # documented repair: ratings up to 2 s shorter than the audio are accepted, both trimmed to the shorter
        config, folder = recola_case(lambda f: edit(f / ratings.format("arousal", "train_1"),
                                                    lambda t: "\n".join(t.splitlines()[:126]) + "\n"))
        trimmed = next(r for r in load_corpus(config) if r.name == "train_1")
        repair = {"case": "arousal ratings 1 s shorter than the 6 s audio",
                  "audio_s": len(trimmed.audio) / SAMPLE_RATE_HZ,
                  "contour_frames": {a: len(c) for a, c in trimmed.contours.items()}}
        if repair["audio_s"] != 5.0 or set(repair["contour_frames"].values()) != {125}:
            failures.append(f"documented trim repair: {repair}")
    return _result("bad_corpora", failures,
                   command="trainer.corpora.load_corpus(config) and c2p-train --config CFG --out RUN (in-process)",
                   raters=list(RATERS), cases=results, repair=repair)


def _ratings_csv(audio_s: float, seed: int) -> str:
    from trainer.corpora import RATERS

    rng = np.random.default_rng(seed)
    rows = [";".join([f"{i / 25:.2f}"] + [f"{v:.4f}" for v in 0.2 * rng.standard_normal(len(RATERS))])
            for i in range(int(audio_s * 25))]
    return "time;" + ";".join(RATERS) + "\n" + "\n".join(rows) + "\n"


def _set_cell(text: str, line_no: int, column: int, value: str, delimiter: str) -> str:
    lines = text.splitlines()
    cells = lines[line_no - 1].split(delimiter)
    cells[column] = value
    lines[line_no - 1] = delimiter.join(cells)
    return "\n".join(lines) + "\n"


def _train_error(train_main, corpus, folder: Path) -> tuple[int, list[str]]:
    """c2p-train on `corpus` (in-process): its exit code and stderr lines."""
    import yaml

    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({"corpus": {"kind": corpus.kind, "path": corpus.path},
                                      "front_end": {"kind": "logmel", "n_mels": 16, "device": "cpu"},
                                      "cache_dir": str(folder / "cache")}))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = train_main(["--config", str(config), "--out", str(folder / "run"), "--no-progress"])
    return code, [line for line in stderr.getvalue().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- 9. security


class _Payload:
    """Unpickling this runs `touch MARKER`: the crafted 'checkpoint' of the security drill."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def security(*, train: bool = True, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Malicious pickles (a raw pickle and a torch.save zip) as a checkpoint's
    model.safetensors, with the manifest's checksum updated to match, are refused by
    `c2p-stream --checkpoint` with no code run; with `train`, the same as the newest
    training state of a run resumed by `c2p-train --resume` is skipped as unreadable and
    the run continues from an older state, no code run. The package's sources are
    audited (every torch.load has weights_only=True, no pickle/joblib/allow_pickle), and
    load_checkpoint is run with pickle disabled. The feed binds to loopback by default
    (the --help default and the actual listening socket), a non-loopback bind without
    a token warns, with a token it does not."""
    import torch

    from c2p_stream.checkpoint import _manifest_sha256

    failures: list[str] = []
    figures: dict[str, Any] = {}
    with _workspace(work_dir, "security") as root:
        marker = root / "PWNED"
        checkpoint = tiny_checkpoint(root / "ckpt")
        wav = write_speech(root / "talk.wav", 30.0, seed=51)

        def payload_bytes(kind: str) -> bytes:
            if kind == "raw pickle":
                return pickle.dumps(_Payload(marker))
            buffer = io.BytesIO()
            torch.save({"speech": _Payload(marker)}, buffer)
            return buffer.getvalue()

        jobs = {}
        for kind in ("raw pickle", "torch.save zip"):
            evil = root / f"evil-{len(jobs)}"
            shutil.copytree(checkpoint, evil)
            data = payload_bytes(kind)
            (evil / "model.safetensors").write_bytes(data)
            manifest = json.loads((evil / "checkpoint.json").read_text())
            manifest["weights_sha256"] = hashlib.sha256(data).hexdigest()  # an attacker would match both
            manifest["manifest_sha256"] = _manifest_sha256(manifest)  # checksums: they are not signatures
            (evil / "checkpoint.json").write_text(json.dumps(manifest))
            jobs[f"checkpoint: {kind} as model.safetensors"] = stream_command(
                "--checkpoint", evil, "--file", wav, "--fast", "--no-dashboard", "--quiet", "--no-ws")
        figures["malicious_checkpoints"] = _run_error_cases(jobs, failures, "security")
        figures["marker_after_checkpoints"] = marker.exists()
        if marker.exists():
            failures.append("a malicious checkpoint ran code")
        if train:
            figures["malicious_training_state"] = _malicious_state(root, payload_bytes, marker, failures)
        figures["source_audit"] = _audit_sources(failures)
        figures["load_checkpoint_with_pickle_disabled"] = _load_without_pickle(checkpoint, failures)
        figures["torch_version"] = torch.__version__
        figures["feed_binding"] = _feed_binding(checkpoint, wav, failures)
    return _result("security", failures,
                   command="c2p-stream --checkpoint EVIL --file F --fast ...; c2p-train --config CFG --out RUN --resume; "
                           "c2p-stream --file F --ws-port 0 [--ws-host 0.0.0.0 [--token T]]", **figures)


def _malicious_state(root: Path, payload_bytes, marker: Path, failures: list[str]) -> dict[str, Any]:
    """A finished tiny run, its arousal variant reopened, a malicious newest epoch state, --resume."""
    config = tiny_train_config(root / "train.yaml", root / "cache", epochs=3, attributes=("arousal",))
    run = root / "run"
    first = subprocess.run(train_command("--config", config, "--out", run, "--no-progress"),
                           capture_output=True, text=True, timeout=600)
    if first.returncode != 0:
        failures.append(f"security: the tiny training run failed: {first.stderr[-300:]}")
        return {}
    state = run / "state" / "arousal-c2p"
    shutil.rmtree(state / "final")
    (state / "history.json").unlink()
    out = {}
    for kind, name in (("torch.save zip", "epoch-998.pt"), ("raw pickle", "epoch-999.pt")):
        (state / name).write_bytes(payload_bytes(kind))
    command = train_command("--config", config, "--out", run, "--no-progress", "--resume")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    skipped = [line.strip() for line in done.stderr.splitlines() if "unreadable training state" in line]
    resumed = re.findall(r"resumed after epoch \d+", done.stderr)
    out = {"command": shown(command), "exit_code": done.returncode, "reported": skipped, "resumed": resumed,
           "marker_exists": marker.exists()}
    if done.returncode != 0 or len(skipped) != 2 or resumed != ["resumed after epoch 3"] or marker.exists():
        failures.append(f"security, malicious training state: {out}")
    return out


def _audit_sources(failures: list[str]) -> dict[str, Any]:
    """Every torch.load in c2p_stream/ and trainer/ passes weights_only=True; nothing unpickles."""
    package_roots = [REPO_ROOT / "c2p_stream", REPO_ROOT / "trainer"]
    loads, problems = [], []
    for path in sorted(p for root in package_roots for p in root.rglob("*.py")):
        if path.parent.name == "drills":
            continue  # the drills build malicious pickles on purpose
        tree = ast.parse(path.read_text(), str(path))
        where = lambda node: f"{path.relative_to(REPO_ROOT)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
                    problems.append(f"{where(node)}: imports a pickle module")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                    loads.append(where(node))
                    if keywords.get("weights_only") != "True":
                        problems.append(f"{where(node)}: torch.load without weights_only=True")
                if keywords.get("allow_pickle") not in (None, "False"):
                    problems.append(f"{where(node)}: allow_pickle={keywords['allow_pickle']}")
    if problems:
        failures.append(f"source audit: {problems}")
    return {"torch_load_calls": loads, "all_weights_only": not problems, "problems": problems}


def _load_without_pickle(checkpoint: Path, failures: list[str]) -> bool:
    """load_checkpoint with pickle's loaders replaced by ones that raise."""
    from unittest import mock

    from c2p_stream.checkpoint import load_checkpoint

    def refuse(*_args, **_kwargs):
        raise AssertionError("unpickling attempted")

    try:
        with mock.patch.object(pickle, "load", refuse), mock.patch.object(pickle, "loads", refuse), \
                mock.patch.object(pickle, "Unpickler", refuse):
            load_checkpoint(checkpoint)
        return True
    except AssertionError as err:
        failures.append(f"load_checkpoint unpickles: {err}")
        return False


def _feed_binding(checkpoint: Path, wav: Path, failures: list[str]) -> dict[str, Any]:
    from c2p_stream.cli import _parser

    default_host = _parser().get_default("ws_host")
    helps = subprocess.run(stream_command("--help"), capture_output=True, text=True, timeout=60).stdout
    option = re.search(r"\n\s+(--ws-host WS_HOST.*?)\n\s+--", helps, re.DOTALL)
    help_text = " ".join(option[1].split()) if option else ""
    out: dict[str, Any] = {"default_ws_host": default_host, "help": help_text}
    if default_host != "127.0.0.1" or "127.0.0.1" not in help_text:
        failures.append(f"the feed's default host is {default_host!r} (--help: {help_text!r})")
    command = stream_command("--checkpoint", checkpoint, "--file", wav, "--no-dashboard", "--quiet", "--ws-port", 0)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = _Lines(process.stderr)
    try:
        found = stderr.wait_for(r"feed on ws://([\d.]+):(\d+)/ws", 60)
        if found is None:
            failures.append("the feed did not start: " + stderr.join()[-300:])
            return out
        port = int(found[1][2])
        out["listening"] = _listening(process.pid, port)
        if out["listening"] != ["127.0.0.1"]:
            failures.append(f"the feed listens on {out['listening']}, expected only 127.0.0.1")
        outside = _outside_address()
        out["non_loopback_address_tried"] = outside
        if outside:
            try:
                socket.create_connection((outside, port), timeout=2).close()
                out["reachable_from_non_loopback"] = True
                failures.append(f"the feed answered on {outside}:{port}")
            except OSError as err:
                out["reachable_from_non_loopback"] = False
                out["non_loopback_connect_error"] = type(err).__name__
    finally:
        process.terminate()
        try:
            process.wait(EXIT_LIMIT_S)
        finally:
            _stop(process)
    warned = {}
    for label, extra in (("0.0.0.0 without token", ()), ("0.0.0.0 with token", ("--token", "s3cret-drill"))):
        cmd = stream_command("--checkpoint", checkpoint, "--file", wav, "--fast", "--no-dashboard", "--quiet",
                             "--ws-port", 0, "--ws-host", "0.0.0.0", *extra)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
        warned[label] = {"command": shown(cmd), "exit_code": done.returncode, "warning_lines": lines,
                         "token_in_output": "s3cret-drill" in done.stderr + done.stdout}
    out["non_loopback"] = warned
    if not warned["0.0.0.0 without token"]["warning_lines"]:
        failures.append("no warning for a non-loopback feed without a token")
    if warned["0.0.0.0 with token"]["warning_lines"] or warned["0.0.0.0 with token"]["token_in_output"]:
        failures.append(f"with a token: {warned['0.0.0.0 with token']}")
    return out


def _listening(pid: int, port: int) -> list[str]:
    """Local addresses of the process's listening TCP sockets on `port` (from /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if fields[3] == "0A" and int(port_hex, 16) == port and fields[9] in inodes:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                    addresses.append(socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw))
    return sorted(addresses)


def _outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
        return None if address.startswith("127.") else address
    return None
