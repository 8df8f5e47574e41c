import numpy as np
import pytest
import soundfile as sf

from c2p_stream.audio import (
    CONTOUR_RATE_HZ,
    SAMPLE_RATE_HZ,
    AudioError,
    count_windows,
    frame_audio,
    frame_contour,
    frame_pair,
    load_audio,
)


def tone(rate_hz, duration_s=1.0, freq_hz=440.0, channels=1):
    t = np.arange(int(rate_hz * duration_s)) / rate_hz
    mono = 0.5 * np.sin(2 * np.pi * freq_hz * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def dominant_hz(audio):
    spectrum = np.abs(np.fft.rfft(audio))
    return np.argmax(spectrum) * SAMPLE_RATE_HZ / len(audio)


@pytest.mark.parametrize(
    "rate_hz, channels, subtype, fmt",
    [
        (44_100, 2, "PCM_16", "WAV"),  # stereo 44.1 kHz
        (8_000, 1, "PCM_16", "WAV"),
        (48_000, 1, "PCM_24", "WAV"),  # 24-bit
        (16_000, 1, "FLOAT", "WAV"),  # float
        (22_050, 2, "PCM_16", "FLAC"),
    ],
)
def test_reads_to_16k_mono_float32(tmp_path, rate_hz, channels, subtype, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, tone(rate_hz, channels=channels), rate_hz, subtype=subtype, format=fmt)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE_HZ) <= 1
    assert dominant_hz(audio) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_stereo_is_averaged(tmp_path):
    left = tone(16_000)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 16_000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), left / 2, atol=1e-6)


def test_corrupt_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(16_000), 16_000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(good.read_bytes()[:20])  # header cut short
    with pytest.raises(AudioError, match=r"corrupt\.wav: not a readable audio file"):
        load_audio(corrupt)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 10)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        load_audio(text)


def test_missing_empty_directory_and_zero_length(tmp_path):
    with pytest.raises(AudioError, match="absent.wav: no such file"):
        load_audio(tmp_path / "absent.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: file is empty"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    sf.write(tmp_path / "zero.wav", np.zeros(0), 16_000)
    with pytest.raises(AudioError, match="zero.wav: contains no samples"):
        load_audio(tmp_path / "zero.wav")


def test_non_finite_samples(tmp_path):
    audio = tone(16_000)
    audio[100] = np.nan
    sf.write(tmp_path / "nan.wav", audio, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("duration_s, expected", [(1.99, 0), (2.0, 1), (2.5, 1), (3.0, 2), (30.0, 29), (30.9, 29)])
def test_count_windows_drops_the_trailing_partial_hop(duration_s, expected):
    n = int(round(duration_s * SAMPLE_RATE_HZ))
    assert count_windows(n) == expected
    assert len(frame_audio(np.zeros(n, np.float32))) == expected


def test_window_and_contour_alignment():
    duration_s = 10
    t_audio = np.arange(duration_s * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    t_contour = np.arange(duration_s * CONTOUR_RATE_HZ) / CONTOUR_RATE_HZ
    audio_windows, contour_windows = frame_pair(t_audio.astype(np.float32), t_contour)  # a ramp = time itself
    assert audio_windows.shape == (9, 32_000) and contour_windows.shape == (9, 50)
    for i in range(9):
        assert audio_windows[i, 0] == pytest.approx(i) and audio_windows[i, -1] == pytest.approx(i + 2, abs=1e-4)
        assert contour_windows[i, 0] == pytest.approx(i) and contour_windows[i, -1] == pytest.approx(i + 2 - 0.04)
    # a contour step at t = 5 s appears in exactly the windows that cover it
    step = (t_contour >= 5).astype(float)
    covering = [i for i, w in enumerate(frame_contour(step)) if w.min() != w.max()]
    assert covering == [4]  # [4, 6) s; window 3 ends at 5 s exclusive, window 5 starts at 5 s


def test_frame_pair_cuts_to_the_shorter_signal():
    audio_windows, contour_windows = frame_pair(np.zeros(10 * SAMPLE_RATE_HZ, np.float32), np.zeros(6 * CONTOUR_RATE_HZ))
    assert len(audio_windows) == len(contour_windows) == 5
