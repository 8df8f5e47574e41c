"""Synthetic affect corpus: speech-like audio whose prosody follows arousal/valence contours.

Each session is 16 kHz mono float32 audio from a source-filter voice (band-limited glottal
pulse train at F0 plus a little aspiration noise, shaped by four formants (F1-F3 from a
vowel per syllable, F4 fixed at 3.5 kHz) and a spectral tilt), with syllable-rate amplitude modulation, pauses between phrases and a
-60 dBFS noise floor. Arousal ``a`` and valence ``v`` are smooth contours in [-1, 1] at
25 Hz; frame ``i`` covers ``[i / 25, (i + 1) / 25)`` s. The mapping, applied per sample (or
per 16 ms filter block) from the contours linearly interpolated between frame centres, so
every cue follows the contour within ~50 ms:

* arousal -> F0 level ``150 Hz * 2 ** (5 a / 12)`` (+-5 semitones), loudness
  ``0.05 * 10 ** (8 a / 20)`` RMS before syllable/pause gating (+-8 dB; the filtered voice
  is normalised, so level depends on arousal only) and syllable rate ``4.5 + 1.5 a`` Hz;
* valence -> per-syllable pitch accents, alternately up and down, of at most
  ``2 (1 + v)`` semitones (monotone at v = -1),
  phrase intonation slope ``2 v`` semitones/s (rising for v > 0, falling for v < 0) and a
  spectral tilt of ``4 + 8 v`` dB/octave re 300 Hz on top of the formant cascade's own
  roll-off (brighter for positive valence).

Vowel formants (random per syllable), phrase and pause lengths and the noise are random and
carry no affect. Contours are smoothed piecewise-linear paths mixing flat, rising and
falling stretches (1.5-4 s) and short steps; arousal and valence are drawn independently.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16000
CONTOUR_RATE_HZ = 25
_FRAME_SAMPLES = SAMPLE_RATE_HZ // CONTOUR_RATE_HZ  # 640
_MIN_DURATION_S = 2.0

_F0_REF_HZ = 150.0
_VOWEL_FORMANTS_HZ = np.array(  # F1-F3 of /a/, /e/, /i/, /o/, /u/ and a fixed F4
    [[730, 1090, 2440], [530, 1840, 2480], [300, 2200, 2950], [570, 840, 2410], [330, 1020, 2240]],
    dtype=np.float64,
)
_VOWEL_FORMANTS_HZ = np.column_stack([_VOWEL_FORMANTS_HZ, np.full(len(_VOWEL_FORMANTS_HZ), 3500.0)])
_FORMANT_BANDWIDTHS_HZ = np.array([90.0, 110.0, 150.0, 250.0])
_MAX_HARMONIC_HZ = 7600.0
_BLOCK_SAMPLES, _HOP_SAMPLES, _FFT_SAMPLES = 512, 256, 1024  # filter overlap-add
_BLOCKS_PER_CHUNK = 512


@dataclass(frozen=True)
class SyntheticSession:
    """One synthetic recording: audio (n_samples,) and contours (n_samples // 640,) at 25 Hz."""

    name: str
    split: str
    audio: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray


@dataclass(frozen=True)
class SyntheticCorpusSpec:
    """Corpus size and seed; session seeds derive from ``seed``, the split and the index."""

    seed: int = 0
    n_train: int = 8
    n_dev: int = 4
    session_s: float = 60.0

    def __post_init__(self) -> None:
        _check_seed(self.seed)
        if not _is_int(self.n_train) or self.n_train < 1:
            raise ValueError(f"n_train must be an integer >= 1, got {self.n_train!r}")
        if not _is_int(self.n_dev) or self.n_dev < 0:
            raise ValueError(f"n_dev must be an integer >= 0, got {self.n_dev!r}")
        _check_duration(self.session_s)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_seed(seed: object) -> None:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_duration(duration_s: object) -> None:
    if not isinstance(duration_s, (int, float, np.integer, np.floating)) or isinstance(duration_s, bool):
        raise ValueError(f"duration must be a number of seconds, got {duration_s!r}")
    if not math.isfinite(duration_s) or duration_s < _MIN_DURATION_S:
        raise ValueError(f"duration must be >= {_MIN_DURATION_S} s, got {duration_s!r}")


def _contour(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Smoothed piecewise-linear contour in [-1, 1]: flat, rising, falling stretches and steps."""
    times_s, values = [0.0], [rng.uniform(-0.6, 0.6)]
    total_s = n_frames / CONTOUR_RATE_HZ + 1.0
    while times_s[-1] < total_s:
        kind = rng.choice(4, p=[0.3, 0.28, 0.28, 0.14])  # flat, rise, fall, step
        if kind == 3:
            seg_s, delta = rng.uniform(0.25, 0.5), rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
        else:
            seg_s, delta = rng.uniform(1.5, 4.0), (0.0, 1.0, -1.0)[kind] * rng.uniform(0.6, 1.5)
        target = values[-1] + delta
        if abs(target) > 0.95:  # bounce off the bounds instead of saturating
            target = float(np.clip(values[-1] - delta, -0.95, 0.95))
        times_s.append(times_s[-1] + seg_s)
        values.append(target)
    frame_t_s = (np.arange(n_frames) + 0.5) / CONTOUR_RATE_HZ
    path = np.interp(frame_t_s, times_s, values)
    sigma = 0.12 * CONTOUR_RATE_HZ  # 120 ms Gaussian smoothing
    taps = np.exp(-0.5 * (np.arange(-9, 10) / sigma) ** 2)
    padded = np.pad(path, 9, mode="edge")
    smooth = np.convolve(padded, taps / taps.sum(), mode="valid")
    return np.clip(smooth, -1.0, 1.0).astype(np.float32)


def _phrases(n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start and end samples of phrases separated by 0.15-0.6 s pauses."""
    starts, ends = [], []
    t_s = rng.uniform(0.1, 0.3)
    while t_s * SAMPLE_RATE_HZ < n_samples:
        length_s = rng.uniform(1.2, 3.0)
        starts.append(t_s)
        ends.append(t_s + length_s)
        t_s += length_s + rng.uniform(0.15, 0.6)
    return np.array(starts) * SAMPLE_RATE_HZ, np.array(ends) * SAMPLE_RATE_HZ


def _envelope(freqs_hz: np.ndarray, formants_hz: np.ndarray, tilt_db_per_oct: np.ndarray) -> np.ndarray:
    """Magnitude of cascaded formant resonators (unit gain at 0 Hz) times a spectral tilt, per block.

    freqs_hz (n, m) or (m,), formants_hz (n, 4), tilt_db_per_oct (n,) -> (n, m).
    """
    f2 = freqs_hz**2
    power = np.ones((formants_hz.shape[0], f2.shape[-1]))
    for k in range(formants_hz.shape[1]):
        fk2 = formants_hz[:, k : k + 1] ** 2
        power *= fk2**2 / ((fk2 - f2) ** 2 + _FORMANT_BANDWIDTHS_HZ[k] ** 2 * f2)
    octaves = np.log2(np.maximum(freqs_hz, 100.0) / 300.0)
    return np.sqrt(power) * np.exp((np.log(10.0) / 20.0) * tilt_db_per_oct[:, None] * octaves)


def _phrase_gain(n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample phrase gain (0 in pauses, 20 ms raised-cosine edges) and time from the phrase middle (s)."""
    starts, ends = _phrases(n_samples, rng)
    idx = np.arange(n_samples)
    pid = np.maximum(np.searchsorted(starts, idx, side="right") - 1, 0)
    edge = np.clip(np.minimum(idx - starts[pid], ends[pid] - idx) / (0.02 * SAMPLE_RATE_HZ), 0.0, 1.0)
    from_mid_s = np.clip((idx - 0.5 * (starts[pid] + ends[pid])) / SAMPLE_RATE_HZ, -1.5, 1.5)
    return 0.5 - 0.5 * np.cos(np.pi * edge), from_mid_s


def _glottal_source(f0_hz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band-limited pulse train sum_{h=1..H} cos(h theta) (harmonics below 7.6 kHz) plus aspiration noise."""
    theta = 2.0 * np.pi * np.mod(np.cumsum(f0_hz) / SAMPLE_RATE_HZ, 1.0)
    n_harm = np.floor(_MAX_HARMONIC_HZ / f0_hz)
    den = 2.0 * np.sin(0.5 * theta)
    safe = np.abs(den) > 1e-9
    source = np.where(safe, np.sin((n_harm + 0.5) * theta) / np.where(safe, den, 1.0) - 0.5, n_harm)
    source += 0.1 * np.sqrt(n_harm) * rng.standard_normal(f0_hz.size)
    return source


def _filter(source: np.ndarray, formants_hz: np.ndarray, tilt_db_per_oct: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Zero-phase overlap-add filtering: Hann block ``b`` (centred on sample ``b * hop``) gets its own envelope."""
    n_blocks = formants_hz.shape[0]
    half, lead = _BLOCK_SAMPLES // 2, (_FFT_SAMPLES - _BLOCK_SAMPLES) // 2
    padded = np.concatenate([np.zeros(half), source, np.zeros(_FFT_SAMPLES + _BLOCK_SAMPLES)])
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_BLOCK_SAMPLES) / _BLOCK_SAMPLES)
    blocks = np.lib.stride_tricks.sliding_window_view(padded, _BLOCK_SAMPLES)[::_HOP_SAMPLES][:n_blocks]
    bin_hz = np.fft.rfftfreq(_FFT_SAMPLES, 1.0 / SAMPLE_RATE_HZ)
    quarters = _FFT_SAMPLES // _HOP_SAMPLES
    out = np.zeros((n_blocks + quarters, _HOP_SAMPLES))
    for b0 in range(0, n_blocks, _BLOCKS_PER_CHUNK):
        sl = slice(b0, min(b0 + _BLOCKS_PER_CHUNK, n_blocks))
        buf = np.zeros((sl.stop - sl.start, _FFT_SAMPLES))
        buf[:, lead : lead + _BLOCK_SAMPLES] = blocks[sl] * window
        gain = _envelope(bin_hz, formants_hz[sl], tilt_db_per_oct[sl]) * norm[sl, None]
        filtered = np.fft.irfft(np.fft.rfft(buf, axis=1) * gain, n=_FFT_SAMPLES, axis=1)
        for q in range(quarters):
            out[sl.start + q : sl.stop + q] += filtered[:, q * _HOP_SAMPLES : (q + 1) * _HOP_SAMPLES]
    skip = half + lead  # block b's buffer starts at sample b * hop - half - lead
    return out.reshape(-1)[skip : skip + source.size]


def _render(arousal: np.ndarray, valence: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    t_s = np.arange(n_samples) / SAMPLE_RATE_HZ
    frame_t_s = (np.arange(arousal.size) + 0.5) / CONTOUR_RATE_HZ
    a = np.interp(t_s, frame_t_s, arousal.astype(np.float64))
    v = np.interp(t_s, frame_t_s, valence.astype(np.float64))
    del t_s

    # Syllables: phase accumulation of the arousal-driven syllable rate.
    syl_phase = np.cumsum(4.5 + 1.5 * a) / SAMPLE_RATE_HZ
    syl_idx = syl_phase.astype(np.int64)
    syl_shape = np.sin(np.pi * (syl_phase - syl_idx))  # 0 at syllable edges, 1 mid-syllable
    n_syl = int(syl_idx[-1]) + 2
    vowel_hz = _VOWEL_FORMANTS_HZ[rng.integers(len(_VOWEL_FORMANTS_HZ), size=n_syl)]
    accent = rng.uniform(0.5, 1.0, size=n_syl) * np.where(np.arange(n_syl) % 2 == 0, 1.0, -1.0)
    phrase_gain, from_mid_s = _phrase_gain(n_samples, rng)

    # F0: arousal sets the level, valence the accent depth and the phrase slope.
    semitones = 5.0 * a + 2.0 * (1.0 + v) * accent[syl_idx] * syl_shape + 2.0 * v * from_mid_s
    del syl_idx, from_mid_s
    f0_hz = _F0_REF_HZ * 2.0 ** (semitones / 12.0)
    del semitones
    source = _glottal_source(f0_hz, rng)

    # Per filter block: vowel formants interpolated between syllable centres, valence tilt,
    # and a gain that gives the filtered voice unit RMS whatever F0, vowel or tilt.
    centres = np.minimum(np.arange(n_samples // _HOP_SAMPLES + 2) * _HOP_SAMPLES, n_samples - 1)
    phase_c = syl_phase[centres] - 0.5
    lo = np.clip(np.floor(phase_c).astype(np.int64), 0, n_syl - 1)
    w = np.clip(phase_c - lo, 0.0, 1.0)[:, None]
    formants_hz = (1.0 - w) * vowel_hz[lo] + w * vowel_hz[np.minimum(lo + 1, n_syl - 1)]
    tilt = 4.0 + 8.0 * v[centres]
    harm_hz = f0_hz[centres, None] * np.arange(1, int(_MAX_HARMONIC_HZ / f0_hz.min()) + 1)
    harm_gain = _envelope(harm_hz, formants_hz, tilt) * (harm_hz <= _MAX_HARMONIC_HZ)
    norm = 1.0 / np.sqrt(0.5 * np.sum(harm_gain**2, axis=1))
    del syl_phase, f0_hz, v
    voiced = _filter(source, formants_hz, tilt, norm)
    del source

    audio = voiced * syl_shape * phrase_gain * (0.05 * 10.0 ** (8.0 * a / 20.0))
    audio += 1e-3 * rng.standard_normal(n_samples)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def synthesize_session(duration_s: float, seed: int, name: str = "s0", split: str = "train") -> SyntheticSession:
    """Synthesise one session of ``duration_s`` seconds (>= 2), deterministic in ``seed``."""
    _check_duration(duration_s)
    _check_seed(seed)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    n_samples = int(round(duration_s * SAMPLE_RATE_HZ))
    n_frames = n_samples // _FRAME_SAMPLES
    rng_a, rng_v, rng_audio = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    arousal = _contour(n_frames, rng_a)
    valence = _contour(n_frames, rng_v)
    audio = _render(arousal, valence, n_samples, rng_audio)
    return SyntheticSession(name=name, split=split, audio=audio, arousal=arousal, valence=valence)


def _session_seed(corpus_seed: int, split_index: int, index: int) -> int:
    ss = np.random.SeedSequence(int(corpus_seed), spawn_key=(split_index, index))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _iter_corpus(spec: SyntheticCorpusSpec) -> Iterator[SyntheticSession]:
    if not isinstance(spec, SyntheticCorpusSpec):
        raise ValueError(f"spec must be a SyntheticCorpusSpec, got {type(spec).__name__}")
    for split_index, (split, count) in enumerate((("train", spec.n_train), ("dev", spec.n_dev))):
        for i in range(count):
            seed = _session_seed(spec.seed, split_index, i)
            yield synthesize_session(spec.session_s, seed, name=f"{split}_{i}", split=split)


def make_corpus(spec: SyntheticCorpusSpec) -> list[SyntheticSession]:
    """Train sessions ``train_0..`` then dev sessions ``dev_0..``; each seed depends on its split and index only."""
    return list(_iter_corpus(spec))


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _wav_bytes(audio: np.ndarray) -> bytes:
    """WAV bytes: float32 via soundfile when importable, else int16 via the stdlib ``wave``."""
    buf = io.BytesIO()
    try:
        import soundfile
    except ImportError:
        import wave

        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE_HZ)
            w.writeframes((np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
    else:
        soundfile.write(buf, audio, SAMPLE_RATE_HZ, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _table_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def write_corpus(spec: SyntheticCorpusSpec, out_dir: Path) -> Path:
    """Write ``audio/*.wav``, ``contours/*.csv`` and ``manifest.csv`` under ``out_dir``; return the manifest path.

    Contour rows are ``time,arousal,valence`` with ``time = i / 25`` s, the start of frame ``i``;
    manifest paths are relative to the manifest's folder.
    """
    out_dir = Path(out_dir)
    manifest_rows = []
    for session in _iter_corpus(spec):
        audio_rel, contour_rel = f"audio/{session.name}.wav", f"contours/{session.name}.csv"
        _atomic_write(out_dir / audio_rel, _wav_bytes(session.audio))
        rows = [
            [f"{i / CONTOUR_RATE_HZ:.2f}", f"{a:.6f}", f"{v:.6f}"]
            for i, (a, v) in enumerate(zip(session.arousal.tolist(), session.valence.tolist()))
        ]
        _atomic_write(out_dir / contour_rel, _table_bytes(["time", "arousal", "valence"], rows))
        manifest_rows.append([audio_rel, contour_rel, session.split])
    manifest = out_dir / "manifest.csv"
    _atomic_write(manifest, _table_bytes(["audio", "contour", "split"], manifest_rows))
    return manifest
