import builtins
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from c2p_stream.audio import SAMPLE_RATE_HZ, AudioError, load_audio
from c2p_stream.sources import (MicSource, SourceError, SourceLost, file_chunks, list_devices,
                                resolve_input_device)


@pytest.fixture
def wav(tmp_path):
    def write(duration_s: float, rate_hz: int = SAMPLE_RATE_HZ, name: str = "a.wav"):
        rng = np.random.default_rng(0)
        path = tmp_path / name
        sf.write(path, (0.1 * rng.standard_normal(int(duration_s * rate_hz))).astype(np.float32), rate_hz)
        return path
    return write


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_file_chunks_are_paced_without_drift(wav):
    path = wav(5.05)
    clock = FakeClock()
    chunks, due = [], []
    for i, chunk in enumerate(file_chunks(path, chunk_s=0.1, clock=clock, sleep=clock.sleep)):
        chunks.append(chunk)
        due.append(clock.now - 100.0)
        clock.now += 0.5 if i == 10 else 0.03  # consumer work per chunk, one long stall
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path))
    assert len(chunks) == 51 and len(chunks[-1]) == 800
    ends_s = np.cumsum([len(c) for c in chunks]) / SAMPLE_RATE_HZ
    late = np.array(due) - ends_s
    assert np.all(late > -1e-9)  # never before the chunk's last sample is due
    assert np.allclose(late[:11], 0) and np.allclose(late[17:], 0)  # caught up after the stall
    assert max(late) == pytest.approx(0.4)  # only the chunks right after the stall were late
    assert clock.now - 100.0 == pytest.approx(5.05 + 0.03)


def test_file_chunks_fast_mode_never_sleeps_and_resamples(wav):
    path = wav(3.0, rate_hz=44_100)
    clock = FakeClock()
    chunks = list(file_chunks(path, chunk_s=0.25, realtime=False, clock=clock, sleep=clock.sleep))
    assert clock.sleeps == [] and len(chunks) == 12
    assert all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path))


def test_file_chunks_errors_come_before_the_first_chunk(wav, tmp_path):
    short = wav(1.2, name="short.wav")
    with pytest.raises(SourceError) as err:
        file_chunks(short)
    assert str(err.value) == f"{short}: 1.2 s of audio is shorter than one 2 s window"
    with pytest.raises(AudioError, match="no such file"):
        file_chunks(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="chunk_s"):
        file_chunks(wav(3.0), chunk_s=0)


# --- a fake sounddevice: devices, and an input stream driven by a thread --------------------

