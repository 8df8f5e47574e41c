"""Audio sources: thin adapters that yield 16 kHz mono float32 chunks (n,).

`file_chunks` replays a file, paced in real time or as fast as possible; `MicSource`
captures an input device through PortAudio (sounddevice, imported only here and only
when a microphone is used) at the device's native rate and resamples it as a stream.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from c2p_stream.audio import SAMPLE_RATE_HZ, WINDOW_S, WINDOW_SAMPLES, load_audio

STARTUP_S = 5.0  # longest wait for a device's first samples (PulseAudio can take ~1 s)
QUEUE_S = 10.0  # captured audio the callback may queue before blocks are dropped
_POLL_S = 0.05  # consumer wake-up period while waiting for samples
LAG_HOLD_S = WINDOW_S  # capture_lag_s keeps a peak this long, so the next hop's event shows a stall


class SourceError(RuntimeError):
    """A source that cannot deliver audio; the message is one line meant for the user."""


class SourceLost(SourceError):
    """A source that stopped delivering samples while running (device unplugged, server died)."""


def file_chunks(path: str | Path, *, chunk_s: float = 0.1, realtime: bool = True,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[np.ndarray]:
    """Chunks of `chunk_s` seconds of `path` (16 kHz float32), the last one possibly shorter.

    With `realtime`, each chunk is yielded once its last sample is due in stream time,
    measured from the first call to next(), each deadline computed from that start (no
    drift). The file is read and checked here, before the first chunk: AudioError for an
    unreadable file, SourceError for one shorter than a window.
    """
    if not chunk_s > 0:
        raise ValueError(f"chunk_s must be > 0, got {chunk_s}")
    samples = load_audio(path)
    if len(samples) < WINDOW_SAMPLES:
        raise SourceError(f"{path}: {len(samples) / SAMPLE_RATE_HZ:.1f} s of audio is shorter "
                          f"than one {WINDOW_S:g} s window")
    return _paced(samples, max(1, round(chunk_s * SAMPLE_RATE_HZ)), realtime, clock, sleep)


def _paced(samples: np.ndarray, step: int, realtime: bool, clock, sleep) -> Iterator[np.ndarray]:
    start_time = clock()
    for begin in range(0, len(samples), step):
        end = min(begin + step, len(samples))
        if realtime:
            wait_s = start_time + end / SAMPLE_RATE_HZ - clock()
            if wait_s > 0:
                sleep(wait_s)
        yield samples[begin:end]


def _sounddevice() -> Any:
    """The sounddevice module; SourceError when it or the PortAudio library is missing."""
    try:
        import sounddevice
    except OSError:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise SourceError(
            "PortAudio not found: install it with `apt-get install libportaudio2` (Debian/Ubuntu), "
            "`dnf install portaudio` (Fedora) or `brew install portaudio` (macOS)"
        ) from None
    except ImportError:
        raise SourceError("the sounddevice package is missing: pip install sounddevice") from None
    return sounddevice


def _inputs(sd: Any) -> list[tuple[int, dict]]:
    return [(i, d) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def list_devices() -> str:
    """One line per input device: index, name, native rate, channels; '*' marks the default."""
    sd = _sounddevice()
    inputs = _inputs(sd)
    if not inputs:
        return "no audio input devices found"
    default = sd.default.device[0] if isinstance(sd.default.device, (list, tuple)) else sd.default.device
    return "\n".join(
        f"{'*' if i == default else ' '} {i:3d}  {d['name']}  ({d['default_samplerate']:g} Hz, "
        f"{d['max_input_channels']} ch)" for i, d in inputs
    )


def resolve_input_device(spec: str | int | None) -> int | None:
    """None -> None (the default input); an index, or a unique name substring (case-insensitive,
    an exact name wins) -> the device index. Anything else: SourceError listing the inputs."""
    if spec is None:
        return None
    sd = _sounddevice()
    inputs = _inputs(sd)
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        if any(i == index for i, _ in inputs):
            return index
        raise SourceError(f"{index} is not an audio input device; inputs are:\n{list_devices()}")
    wanted = str(spec).strip().lower()
    exact = [i for i, d in inputs if d["name"].lower() == wanted]
    matches = exact or [i for i, d in inputs if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several" if matches else "matches no"
    raise SourceError(f"{spec!r} {problem} audio input devices; inputs are:\n{list_devices()}")


class MicSource:
    """An audio input as an iterator of 16 kHz float32 chunks (~`chunk_s` s each).

    The stream runs at the device's native rate; its callback only copies blocks into a
    bounded queue (QUEUE_S; a full queue drops the block and counts it in `overflows`, as
    do PortAudio input overflows). Iterating starts the stream, downmixes to mono and
    resamples with one soxr.ResampleStream, so chunk edges leave no artefacts. When no
    block arrives for `watchdog_s` (STARTUP_S before the first one) or the stream turns
    inactive, iteration raises SourceLost: PortAudio raises nothing when PulseAudio dies.
    """

    def __init__(self, device: str | int | None = None, *, chunk_s: float = 0.1, watchdog_s: float = 1.0):
        if not chunk_s > 0 or not watchdog_s > 0:
            raise ValueError(f"chunk_s and watchdog_s must be > 0, got {chunk_s} and {watchdog_s}")
        sd = _sounddevice()
        index = resolve_input_device(device)
        try:
            info = sd.query_devices(index, "input")
        except (ValueError, sd.PortAudioError) as err:
            raise SourceError(f"no default audio input ({err}); inputs are:\n{list_devices()}") from None
        self.device_name: str = info["name"]
        self.native_rate_hz = int(round(info["default_samplerate"]))
        self.watchdog_s = watchdog_s
        self.overflows = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(2, math.ceil(QUEUE_S / chunk_s)))
        self._last_block_at: float | None = None  # time.monotonic() of the latest callback
        self._origin: float | None = None  # wall time at which stream time 0 was captured
        self._delivered = 0  # native-rate frames handed to the consumer
        self._lag_peak: tuple[float, float] = (0.0, -math.inf)  # (capture lag s, time.monotonic()) at a block
        self._closed = threading.Event()
        self._closing = threading.Lock()  # makes close() run once
        self._lock = threading.Lock()  # held while the stream is used; a close may hold it ~30 s
        blocksize = max(1, round(chunk_s * self.native_rate_hz))
        self._stream = None
        for channels in dict.fromkeys((1, min(2, info["max_input_channels"]))):  # mono, else downmix
            try:
                self._stream = sd.InputStream(device=index, samplerate=self.native_rate_hz, channels=channels,
                                              dtype="float32", blocksize=blocksize, callback=self._callback)
                break
            except sd.PortAudioError as err:
                error = err
        if self._stream is None:
            raise SourceError(f"cannot open audio input {self.device_name!r} "
                              f"at {self.native_rate_hz} Hz: {error}")

    @property
    def capture_lag_s(self) -> float:
        """Wall time since the first block minus stream time delivered (grows when capture stalls):
        the larger of its value now and its peak at a block handed over in the last LAG_HOLD_S.

        The peak matters because a stalled consumer raises no overflow: PulseAudio buffers, and
        once the consumer runs again the backlog drains in milliseconds, before the next hop is
        labelled; without the peak a 3 s stall would leave no trace in the events.
        """
        if self._origin is None:
            return 0.0
        now = time.monotonic()
        lag_s = now - self._origin - self._delivered / self.native_rate_hz
        peak_s, peak_at = self._lag_peak
        return max(0.0, lag_s, peak_s if now - peak_at <= LAG_HOLD_S else 0.0)

    def _callback(self, indata, frames, time_info, status) -> None:
        """PortAudio's thread: copy and go (no allocation beyond the copy, no locks held)."""
        self._last_block_at = time.monotonic()
        if status.input_overflow:
            self.overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self.overflows += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        resampler = soxr.ResampleStream(self.native_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
        try:
            with self._lock:
                if self._closed.is_set():
                    return
                try:
                    self._stream.start()
                except Exception as err:
                    raise SourceError(f"cannot start audio input {self.device_name!r}: {err}") from None
            started_at = polled_at = resumed_at = time.monotonic()
            while not self._closed.is_set():
                try:
                    block = self._queue.get(timeout=_POLL_S)  # (frames, channels)
                except queue.Empty:
                    now = time.monotonic()
                    if now - polled_at > self.watchdog_s:  # this process was stalled (SIGSTOP, suspend,
                        resumed_at = now  # swapping): its callbacks were too, so the silence is not the device's
                    polled_at = now
                    self._check_alive(started_at, resumed_at)
                    continue
                polled_at = time.monotonic()
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
                if self._origin is None:
                    self._origin = time.monotonic() - len(mono) / self.native_rate_hz
                self._delivered += len(mono)
                now = time.monotonic()
                lag_s = now - self._origin - self._delivered / self.native_rate_hz
                if lag_s >= self._lag_peak[0] or now - self._lag_peak[1] > LAG_HOLD_S:
                    self._lag_peak = (lag_s, now)  # one tuple: the engine thread reads it unlocked
                chunk = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32))
                if chunk.size:
                    yield chunk
        except SourceLost:
            self.close(wait_s=0.2)  # the device is gone: do not wait on it
            raise
        finally:
            self.close()

    def _check_alive(self, started_at: float, resumed_at: float) -> None:
        """SourceLost if the stream is inactive, or silent for watchdog_s (STARTUP_S before its
        first block) counted from the latest block, start, or resumption after a stall."""
        if self._closed.is_set() or not self._lock.acquire(timeout=0.5):
            return  # closing (a close may hold the lock while a frozen server makes it wait)
        try:
            if self._closed.is_set():
                return
            active = self._stream.active
        finally:
            self._lock.release()
        last = self._last_block_at
        silent_s = time.monotonic() - max(started_at if last is None else last, resumed_at)
        if not active or silent_s > (STARTUP_S if last is None else self.watchdog_s):
            why = "its stream stopped" if not active else f"nothing for {silent_s:.1f} s"
            raise SourceLost(f"audio input {self.device_name!r} stopped delivering samples "
                             f"(device lost?): {why}")

    def close(self, wait_s: float = 2.0) -> None:
        """Stop capturing; safe from any thread and more than once. A running iteration ends.

        Pa_CloseStream runs on a helper thread and is waited for at most `wait_s`: with a
        frozen PulseAudio server each of its requests blocks for libpulse's 30 s timeout.
        """
        with self._closing:
            if self._closed.is_set():
                return
            self._closed.set()
        closer = threading.Thread(target=self._close_stream, name="c2p-mic-close", daemon=True)
        closer.start()
        closer.join(wait_s)

    def _close_stream(self) -> None:
        with self._lock:  # never while _check_alive is reading the stream
            self._stream.close(ignore_errors=True)

    def __enter__(self) -> MicSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
