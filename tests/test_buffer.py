import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2p_stream.audio import HOP_SAMPLES, WINDOW_SAMPLES, frame_audio
from c2p_stream.buffer import RingBuffer


def signal(n_samples, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, n_samples).astype(np.float32)


def push_in_chunks(buffer, audio, sizes):
    """Push `audio` cut at the given chunk sizes (the rest as one last chunk)."""
    windows, pos = [], 0
    for size in sizes:
        windows += buffer.push(audio[pos : pos + size])
        pos += size
    windows += buffer.push(audio[pos:])
    return windows


def assert_matches_frame_audio(windows, audio, hop=HOP_SAMPLES):
    expected = frame_audio(audio)
    assert [start for start, _ in windows] == [j * hop for j in range(len(expected))]
    got = np.stack([w for _, w in windows]) if windows else np.empty((0, WINDOW_SAMPLES))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(5))
def test_random_chunkings_match_frame_audio(seed):
    rng = np.random.default_rng(seed)
    audio = signal(int(rng.integers(0, 6 * WINDOW_SAMPLES)), seed)
    sizes = rng.integers(0, 3 * WINDOW_SAMPLES, size=rng.integers(1, 20))
    assert_matches_frame_audio(push_in_chunks(RingBuffer(), audio, sizes), audio)


# few samples on a short signal, so 1-sample chunks stay cheap
@settings(max_examples=40, deadline=None)
@given(
    n_samples=st.integers(0, 5 * HOP_SAMPLES),
    sizes=st.lists(st.one_of(st.integers(0, 3), st.integers(0, 3 * WINDOW_SAMPLES)), max_size=12),
)
def test_any_chunking_matches_frame_audio(n_samples, sizes):
    audio = signal(n_samples, seed=n_samples)
    assert_matches_frame_audio(push_in_chunks(RingBuffer(), audio, sizes), audio)


def test_one_sample_chunks():
    audio = signal(WINDOW_SAMPLES + 2 * HOP_SAMPLES + 5)
    buffer = RingBuffer()
    windows = [w for i in range(len(audio)) for w in buffer.push(audio[i : i + 1])]
    assert_matches_frame_audio(windows, audio)


def test_one_chunk_of_many_windows():
    audio = signal(10 * HOP_SAMPLES + 123)
    assert_matches_frame_audio(RingBuffer().push(audio), audio)


def test_hop_longer_than_window_skips_the_gap():
    audio = signal(100)
    windows = push_in_chunks(RingBuffer(window_samples=10, hop_samples=25), audio, [7, 1, 30, 2])
    assert [s for s, _ in windows] == [0, 25, 50, 75]
    for start, window in windows:
        np.testing.assert_array_equal(window, audio[start : start + 10])


def test_first_window_arrives_with_sample_32000():
    buffer, audio = RingBuffer(), signal(WINDOW_SAMPLES + HOP_SAMPLES)
    assert buffer.push(audio[: WINDOW_SAMPLES - 1]) == []
    assert buffer.samples_seen == WINDOW_SAMPLES - 1
    [(start, window)] = buffer.push(audio[WINDOW_SAMPLES - 1 : WINDOW_SAMPLES])
    assert start == 0 and window.shape == (WINDOW_SAMPLES,) and window.dtype == np.float32
    assert buffer.push(audio[WINDOW_SAMPLES:-1]) == []
    [(start, _)] = buffer.push(audio[-1:])
    assert start == HOP_SAMPLES


def test_windows_are_copies():
    buffer, audio = RingBuffer(), signal(WINDOW_SAMPLES)
    [(_, window)] = buffer.push(audio)
    buffer.push(np.zeros(3 * HOP_SAMPLES, dtype=np.float32))
    np.testing.assert_array_equal(window, audio)


def test_reset_restarts_stream_time():
    buffer = RingBuffer()
    buffer.push(signal(WINDOW_SAMPLES + 5000, seed=1))
    buffer.reset()
    assert buffer.samples_seen == 0
    audio = signal(WINDOW_SAMPLES + HOP_SAMPLES, seed=2)
    assert_matches_frame_audio(push_in_chunks(buffer, audio, [700] * 40), audio)


def test_storage_is_fixed_whatever_the_chunks():
    buffer = RingBuffer()
    storage = buffer._ring
    rng = np.random.default_rng(3)
    for size in [0, 1, 5 * WINDOW_SAMPLES, *rng.integers(0, 2 * WINDOW_SAMPLES, 30)]:
        buffer.push(signal(int(size)))
        assert buffer._ring is storage and storage.shape == (WINDOW_SAMPLES,)
    assert buffer.capacity_samples == WINDOW_SAMPLES


@pytest.mark.parametrize(
    "chunk, error, match",
    [
        (np.zeros((2, 10), dtype=np.float32), ValueError, "1-D"),
        (np.zeros(10, dtype=np.int16), TypeError, "float"),
        ([0.0, 0.1], TypeError, "numpy array"),
    ],
)
def test_rejects_bad_chunks(chunk, error, match):
    with pytest.raises(error, match=match):
        RingBuffer().push(chunk)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hop_samples"):
        RingBuffer(window_samples=100, hop_samples=0)
