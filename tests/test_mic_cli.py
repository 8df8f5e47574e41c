"""`c2p-stream --mic` end to end (issue 4): the real CLI in a subprocess captures, through
PortAudio and ALSA's pulse plugin, the monitor of a private PulseAudio server's null sink
while a known file plays into it: digital silence, 6 s of synthetic speech, silence.
A websocket client and the JSONL file both receive the events; SIGTERM ends the run.
"""

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

import pulse
from c2p_stream.audio import SAMPLE_RATE_HZ
from trainer.synthetic import synthesize_session

NO_PULSE = pulse.missing()
LEAD_S, SPEECH_S, TAIL_S = 3.0, 6.0, 3.0  # the played file: silence, speech, silence
MARGIN_S = 0.75  # playback start latency and capture buffering, in stream time


def stream_command(*args):
    return [sys.executable, "-m", "c2p_stream.cli", *map(str, args)]


class Lines:
    """A subprocess pipe read on a thread into a list of lines."""

    def __init__(self, stream):
        self.lines = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(line.rstrip("\n") for line in stream),
                                       daemon=True)
        self.thread.start()

    def wait_for(self, pattern, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if not self.thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")

    def text(self):
        self.thread.join(5)
        return "\n".join(self.lines)


@pytest.mark.skipif(NO_PULSE is not None, reason=f"virtual microphone unavailable: {NO_PULSE}")
def test_mic_cli_labels_the_played_speech_and_not_the_silence(tmp_path, tiny_checkpoint_dir):
    played = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE_HZ), np.float32), synthesize_session(SPEECH_S, 4).audio,
                             np.zeros(int(TAIL_S * SAMPLE_RATE_HZ), np.float32)])
    sf.write(tmp_path / "played.wav", played, SAMPLE_RATE_HZ, subtype="PCM_16")
    jsonl = tmp_path / "events.jsonl"
    with pulse.PulseServer() as server:
        process = subprocess.Popen(
            stream_command("--mic", "--no-dashboard", "--jsonl", jsonl, "--ws-port", 0, "--checkpoint",
                           tiny_checkpoint_dir),
            env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = Lines(process.stdout), Lines(process.stderr)
        try:
            port = int(stderr.wait_for(r"feed on ws://127\.0\.0\.1:(\d+)/ws", 60)[1])

            async def client():
                received, play_at = [], None
                async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    async for raw in ws:
                        message = json.loads(raw)
                        received.append((time.monotonic(), message))
                        if message["type"] == "labels" and play_at is None:  # capturing: play the file
                            play_at = time.monotonic()
                            server.play(tmp_path / "played.wav")
                        if play_at is not None and time.monotonic() > play_at + LEAD_S + SPEECH_S + TAIL_S + 1.5:
                            if process.poll() is None and not any(m["type"] == "end" for _, m in received):
                                process.send_signal(signal.SIGTERM)
                        if message["type"] == "end":
                            break
                return received, play_at

            received, play_at = asyncio.run(asyncio.wait_for(client(), 90))
            code = process.wait(15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    err = stderr.text()
    assert code == 0, err
    assert "Traceback" not in err and "source lost" not in err
    assert received[0][1]["type"] == "hello" and received[-1][1] == {"type": "end", "schema": 1, "reason": "shutdown"}

    labels = [(at, m) for at, m in received if m["type"] == "labels"]
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [m for _, m in labels] == events  # the feed and the JSONL file carry the same events
    assert len(stdout.text().splitlines()) == len(events)  # one printed line per hop

    # consistent times: consecutive hops, windows [seq, seq + 2) s, delivered as the stream advances
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
    assert all(e["start_s"] == e["seq"] and e["end_s"] == e["seq"] + 2 for e in events)
    assert all(e["skipped_hops"] == 0 and 0 <= e["latency_ms"] < 1000 for e in events)
    delays = [at - m["end_s"] for at, m in labels]  # wall clock at delivery minus stream time: constant
    assert max(delays) - min(delays) < 0.5, delays
    zero_at = statistics.median(delays)  # wall clock of stream time 0

    # speech windows labelled, silent ones not (stream time of the file's start from the wall clock)
    speech_from = play_at - zero_at + LEAD_S
    speech_to = speech_from + SPEECH_S
    inside = [e for e in events if e["start_s"] >= speech_from + MARGIN_S and e["end_s"] <= speech_to - MARGIN_S]
    silent = [e for e in events if e["end_s"] <= speech_from - MARGIN_S or e["start_s"] >= speech_to + MARGIN_S]
    assert len(inside) >= 2 and len(silent) >= 4, (speech_from, [(e["seq"], e["level_dbfs"]) for e in events])
    for e in inside:
        assert e["speech"] and e["level_dbfs"] > -40, e
        assert e["arousal"]["cluster"] in range(3) and e["valence"]["cluster"] in range(3)
        assert re.fullmatch(r"A\d-V\d", e["pairing"]) and e["direction"]
        assert sum(e["arousal"]["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    for e in silent:
        assert not e["speech"] and e["arousal"] is None and e["valence"] is None and e["pairing"] is None, e
    assert sum(e["speech"] for e in events) <= SPEECH_S + 2  # no window far from the speech is labelled


def test_unknown_input_device_is_one_clear_error(tmp_path, tiny_checkpoint_dir):
    command = stream_command("--mic", "--input-device", "nosuchdevice", "--no-dashboard", "--no-ws",
                             "--checkpoint", tiny_checkpoint_dir)
    if NO_PULSE is None:
        with pulse.PulseServer() as server:  # PortAudio sees the server's devices
            done = subprocess.run(command, env=server.env, capture_output=True, text=True, timeout=60)
    else:
        done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[0] == errors[0] and lines[0].startswith("c2p-stream: error:"), lines
    if NO_PULSE is None:
        assert "'nosuchdevice' matches no audio input devices" in lines[0]
        assert all(re.search(r"\d+ Hz, \d+ ch", line) for line in lines[1:])  # then the inputs that exist
    else:
        assert "nosuchdevice" in lines[0] or "PortAudio" in lines[0]
