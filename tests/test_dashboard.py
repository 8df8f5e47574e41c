import io
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from c2p_stream.dashboard import Dashboard, DashboardState, render
from c2p_stream.events import AttributeLabel
from conftest import make_label_event

REPO = Path(__file__).resolve().parents[1]


def label(cluster, name, k=4):
    probs = [0.1 / (k - 1)] * k
    probs[cluster] = 0.9
    level, trend = name.split()
    return AttributeLabel(cluster, name, level, trend, probs, [0.0] * 50)


def named_event(seq, **overrides):
    """Event whose current labels are A4 "high rising" and V1 "low falling"."""
    fields = dict(arousal=label(3, "high rising"), valence=label(0, "low falling"),
                  pairing="A4-V1", direction="north-east", latency_ms=10.0 + seq)
    return make_label_event(seq, **{**fields, **overrides})


def screen_text(renderable, width=80, height=24):
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def assert_fits(text, width=80, height=24):
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height, text
    assert max(cell_len(line) for line in lines) <= width, text


def test_render_after_events_fits_80x24_and_shows_labels():
    state = DashboardState("c2p-test-model", "file talk.wav")
    for seq in range(12):
        state.update(named_event(seq))
    state.clients = 3
    text = screen_text(render(state))
    assert_fits(text)
    for expected in ["c2p-test-model", "file talk.wav", "A4 high rising ↑", "V1 low falling ↓",
                     "A4-V1", "↗ north-east", "p50 15.5 ms", "p99 20.9 ms", "clients 3",
                     "dBFS", "skipped hops 0", "overflows 0", "lag 0.00 s"]:
        assert expected in text, f"{expected!r} missing from\n{text}"


@pytest.mark.parametrize("k", [2, 8, 12])
def test_render_fits_with_many_clusters_and_long_names(k):
    state = DashboardState("m" * 90, "mic: " + "very long device name " * 5)
    for seq in range(200):
        cluster = seq % k
        state.update(make_label_event(
            seq, speech=seq % 5 != 0, k=k, arousal=label(cluster, "high falling", k),
            valence=label(k - 1 - cluster, "low rising", k), pairing=f"A{cluster + 1}-V{k - cluster}",
            latency_ms=1234.5, skipped_hops=12345, overflows=999, capture_lag_s=123.456,
            level_dbfs=float("-inf") if seq % 7 == 0 else 0.5))
    state.clients, state.ended = 120, "source lost: the device was unplugged " * 3
    assert_fits(screen_text(render(state)))


def test_no_speech_ended_and_waiting_states():
    state = DashboardState("m", "file a.wav")
    waiting = screen_text(render(state))
    assert "waiting for audio" in waiting and "waiting for speech" in waiting
    state.update(named_event(0))
    state.update(make_label_event(1, speech=False))
    text = screen_text(render(state))
    assert text.count("no speech") >= 2 and "A4-V1" not in text
    state.ended = "eof"
    assert "ended: eof" in screen_text(render(state))


def test_cluster_names_from_the_checkpoint_are_shown_before_they_occur():
    names = {"arousal": ["low flat", "mid rising", "high falling"], "valence": ["low rising", "mid flat", "high flat"]}
    state = DashboardState("m", "s", cluster_names=names)
    assert state.k == {"arousal": 3, "valence": 3}
    text = screen_text(render(state))
    assert "A3 high falling" in text and "V1 low rising" in text


def test_state_keeps_bounded_histories():
    state = DashboardState("m", "s", history_hops=60)
    for seq in range(1000):
        state.update(make_label_event(seq, speech=seq % 3 != 0, latency_ms=float(seq)))
    assert len(state.history["arousal"]) == 60 and len(state.latencies_ms) == 600
    assert list(state.history["arousal"])[-3:] == [997 % 4, 998 % 4, None]  # 999 % 3 == 0: no speech
    assert state.k == {"arousal": 4, "valence": 4}
    p50, p99 = state.latency_percentiles_ms()
    assert p50 == pytest.approx(699.5) and 990 < p99 < 999
    assert state.n_events == 1000 and state.n_speech == 666


def test_dashboard_updates_from_another_thread():
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    dashboard = Dashboard("m", "file a.wav", console=console, refresh_per_second=50)
    dashboard.start()
    try:
        worker = threading.Thread(target=lambda: [dashboard.update(named_event(s)) for s in range(300)])
        worker.start()
        for n in range(20):
            dashboard.set_clients(n)
            time.sleep(0.005)
        worker.join()
        dashboard.end("eof")
    finally:
        dashboard.stop()
    assert dashboard.state.n_events == 300 and "ended: eof" in out.getvalue()


TMUX_SCRIPT = """
import sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from test_dashboard import make_label_event, named_event
from c2p_stream.dashboard import Dashboard

signals = Path(sys.argv[1])
dashboard = Dashboard("c2p-test-model", "file talk.wav")
dashboard.start()
for seq in range(12):  # varied labels and a no-speech hop, then a known last event
    event = named_event(seq) if seq == 11 else make_label_event(seq, speech=seq != 7, latency_ms=10.0 + seq)
    dashboard.update(event)
    time.sleep(0.02)
dashboard.set_clients(3)
deadline = time.monotonic() + 20
while not (signals / "end").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
dashboard.end("eof")
time.sleep(20)  # keep the pane alive until the test kills the server
dashboard.stop()
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_dashboard_in_a_real_80x24_terminal(tmp_path):
    script = tmp_path / "run_dashboard.py"
    script.write_text(TMUX_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    socket, session = f"c2p-test-{uuid.uuid4().hex[:12]}", "dashboard"
    tmux = ["tmux", "-u", "-L", socket, "-f", "/dev/null"]

    def wait_for_screen(*expected, timeout_s=10.0):
        deadline, screen = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout
            if all(e in screen for e in expected):
                break
            time.sleep(0.1)
        return screen

    socket_path = None
    try:
        command = shlex.join([sys.executable, str(script), str(tmp_path)])
        subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", session, command],
                       check=True)
        socket_path = subprocess.run([*tmux, "display-message", "-p", "#{socket_path}"],
                                     capture_output=True, text=True).stdout.strip()
        expected = ["c2p-stream · c2p-test-model · file talk.wav", "A4 high rising ↑",
                    "V1 low falling ↓", "A4-V1", "↗ north-east", "p50 15.5 ms", "clients 3"]
        screen = wait_for_screen(*expected)
        (tmp_path / "screen.txt").write_text(screen)
        assert_fits(screen)
        for e in expected:
            assert e in screen, f"{e!r} missing from the pane:\n{screen}"
        assert screen.count("c2p-stream ·") == 1, f"frames pile up instead of redrawing:\n{screen}"

        (tmp_path / "end").touch()
        screen = wait_for_screen("ended: eof")
        (tmp_path / "screen_ended.txt").write_text(screen)
        assert "ended: eof" in screen and "A4-V1" in screen, screen
        assert screen.count("c2p-stream ·") == 1, screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)
