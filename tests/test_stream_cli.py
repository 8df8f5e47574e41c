"""c2p-stream end to end: a real subprocess, a real websocket client, a real pseudo-terminal."""

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from c2p_stream.checkpoint import save_checkpoint
from c2p_stream.cli import main
from conftest import make_tiny_checkpoint


def stream_command(*args):
    return [sys.executable, "-m", "c2p_stream.cli", *map(str, args)]


async def read_feed(process):
    """Wait for the feed's address on stderr, connect, and collect messages until `end`."""
    port = None
    while port is None:
        line = await asyncio.to_thread(process.stderr.readline)
        assert line, "c2p-stream exited before opening its feed"
        if match := re.search(r"feed on ws://127\.0\.0\.1:(\d+)/ws", line):
            port = int(match.group(1))
    messages = []
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        async for raw in client:
            messages.append(json.loads(raw))
            if messages[-1]["type"] == "end":
                break
    return messages


def test_30s_file_gives_29_events_in_jsonl_and_on_the_feed(tmp_path, tiny_checkpoint_dir, speech_wav_30s):
    jsonl = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        stream_command("--checkpoint", tiny_checkpoint_dir, "--file", speech_wav_30s, "--fast", "--no-dashboard",
                       "--quiet", "--jsonl", jsonl, "--ws-port", 0, "--wait-clients", 1),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        messages = asyncio.run(asyncio.wait_for(read_feed(process), 60))
        assert process.wait(30) == 0
    finally:
        process.kill()
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(events) == 29
    assert [e["seq"] for e in events] == list(range(29))
    assert [(e["start_s"], e["end_s"]) for e in events] == [(float(i), float(i + 2)) for i in range(29)]
    assert all(e["type"] == "labels" and e["schema"] == 1 and e["latency_ms"] >= 0 for e in events)
    assert messages[0]["type"] == "hello" and set(messages[0]["model"]["attributes"]) == {"arousal", "valence"}
    labels = [m for m in messages if m["type"] == "labels"]
    assert labels == events
    assert messages[-1] == {"type": "end", "schema": 1, "reason": "eof"}


def run_main(capsys, *args):
    code = main([*map(str, args), "--no-dashboard", "--quiet", "--no-ws"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_clear_one_line_errors(tmp_path, capsys, tiny_checkpoint_dir, speech_wav_30s):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoint_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    wrong_front_end = make_tiny_checkpoint(n_mels=16)
    wrong_front_end.front_end = {"kind": "logmel", "n_mels": 24, "dim": 16}  # claims a front end its heads don't fit
    mismatched = save_checkpoint(wrong_front_end, tmp_path / "mismatched")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(16_000, np.float32), 16_000)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    cases = [
        (("--checkpoint", tmp_path / "absent", "--file", speech_wav_30s), "no such checkpoint directory"),
        (("--checkpoint", corrupt, "--file", speech_wav_30s), "checksum mismatch"),
        (("--checkpoint", mismatched, "--file", speech_wav_30s), "front end mismatch"),
        (("--checkpoint", tiny_checkpoint_dir, "--file", tmp_path / "absent.wav"), "absent.wav: no such file"),
        (("--checkpoint", tiny_checkpoint_dir, "--file", text), "notes.wav: not a readable audio file"),
        (("--checkpoint", tiny_checkpoint_dir, "--file", short), "shorter than one 2 s window"),
    ]
    for args, expected in cases:
        code, err = run_main(capsys, *args)
        assert code != 0 and len(err) == 1 and expected in err[0], (args, err)
        assert err[0].startswith("c2p-stream: error:")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_dashboard_in_an_80x24_terminal(tiny_checkpoint_dir, speech_wav_30s):
    socket, session = f"c2p-{uuid.uuid4().hex[:8]}", "dash"
    command = " ".join(stream_command("--checkpoint", tiny_checkpoint_dir, "--file", speech_wav_30s, "--no-ws"))
    tmux = ["tmux", "-L", socket]
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", session, command], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and "live · hop 3" not in screen:
            time.sleep(0.5)
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        lines = screen.splitlines()
        assert "live · hop 3" in screen, screen
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "AROUSAL" in screen and "VALENCE" in screen and "pairing" in screen and "p50" in screen
        assert re.search(r"A\d-V\d", screen) and "file talk30.wav" in screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_demo_runs_the_shipped_model_on_the_shipped_sample(tmp_path, capsys):
    jsonl = tmp_path / "demo.jsonl"
    assert main(["--demo", "--fast", "--no-dashboard", "--quiet", "--no-ws", "--jsonl", str(jsonl)]) == 0
    assert "using the demo model" in capsys.readouterr().err
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(events) == 39 and sum(e["speech"] for e in events) >= 30  # 40 s sample
    assert all(e["pairing"] for e in events if e["speech"])
