"""Audio in, and the 2 s / 1 s windowing shared by training and the live engine.

Window i covers [i * HOP_S, i * HOP_S + WINDOW_S) seconds: 32000 audio samples at
16 kHz and 50 contour samples at 25 Hz. Only complete windows exist: a recording of
d >= 2 s gives floor((d - 2) / 1) + 1 windows and the trailing partial hop is dropped,
exactly as the live engine labels only full windows (a 30 s file gives 29 windows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16_000
CONTOUR_RATE_HZ = 25  # 40 ms annotation frames
WINDOW_S = 2.0
HOP_S = 1.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE_HZ)  # 32000
HOP_SAMPLES = int(HOP_S * SAMPLE_RATE_HZ)  # 16000
CONTOUR_WINDOW = int(WINDOW_S * CONTOUR_RATE_HZ)  # 50
CONTOUR_HOP = int(HOP_S * CONTOUR_RATE_HZ)  # 25


class AudioError(ValueError):
    """An audio file that cannot be turned into 16 kHz mono samples."""


def load_audio(path: str | Path) -> np.ndarray:
    """Read any file libsndfile reads as mono float32 at 16 kHz, shape (n_samples,).

    Channels are averaged; other rates are resampled with soxr (high quality).
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    import soundfile as sf  # imported here so the live GPU path needs no libsndfile

    try:
        samples, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: contains NaN or Inf samples")
    return resample(samples.mean(axis=1), rate_hz)


def resample(audio: np.ndarray, rate_hz: int, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(n,) float audio at `rate_hz` -> float32 at `target_hz`."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if rate_hz == target_hz:
        return audio
    import soxr

    return soxr.resample(audio, rate_hz, target_hz, quality="HQ").astype(np.float32, copy=False)


def count_windows(n_samples: int, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> int:
    """Complete windows in a signal of `n_samples` (0 if shorter than one window)."""
    return 0 if n_samples < window else (n_samples - window) // hop + 1


def frame_audio(audio: np.ndarray) -> np.ndarray:
    """(n_samples,) -> (n_windows, 32000), a read-only strided view (no copy)."""
    return _frame(audio, WINDOW_SAMPLES, HOP_SAMPLES)


def frame_contour(contour: np.ndarray) -> np.ndarray:
    """(n_frames,) at 25 Hz -> (n_windows, 50), a read-only strided view."""
    return _frame(contour, CONTOUR_WINDOW, CONTOUR_HOP)


def frame_pair(audio: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aligned windows of a recording and its contour, cut to the shorter of the two.

    Returns ((N, 32000), (N, 50)) where row i of both covers [i, i + 2) s.
    """
    audio_windows, contour_windows = frame_audio(audio), frame_contour(contour)
    n = min(len(audio_windows), len(contour_windows))
    return audio_windows[:n], contour_windows[:n]


def _frame(signal: np.ndarray, window: int, hop: int) -> np.ndarray:
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {signal.shape}")
    n = count_windows(len(signal), window, hop)
    if n == 0:
        return np.empty((0, window), dtype=signal.dtype)
    return np.lib.stride_tricks.sliding_window_view(signal, window)[::hop][:n]