DEVICES = [
    {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "max_input_channels": 2, "max_output_channels": 2,
     "default_samplerate": 48000.0},
    {"name": "HDMI output", "max_input_channels": 0, "max_output_channels": 8, "default_samplerate": 48000.0},
    {"name": "USB Audio Device: Mic (hw:1,0)", "max_input_channels": 2, "max_output_channels": 0,
     "default_samplerate": 44100.0},
    {"name": "pulse", "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
    {"name": "default", "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
]


class FakePortAudioError(Exception):
    pass


class FakeStream:
    """Delivers `blocks` blocks of a 1 kHz tone in real time, then goes quiet (or inactive)."""

    blocks, overflow_at, goes_inactive, mono_ok, close_hangs = 10, None, False, False, False
    instances: list = []

    def __init__(self, device, samplerate, channels, dtype, blocksize, callback):
        if channels == 1 and not self.mono_ok:
            raise FakePortAudioError("Invalid number of channels")
        self.rate, self.channels, self.blocksize, self.callback = samplerate, channels, blocksize, callback
        self.active, self.closed = False, threading.Event()
        FakeStream.instances.append(self)

    def start(self):
        self.active = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for i in range(self.blocks):
            t = (i * self.blocksize + np.arange(self.blocksize)) / self.rate
            tone = 0.5 * np.sin(2 * np.pi * 1000 * t, dtype=np.float64).astype(np.float32)
            data = np.stack([tone, -tone * 0 + tone][: self.channels], axis=1)
            self.callback(data, self.blocksize, None, types.SimpleNamespace(input_overflow=i == self.overflow_at))
            if self.closed.wait(self.blocksize / self.rate):
                return
        if self.goes_inactive:
            self.active = False

    def close(self, ignore_errors=True):
        if self.close_hangs:  # a frozen PulseAudio server: libpulse waits 30 s per request
            time.sleep(5)
        self.active = False
        self.closed.set()


def fake_query_devices(device=None, kind=None):
    if device is None and kind is None:
        return DEVICES
    return DEVICES[4 if device is None else device]


@pytest.fixture
def fake_sd(monkeypatch):
    module = types.SimpleNamespace(query_devices=fake_query_devices, default=types.SimpleNamespace(device=[4, 4]),
                                   InputStream=FakeStream, PortAudioError=FakePortAudioError)
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    monkeypatch.setattr(FakeStream, "instances", [])
    return module


def test_resolve_input_device(fake_sd):
    assert resolve_input_device(None) is None
    assert resolve_input_device(2) == 2 and resolve_input_device(" 3 ") == 3
    assert resolve_input_device("usb") == 2 and resolve_input_device("DEFAULT") == 4  # exact name wins
    assert resolve_input_device("alc3246") == 0
    with pytest.raises(SourceError, match="'nope' matches no audio input devices; inputs are:") as err:
        resolve_input_device("nope")
    assert "USB Audio Device" in str(err.value) and "HDMI" not in str(err.value)
    with pytest.raises(SourceError, match="matches several"):
        resolve_input_device("hw:")
    with pytest.raises(SourceError, match="1 is not an audio input device"):
        resolve_input_device(1)
    listing = list_devices().splitlines()
    assert len(listing) == 4 and listing[-1].startswith("*") and "44100 Hz, 32 ch" in listing[-1]


def test_missing_sounddevice_or_portaudio_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(SourceError, match="sounddevice package is missing"):
        MicSource()
    monkeypatch.delitem(sys.modules, "sounddevice")
    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(SourceError, match=r"^PortAudio not found: install it with `apt-get install libportaudio2`"):
        MicSource("usb")
    with pytest.raises(SourceError, match="PortAudio not found"):
        list_devices()


def test_mic_downmixes_resamples_counts_overflows_and_detects_silence(fake_sd, monkeypatch):
    monkeypatch.setattr(FakeStream, "overflow_at", 3)
    mic = MicSource("usb", chunk_s=0.05, watchdog_s=0.3)
    assert (mic.device_name, mic.native_rate_hz) == ("USB Audio Device: Mic (hw:1,0)", 44100)
    assert FakeStream.instances[-1].channels == 2  # mono refused by the device: downmix
    chunks = []
    with pytest.raises(SourceLost) as err:
        for chunk in mic:
            chunks.append(chunk)
            last_chunk_at = time.monotonic()
    lost_after_s = time.monotonic() - last_chunk_at
    assert str(err.value).startswith("audio input 'USB Audio Device: Mic (hw:1,0)' stopped delivering samples "
                                     "(device lost?)")
    assert 0.25 < lost_after_s < 0.6  # watchdog_s, not STARTUP_S, once samples have come
    audio = np.concatenate(chunks)
    assert audio.dtype == np.float32 and 8000 - 800 < len(audio) <= 8000  # 10 x 50 ms at 16 kHz, less soxr's delay
    spectrum = np.abs(np.fft.rfft(audio[1000:]))
    assert np.argmax(spectrum) * SAMPLE_RATE_HZ / len(audio[1000:]) == pytest.approx(1000, abs=5)
    assert mic.overflows == 1 and 0 <= mic.capture_lag_s < 1.0
    assert FakeStream.instances[-1].closed.is_set()  # the failed stream was closed


def test_mic_inactive_stream_is_lost_at_once_and_close_ends_iteration(fake_sd, monkeypatch):
    monkeypatch.setattr(FakeStream, "goes_inactive", True)
    monkeypatch.setattr(FakeStream, "mono_ok", True)
    monkeypatch.setattr(FakeStream, "blocks", 4)
    started = time.monotonic()
    with pytest.raises(SourceLost, match="its stream stopped"):
        for _ in MicSource(None, chunk_s=0.05, watchdog_s=5.0):
            pass
    assert time.monotonic() - started < 1.0  # did not wait for the 5 s watchdog

    monkeypatch.setattr(FakeStream, "blocks", 1000)
    mic = MicSource(None, chunk_s=0.05)
    threading.Timer(0.3, mic.close).start()
    n = sum(1 for _ in mic)  # ends quietly
    assert n > 0 and FakeStream.instances[-1].closed.is_set()


def test_mic_lost_does_not_wait_for_a_hanging_close(fake_sd, monkeypatch):
    monkeypatch.setattr(FakeStream, "close_hangs", True)
    monkeypatch.setattr(FakeStream, "mono_ok", True)
    monkeypatch.setattr(FakeStream, "blocks", 2)
    mic = MicSource("pulse", chunk_s=0.05, watchdog_s=0.2)
    started = time.monotonic()
    with pytest.raises(SourceLost, match="nothing for 0.2 s"):
        for _ in mic:
            pass
    assert time.monotonic() - started < 1.0
