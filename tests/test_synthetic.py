"""Tests for the synthetic affect corpus (trainer.synthetic)."""

from __future__ import annotations

import csv
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from trainer.synthetic import (
    CONTOUR_RATE_HZ,
    SAMPLE_RATE_HZ,
    SyntheticCorpusSpec,
    SyntheticSession,
    make_corpus,
    synthesize_session,
    write_corpus,
)

FRAME = SAMPLE_RATE_HZ // CONTOUR_RATE_HZ  # 640 samples = 40 ms
WINDOW = 2 * CONTOUR_RATE_HZ  # 2-s contour window in frames


@pytest.fixture(scope="module")
def long_session() -> SyntheticSession:
    return synthesize_session(120.0, seed=11)


def _frames(session: SyntheticSession) -> np.ndarray:
    n = session.arousal.size
    return session.audio[: n * FRAME].reshape(n, FRAME).astype(np.float64)


def _f0_hz(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation F0 (60-400 Hz) per frame and its normalised peak (voicing strength)."""
    x = frames - frames.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2048, axis=1)) ** 2, axis=1)[:, :400]
    ac = ac / (FRAME - np.arange(400))  # unbiased
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lo, hi = SAMPLE_RATE_HZ // 400, SAMPLE_RATE_HZ // 60
    seg = ac[:, lo:hi]
    peak = seg.max(axis=1)
    lag = lo + np.argmax(seg >= 0.85 * peak[:, None], axis=1)  # first near-max lag: no octave-down errors
    return SAMPLE_RATE_HZ / lag, peak


def _features(session: SyntheticSession) -> dict[str, np.ndarray]:
    frames = _frames(session)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    f0_hz, voicing = _f0_hz(frames)
    power = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2
    freq_hz = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE_HZ)
    return {
        "rms": rms,
        "f0_st": 12.0 * np.log2(f0_hz / 150.0),
        "high_ratio": power[:, freq_hz >= 2000.0].sum(axis=1) / power.sum(axis=1),
        "centroid_hz": (power * freq_hz).sum(axis=1) / power.sum(axis=1),
        "voiced": (voicing > 0.6) & (rms > 0.005),
    }


def _window_slopes(values: np.ndarray, mask: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 2-s window (1-s hop): contour change and the slope (per s) of ``values`` over masked frames."""
    t_s = np.arange(WINDOW) / CONTOUR_RATE_HZ
    deltas, slopes = [], []
    for i in range(0, contour.size - WINDOW + 1, CONTOUR_RATE_HZ):
        m = mask[i : i + WINDOW]
        if m.sum() < 20:
            continue
        deltas.append(contour[i + WINDOW - 1] - contour[i])
        slopes.append(np.polyfit(t_s[m], values[i : i + WINDOW][m], 1)[0])
    return np.array(deltas), np.array(slopes)


# --- determinism, shapes, validation -------------------------------------------------------


def test_same_seed_is_bit_identical_and_different_seed_differs() -> None:
    a = synthesize_session(5.0, seed=3)
    b = synthesize_session(5.0, seed=3)
    c = synthesize_session(5.0, seed=4)
    assert a.audio.tobytes() == b.audio.tobytes()
    assert a.arousal.tobytes() == b.arousal.tobytes()
    assert a.valence.tobytes() == b.valence.tobytes()
    assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(a.arousal, c.arousal)


@pytest.mark.parametrize("duration_s", [2.0, 3.37, 10.0])
def test_shapes_dtypes_and_ranges(duration_s: float) -> None:
    s = synthesize_session(duration_s, seed=1, name="x", split="dev")
    n_samples = round(duration_s * SAMPLE_RATE_HZ)
    assert (s.name, s.split) == ("x", "dev")
    assert s.audio.shape == (n_samples,) and s.audio.dtype == np.float32
    assert s.arousal.shape == s.valence.shape == (n_samples // FRAME,)
    assert s.arousal.dtype == s.valence.dtype == np.float32
    assert np.all(np.isfinite(s.audio)) and np.abs(s.audio).max() <= 1.0
    assert np.abs(s.audio).max() > 0.05  # not silent
    for c in (s.arousal, s.valence):
        assert np.all(np.isfinite(c)) and c.min() >= -1.0 and c.max() <= 1.0


def test_audio_is_not_clipped(long_session: SyntheticSession) -> None:
    assert np.mean(np.abs(long_session.audio) > 0.99) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: synthesize_session(1.9, seed=0),
        lambda: synthesize_session(float("nan"), seed=0),
        lambda: synthesize_session(5.0, seed=-1),
        lambda: synthesize_session(5.0, seed=1.5),
        lambda: synthesize_session(5.0, seed=0, name=""),
        lambda: SyntheticCorpusSpec(n_train=0),
        lambda: SyntheticCorpusSpec(n_dev=-1),
        lambda: SyntheticCorpusSpec(session_s=1.0),
        lambda: SyntheticCorpusSpec(seed=-3),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


# --- contours -------------------------------------------------------------------------------


def test_contours_mix_flat_rising_and_falling_windows(long_session: SyntheticSession) -> None:
    for contour in (long_session.arousal, long_session.valence):
        win = np.lib.stride_tricks.sliding_window_view(contour, WINDOW)[::CONTOUR_RATE_HZ]
        delta = win[:, -1] - win[:, 0]
        spread = win.max(axis=1) - win.min(axis=1)
        assert np.sum((np.abs(delta) < 0.1) & (spread < 0.15)) >= 3, "flat windows"
        assert np.sum(delta > 0.4) >= 3, "rising windows"
        assert np.sum(delta < -0.4) >= 3, "falling windows"
        assert contour.max() - contour.min() > 1.0  # spans much of the range
        assert np.abs(np.diff(contour)).max() < 0.25  # smooth at 25 Hz


def test_arousal_and_valence_are_roughly_independent() -> None:
    corr = [
        np.corrcoef(s.arousal, s.valence)[0, 1]
        for s in (synthesize_session(60.0, seed=seed) for seed in range(6))
    ]
    assert abs(np.mean(corr)) < 0.3
    assert max(abs(c) for c in corr) < 0.8


# --- acoustic mapping, measured on the audio --------------------------------------------------


def test_high_arousal_is_louder_and_higher_pitched(long_session: SyntheticSession) -> None:
    f = _features(long_session)
    a, voiced = long_session.arousal, f["voiced"]
    assert voiced.mean() > 0.5
    high, low = voiced & (a > 0.4), voiced & (a < -0.4)
    assert high.sum() > 50 and low.sum() > 50
    assert np.median(f["rms"][high]) > 2.0 * np.median(f["rms"][low])
    assert np.median(f["f0_st"][high]) - np.median(f["f0_st"][low]) > 4.0  # semitones
    assert np.corrcoef(a[voiced], f["f0_st"][voiced])[0, 1] > 0.6
    assert np.corrcoef(a[voiced], np.log(f["rms"][voiced]))[0, 1] > 0.4


def test_high_arousal_has_faster_syllables() -> None:
    """The amplitude-envelope modulation peak (syllable rate) is faster in high-arousal stretches."""
    s = synthesize_session(120.0, seed=2)
    env = np.abs(s.audio.astype(np.float64)).reshape(-1, 160).mean(axis=1)  # 100 Hz envelope
    a = np.repeat(s.arousal, 4)[: env.size]
    rates = {}
    for label, mask in (("high", a > 0.4), ("low", a < -0.4)):
        peaks = []
        for start in range(0, env.size - 200, 50):  # 2-s chunks fully inside the arousal band
            if not mask[start : start + 200].all():
                continue
            seg = env[start : start + 200] - env[start : start + 200].mean()
            spec = np.abs(np.fft.rfft(seg * np.hanning(200), 2000))
            freq_hz = np.fft.rfftfreq(2000, 0.01)
            band = (freq_hz > 2.0) & (freq_hz < 8.0)
            peaks.append(freq_hz[band][np.argmax(spec[band])])
        assert len(peaks) >= 3, label
        rates[label] = np.median(peaks)
    assert rates["high"] > rates["low"] + 1.0


def test_positive_valence_is_brighter(long_session: SyntheticSession) -> None:
    f = _features(long_session)
    v, voiced = long_session.valence, f["voiced"]
    high, low = voiced & (v > 0.4), voiced & (v < -0.4)
    assert high.sum() > 50 and low.sum() > 50
    assert np.median(f["high_ratio"][high]) > 3.0 * np.median(f["high_ratio"][low])
    assert np.median(f["centroid_hz"][high]) > np.median(f["centroid_hz"][low]) + 200.0
    assert np.corrcoef(v[voiced], np.log(f["high_ratio"][voiced]))[0, 1] > 0.3


def test_positive_valence_has_wider_pitch_excursions(long_session: SyntheticSession) -> None:
    f = _features(long_session)
    v, voiced = long_session.valence, f["voiced"]
    means, spreads = [], []
    for i in range(0, v.size - WINDOW + 1, CONTOUR_RATE_HZ):
        m = voiced[i : i + WINDOW]
        if m.sum() >= 20:
            means.append(v[i : i + WINDOW].mean())
            spreads.append(np.std(f["f0_st"][i : i + WINDOW][m]))
    assert np.corrcoef(means, spreads)[0, 1] > 0.3


def test_two_second_trends_are_audible(long_session: SyntheticSession) -> None:
    f = _features(long_session)
    voiced = f["voiced"]
    d_a, f0_slope = _window_slopes(f["f0_st"], voiced, long_session.arousal)
    assert np.corrcoef(d_a, f0_slope)[0, 1] > 0.6
    d_a, db_slope = _window_slopes(20.0 * np.log10(f["rms"]), voiced, long_session.arousal)
    assert np.corrcoef(d_a, db_slope)[0, 1] > 0.6
    assert np.median(f0_slope[d_a > 0.4]) > 0 > np.median(f0_slope[d_a < -0.4])
    d_v, bright_slope = _window_slopes(np.log10(f["high_ratio"]), voiced, long_session.valence)
    assert np.corrcoef(d_v, bright_slope)[0, 1] > 0.25


# --- corpus -------------------------------------------------------------------------------------


def test_make_corpus_names_splits_and_stable_seeds() -> None:
    small = make_corpus(SyntheticCorpusSpec(seed=7, n_train=2, n_dev=1, session_s=2.0))
    big = make_corpus(SyntheticCorpusSpec(seed=7, n_train=3, n_dev=2, session_s=2.0))
    assert [s.name for s in small] == ["train_0", "train_1", "dev_0"]
    assert [s.name for s in big] == ["train_0", "train_1", "train_2", "dev_0", "dev_1"]
    assert [s.split for s in big] == ["train"] * 3 + ["dev"] * 2
    by_name = {s.name: s for s in big}
    for s in small:  # adding sessions leaves existing ones unchanged
        assert np.array_equal(s.audio, by_name[s.name].audio)
        assert np.array_equal(s.arousal, by_name[s.name].arousal)
    assert not np.array_equal(big[0].audio, big[1].audio)
    other = make_corpus(SyntheticCorpusSpec(seed=8, n_train=1, n_dev=0, session_s=2.0))
    assert not np.array_equal(other[0].audio, big[0].audio)


def _read_wav(path: Path) -> np.ndarray:
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        audio, sr = soundfile.read(path, dtype="float32")
    else:
        with wave.open(str(path), "rb") as w:
            sr = w.getframerate()
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767.0
    assert sr == SAMPLE_RATE_HZ
    return audio


def test_write_corpus_round_trip(tmp_path: Path) -> None:
    spec = SyntheticCorpusSpec(seed=2, n_train=2, n_dev=1, session_s=3.0)
    manifest = write_corpus(spec, tmp_path / "corpus")
    assert manifest == tmp_path / "corpus" / "manifest.csv"
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["audio", "contour", "split"]
        rows = list(reader)
    assert [r["split"] for r in rows] == ["train", "train", "dev"]
    sessions = make_corpus(spec)
    for row, session in zip(rows, sessions):
        audio_path, contour_path = manifest.parent / row["audio"], manifest.parent / row["contour"]
        assert not Path(row["audio"]).is_absolute() and audio_path.is_file() and contour_path.is_file()
        assert audio_path.name == f"{session.name}.wav"
        audio = _read_wav(audio_path)
        assert audio.shape == session.audio.shape
        np.testing.assert_allclose(audio, session.audio, atol=1e-4)
        with contour_path.open(newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == ["time", "arousal", "valence"]
            table = np.array([[float(x) for x in r] for r in reader])
        assert table.shape == (session.arousal.size, 3)
        np.testing.assert_allclose(table[:, 0], np.arange(session.arousal.size) / CONTOUR_RATE_HZ, atol=1e-9)
        np.testing.assert_allclose(table[:, 1], session.arousal, atol=1e-5)
        np.testing.assert_allclose(table[:, 2], session.valence, atol=1e-5)
    leftovers = [p for p in (tmp_path / "corpus").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_write_corpus_without_soundfile_uses_int16_wave(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` fail
    spec = SyntheticCorpusSpec(seed=1, n_train=1, n_dev=0, session_s=2.0)
    manifest = write_corpus(spec, tmp_path)
    with wave.open(str(tmp_path / "audio" / "train_0.wav"), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE_HZ)
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767.0
    np.testing.assert_allclose(audio, make_corpus(spec)[0].audio, atol=1.0 / 32767.0)
    assert manifest.is_file()
