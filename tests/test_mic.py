"""The real microphone path: PortAudio -> ALSA pulse plugin -> a private PulseAudio server.

A file played into the server's null sink is captured by MicSource from the sink's
monitor (the default source) in a subprocess that runs Engine + LiveRunner on it and
prints JSON lines. Killing the server mid-stream must end the capture with SourceLost: at once when the
stream turns inactive (crash, shutdown), by the 1 s watchdog when samples just stop
arriving (a frozen server: PortAudio reports nothing).
"""

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import pulse
from c2p_stream.audio import SAMPLE_RATE_HZ, load_audio
from c2p_stream.checkpoint import save_checkpoint
from conftest import make_tiny_checkpoint
from trainer.synthetic import synthesize_session

SKIP_REASON = pulse.missing()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))

REPO = Path(__file__).resolve().parents[1]
CONSUMER = r"""
import json, sys
import numpy as np
from c2p_stream.checkpoint import load_checkpoint
from c2p_stream.engine import Engine, LiveRunner
from c2p_stream.features import build_front_end
from c2p_stream.sources import MicSource, SourceError, SourceLost

checkpoint_dir, out_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
def say(**message):
    print(json.dumps(message), flush=True)
checkpoint = load_checkpoint(checkpoint_dir)
engine = Engine(checkpoint, build_front_end(checkpoint.front_end_config(device="cpu")))
engine.warm_up()
try:
    mic = MicSource(None, chunk_s=0.1, watchdog_s=1.0)
except SourceError as err:
    say(type="error", message=str(err))
    sys.exit(2)
runner = LiveRunner(engine, [lambda event: say(**event.to_message())], source=mic).start()
say(type="ready", device=mic.device_name, rate_hz=mic.native_rate_hz)
captured, code = [], 0
try:
    for chunk in mic:
        if not captured:
            say(type="capturing")
        captured.append(chunk)
        runner.feed(chunk)
        if sum(map(len, captured)) >= seconds * 16000:
            break
except SourceLost as err:
    say(type="lost", message=str(err))
    code = 3
finally:
    mic.close()
    runner.close()
    np.save(out_path, np.concatenate(captured) if captured else np.zeros(0, np.float32))
say(type="end", overflows=mic.overflows, capture_lag_s=mic.capture_lag_s)
sys.exit(code)
"""


class Consumer:
    """The capture subprocess; its JSON lines arrive in a queue with their arrival time."""

    def __init__(self, server, tmp_path, seconds):
        checkpoint = save_checkpoint(make_tiny_checkpoint(), tmp_path / "ckpt")
        self.out = tmp_path / "captured.npy"
        self.proc = subprocess.Popen([sys.executable, "-c", CONSUMER, str(checkpoint), str(self.out), str(seconds)],
                                     env=server.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), json.loads(line)))

    def wait_for(self, type_, timeout_s):
        """Messages up to and including the first of `type_`."""
        seen, deadline = [], time.monotonic() + timeout_s
        while True:
            try:
                at, message = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {type_!r} within {timeout_s} s; got {seen}; stderr:\n"
                                     f"{self.proc.stderr.read()[-3000:]}") from None
            seen.append(message)
            assert message["type"] != "error", message
            if message["type"] == type_:
                return at, seen

    def finish(self, timeout_s=10):
        code = self.proc.wait(timeout_s)
        self.stderr = self.proc.stderr.read()
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server():
    with pulse.PulseServer() as server:
        yield server


def test_mic_captures_what_is_played_and_the_engine_labels_it(server, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    played = np.concatenate([0.3 * np.sin(2 * np.pi * 700 * t), synthesize_session(3, seed=2).audio,
                             0.2 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 3 * t) > 0)])
    sf.write(tmp_path / "played.wav", played.astype(np.float32), SAMPLE_RATE_HZ)
    played = load_audio(tmp_path / "played.wav")  # 5 s, as 16-bit PCM
    consumer = Consumer(server, tmp_path, seconds=7.5)
    try:
        _, ready = consumer.wait_for("ready", 30)
        assert ready[-1]["device"] == "default" and ready[-1]["rate_hz"] > 0
        consumer.wait_for("capturing", 10)
        server.play(tmp_path / "played.wav")
        _, messages = consumer.wait_for("end", 30)
        assert consumer.finish() == 0, consumer.stderr
    finally:
        consumer.kill()
    assert "Traceback" not in consumer.stderr

    captured = np.load(consumer.out)
    assert len(captured) >= 7.5 * SAMPLE_RATE_HZ
    # where the file starts in the capture, by cross-correlation, and how well it matches there
    n = len(captured) + len(played)
    xcorr = np.fft.irfft(np.fft.rfft(captured, n) * np.conj(np.fft.rfft(played, n)), n)
    offset = int(np.argmax(xcorr[: len(captured)]))
    assert offset + len(played) <= len(captured), "the capture ended before the file did"
    segment = captured[offset : offset + len(played)]
    similarity = float(segment @ played / np.linalg.norm(segment) / np.linalg.norm(played))
    assert similarity > 0.9
    tone = segment[2000:14000]
    assert np.argmax(np.abs(np.fft.rfft(tone))) * SAMPLE_RATE_HZ / len(tone) == pytest.approx(700, abs=2)
    assert 20 * np.log10(np.std(segment) / np.std(played)) == pytest.approx(0, abs=1.5)  # unity gain

    events = [m for m in messages if m["type"] == "labels"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)) and len(events) >= 5
    assert all(e["start_s"] == e["seq"] and e["end_s"] == e["seq"] + 2 for e in events)
    file_s = offset / SAMPLE_RATE_HZ
    inside = [e for e in events if e["start_s"] >= file_s and e["end_s"] <= file_s + 5]
    before = [e for e in events if e["end_s"] <= file_s - 0.1]
    assert len(inside) >= 2 and all(e["speech"] and e["pairing"] for e in inside)
    assert all(not e["speech"] and e["arousal"] is None for e in before)  # a null sink is silent
    assert all(0 <= e["latency_ms"] < 1000 for e in events)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["crash", "shutdown", "freeze"])
def test_server_death_raises_source_lost_quickly(server, tmp_path, sig):
    consumer = Consumer(server, tmp_path, seconds=120.0)
    try:
        consumer.wait_for("capturing", 30)
        time.sleep(0.3)  # samples are flowing
        killed_at = time.monotonic()
        server.kill(sig)
        lost_at, messages = consumer.wait_for("lost", 5)
        assert lost_at - killed_at < 2.0
        assert "stopped delivering samples (device lost?)" in messages[-1]["message"]
        assert consumer.finish(5) == 3  # and exits promptly, even with a frozen server
    finally:
        consumer.kill()
    assert "Traceback" not in consumer.stderr
