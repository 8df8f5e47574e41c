import threading
import time

import numpy as np
import pytest

from c2p_stream.audio import HOP_SAMPLES, SAMPLE_RATE_HZ, WINDOW_SAMPLES, frame_audio
from c2p_stream.checkpoint import CheckpointError
from c2p_stream.config import FrontEndConfig
from c2p_stream.engine import SILENCE_DBFS, Engine, LiveRunner, has_speech
from c2p_stream.features import build_front_end
from conftest import make_tiny_checkpoint
from trainer.synthetic import synthesize_session

N_MELS = 16


def tiny_engine(**kwargs) -> Engine:
    front_end = build_front_end(FrontEndConfig(kind="logmel", n_mels=N_MELS, device="cpu"))
    return Engine(make_tiny_checkpoint(n_mels=N_MELS), front_end, **kwargs)


@pytest.fixture(scope="module")
def speech_30s() -> np.ndarray:
    return synthesize_session(30, seed=3).audio


def probs(event):
    return np.array(event.arousal.probabilities + event.valence.probabilities)


def test_any_chunking_gives_29_windows_matching_whole_and_batched(speech_30s):
    rng = np.random.default_rng(0)
    engine = tiny_engine()
    engine.warm_up()  # no state: seq still starts at 0
    events, pos = [], 0
    while pos < len(speech_30s):
        size = int(rng.choice([0, 1, 7, 320, 1600, 16000, 40000]))
        events += engine.process(speech_30s[pos : pos + size])
        pos += size
    assert engine.finish() == []
    assert [e.seq for e in events] == list(range(29))
    assert [(e.start_s, e.end_s) for e in events] == [(float(i), float(i + 2)) for i in range(29)]
    assert all(e.speech and e.stream == "main" and e.latency_ms >= 0 for e in events)

    whole = tiny_engine().process(speech_30s)
    batched = tiny_engine().label_windows([(i * HOP_SAMPLES, w, 0.0) for i, w in enumerate(frame_audio(speech_30s))])
    for other in (whole, batched):
        assert len(other) == 29
        for a, b in zip(events, other):
            assert (a.seq, a.arousal.cluster, a.valence.cluster, a.pairing, a.direction) == \
                   (b.seq, b.arousal.cluster, b.valence.cluster, b.pairing, b.direction)
            np.testing.assert_allclose(probs(a), probs(b), atol=1e-5)
            assert a.level_dbfs == pytest.approx(b.level_dbfs)
    first = events[0]
    assert first.pairing == f"A{first.arousal.cluster + 1}-V{first.valence.cluster + 1}"
    assert abs(sum(first.arousal.probabilities) - 1) < 1e-6 and len(first.arousal.prototype) == 50
    assert first.to_message()["type"] == "labels"


def test_streams_batched_together_keep_their_own_state(speech_30s):
    a, b = speech_30s[: 5 * SAMPLE_RATE_HZ], speech_30s[10 * SAMPLE_RATE_HZ : 15 * SAMPLE_RATE_HZ]
    engine = tiny_engine(smoothing=0.5)
    items = []
    for i in range(4):
        items += [(i * HOP_SAMPLES, frame_audio(a)[i], 0.0, "a"), (i * HOP_SAMPLES, frame_audio(b)[i], 0.0, "b")]
    events = engine.label_windows(items)
    for stream, audio in (("a", a), ("b", b)):
        alone = tiny_engine(smoothing=0.5, stream=stream).process(audio)
        mine = [e for e in events if e.stream == stream]
        assert [e.seq for e in mine] == [e.seq for e in alone] == [0, 1, 2, 3]
        for x, y in zip(mine, alone):
            np.testing.assert_allclose(probs(x), probs(y), atol=1e-5)


def test_windows_without_speech_get_no_labels():
    rng = np.random.default_rng(1)
    burst = np.zeros(WINDOW_SAMPLES + HOP_SAMPLES, np.float32)
    burst[8000:8800] = 0.5 * rng.standard_normal(800)  # 50 ms loud click: < 10% of 20 ms frames
    assert not has_speech(burst[:WINDOW_SAMPLES], -50)
    cases = {
        "digital silence": np.zeros(3 * SAMPLE_RATE_HZ, np.float32),
        "noise at -70 dBFS": (10 ** (-70 / 20) * rng.standard_normal(3 * SAMPLE_RATE_HZ)).astype(np.float32),
        "short click": burst,
    }
    for name, audio in cases.items():
        events = tiny_engine().process(audio)
        assert len(events) == 2, name
        for e in events:
            assert not e.speech and e.arousal is None and e.valence is None, name
            assert e.pairing is None and e.direction is None, name
    assert tiny_engine().process(cases["digital silence"])[0].level_dbfs == SILENCE_DBFS


