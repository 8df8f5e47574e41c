"""The live ring buffer: samples in, complete 2 s windows out every 1 s hop.

Pure (no I/O, no threads): the audio callback's copy lands here and the engine
pulls windows out. Window j covers stream samples [j * hop, j * hop + window),
exactly the rows of `audio.frame_audio` on the whole signal, whatever the chunking.
"""

from __future__ import annotations

import numpy as np

from c2p_stream.audio import HOP_SAMPLES, WINDOW_SAMPLES


class RingBuffer:
    """Fixed storage of `window_samples` float32 samples, written circularly.

    Only the samples of the next window ever need keeping, so the storage is one
    window long and never grows: a chunk is written up to the end of the next
    window, that window is emitted, and writing goes on. Cost per push is O(n)
    for the samples written plus one (window_samples,) copy per emitted window.
    """

    def __init__(self, window_samples: int = WINDOW_SAMPLES, hop_samples: int = HOP_SAMPLES):
        if window_samples < 1 or hop_samples < 1:
            raise ValueError(
                f"window_samples and hop_samples must be >= 1, got {window_samples} and {hop_samples}"
            )
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self._ring = np.zeros(window_samples, dtype=np.float32)  # (window_samples,)
        self.reset()

    def reset(self) -> None:
        """Forget all samples: stream time restarts at sample 0."""
        self._seen = 0  # samples pushed since the last reset
        self._next_start = 0  # stream sample where the next window starts

    @property
    def samples_seen(self) -> int:
        """Samples pushed since construction or the last reset."""
        return self._seen

    @property
    def capacity_samples(self) -> int:
        """Size of the fixed storage, in samples."""
        return self._ring.shape[0]

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Append (n,) float samples (any n >= 0); return the windows completed by them.

        Each window is (start_sample, (window_samples,) float32 copy), in stream order;
        the first arrives with sample number `window_samples`.
        """
        chunk = _check_chunk(chunk)
        windows = []
        pos, n = 0, chunk.shape[0]
        while pos < n:
            gap = self._next_start - self._seen  # > 0 only when hop > window
            if gap > 0:
                skip = min(gap, n - pos)
                pos += skip
                self._seen += skip
                continue
            window_end = self._next_start + self.window_samples
            take = min(n - pos, window_end - self._seen)  # >= 1, <= window_samples
            self._write(chunk[pos : pos + take])
            pos += take
            if self._seen == window_end:
                windows.append((self._next_start, self._read(self._next_start)))
                self._next_start += self.hop_samples
        return windows

    def _write(self, samples: np.ndarray) -> None:
        """Store at most one storage length of samples, wrapping around the end."""
        size, i = self.capacity_samples, self._seen % self.capacity_samples
        first = min(samples.shape[0], size - i)
        self._ring[i : i + first] = samples[:first]
        self._ring[: samples.shape[0] - first] = samples[first:]
        self._seen += samples.shape[0]

    def _read(self, start: int) -> np.ndarray:
        """Copy of the window starting at stream sample `start` (all of it is stored)."""
        i = start % self.capacity_samples
        if i == 0:
            return self._ring.copy()
        return np.concatenate((self._ring[i:], self._ring[:i]))


def _check_chunk(chunk: np.ndarray) -> np.ndarray:
    if not isinstance(chunk, np.ndarray):
        raise TypeError(f"chunk must be a numpy array, got {type(chunk).__name__}")
    if chunk.ndim != 1:
        raise ValueError(f"chunk must be 1-D (n_samples,), got shape {chunk.shape}")
    if chunk.dtype.kind != "f":
        raise TypeError(
            f"chunk must hold float samples in [-1, 1], got dtype {chunk.dtype}"
            " (convert integer PCM first, e.g. x / 32768)"
        )
    return chunk