def test_smoothing_only_when_positive_and_restarts_after_silence(speech_30s):
    gap = np.zeros(4 * SAMPLE_RATE_HZ, np.float32)
    audio = np.concatenate([speech_30s[: 6 * SAMPLE_RATE_HZ], gap, speech_30s[6 * SAMPLE_RATE_HZ : 12 * SAMPLE_RATE_HZ]])
    raw = tiny_engine().process(audio)
    off = tiny_engine(smoothing=0.0).process(audio)
    smooth = tiny_engine(smoothing=0.8).process(audio)
    assert [e.speech for e in raw] == [True] * 6 + [False] * 3 + [True] * 6
    for a, b in zip(raw, off):
        assert a.speech == b.speech and (not a.speech or np.array_equal(probs(a), probs(b)))
    np.testing.assert_allclose(probs(smooth[0]), probs(raw[0]))  # nothing to average yet
    np.testing.assert_allclose(probs(smooth[9]), probs(raw[9]))  # first speech after silence
    assert not np.allclose(probs(smooth[3]), probs(raw[3]))
    expected = 0.8 * probs(smooth[3]) + 0.2 * probs(raw[4])
    np.testing.assert_allclose(probs(smooth[4]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="smoothing"):
        tiny_engine(smoothing=1.0)


def test_mismatched_front_end_is_refused():
    front_end = build_front_end(FrontEndConfig(kind="logmel", n_mels=32, device="cpu"))
    with pytest.raises(CheckpointError, match="n_mels=16"):
        Engine(make_tiny_checkpoint(n_mels=N_MELS), front_end)


def test_reset_restarts_stream_time(speech_30s):
    engine = tiny_engine()
    engine.process(speech_30s[: 5 * SAMPLE_RATE_HZ])
    engine.skipped_hops = 3
    engine.reset()
    events = engine.process(speech_30s[: 3 * SAMPLE_RATE_HZ])
    assert [(e.seq, e.skipped_hops) for e in events] == [(0, 0), (1, 0)]


def feed_hops(runner, audio, first_hop, n_hops, interval_s, depth):
    """Feed one 1 s hop every interval_s (the first call also feeds the first window's first second)."""
    for hop in range(first_hop, first_hop + n_hops):
        begin = 0 if hop == 0 else (hop + 1) * HOP_SAMPLES
        runner.feed(audio[begin : (hop + 2) * HOP_SAMPLES])
        depth.append(runner.pending_windows)
        time.sleep(interval_s)


def test_live_runner_skips_newest_wins_and_recovers(speech_30s):
    engine = tiny_engine()
    engine.warm_up()
    events, lock = [], threading.Lock()

    def collect(event):
        with lock:
            events.append(event)

    runner = LiveRunner(engine, [collect], inject_delay_s=0.3).start()
    depth = []
    feed_hops(runner, speech_30s, 0, 12, 0.1, depth)  # 3x slower than the hops arrive
    slow_skips = engine.skipped_hops
    assert slow_skips >= 5
    runner.inject_delay_s = 0.0
    feed_hops(runner, speech_30s, 12, 10, 0.1, depth)
    runner.close()
    assert not runner._worker.is_alive() and runner.error is None
    assert max(depth) == 1  # one slot, never a queue

    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    assert len(events) + engine.skipped_hops == 22  # every window labelled or counted, drained on close
    assert engine.skipped_hops <= slow_skips + 2  # recovered within 2 hops
    assert set(range(14, 22)) <= set(seqs)
    counters = [e.skipped_hops for e in events]
    assert counters == sorted(counters) and counters[-1] == engine.skipped_hops
    slow = [e for e in events if e.seq < 12]
    assert slow and all(e.latency_ms >= 300 for e in slow)
    assert all(e.latency_ms < 300 for e in events if e.seq >= 16)


def test_live_runner_isolates_callbacks_and_surfaces_worker_errors(speech_30s):
    got, engine = [], tiny_engine()
    with LiveRunner(engine, [lambda e: 1 / 0, got.append]) as runner:
        runner.feed(speech_30s[: 3 * SAMPLE_RATE_HZ])  # two windows at once: the newest wins
    assert [e.seq for e in got] == [1] and engine.skipped_hops == 1  # drained on exit

    engine = tiny_engine()

    def broken(*args):
        raise RuntimeError("model exploded")

    engine.label_window = broken
    runner = LiveRunner(engine).start()
    runner.feed(speech_30s[:WINDOW_SAMPLES])
    runner._worker.join(5)
    with pytest.raises(RuntimeError, match="model exploded"):
        runner.feed(speech_30s[:HOP_SAMPLES])
    runner.close()
