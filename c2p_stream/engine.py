"""The live engine: 16 kHz chunks in, one LabelEvent per 1 s hop out.

`Engine` is pure and stateful (no device, socket or terminal): `process(chunk)` pushes
samples into the ring buffer and labels every window they complete, running the front end
once per window and both SpeechCNN heads on its output. `LiveRunner` puts the engine on a
worker thread behind a one-window slot, so a slow model never blocks the audio source:
when inference falls behind, the newest window wins and the skipped ones are counted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c2p_stream.audio import HOP_SAMPLES, SAMPLE_RATE_HZ, WINDOW_SAMPLES
from c2p_stream.buffer import RingBuffer
from c2p_stream.checkpoint import Checkpoint
from c2p_stream.clusters import av_direction, pairing_name
from c2p_stream.events import ATTRIBUTES, AttributeLabel, LabelEvent

VAD_FRAME_SAMPLES = SAMPLE_RATE_HZ // 50  # 20 ms energy-VAD frames, 100 per window
MIN_SPEECH_FRACTION = 0.1  # a window needs >= 10% of its frames above the threshold
SILENCE_DBFS = -200.0  # level reported for digital silence (keeps JSON finite)

if TYPE_CHECKING:
    from c2p_stream.features import FrontEnd

log = logging.getLogger(__name__)


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of float samples in dB re full scale (1.0); SILENCE_DBFS for zeros."""
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20.0 * math.log10(rms) if rms > 10 ** (SILENCE_DBFS / 20) else SILENCE_DBFS


def has_speech(window: np.ndarray, threshold_dbfs: float, level: float | None = None) -> bool:
    """Energy VAD: window RMS >= threshold and >= 10% of its 20 ms frames above it.
    `level`: the window's level_dbfs when the caller has it already."""
    if (level_dbfs(window) if level is None else level) < threshold_dbfs:
        return False
    n = len(window) // VAD_FRAME_SAMPLES
    frames = np.asarray(window[: n * VAD_FRAME_SAMPLES], dtype=np.float64).reshape(n, VAD_FRAME_SAMPLES)
    frame_power = np.mean(frames**2, axis=1)  # (n,)
    return float(np.mean(frame_power >= 10 ** (threshold_dbfs / 10))) >= MIN_SPEECH_FRACTION


class Engine:
    """Labels 2 s windows of one (or several) 16 kHz streams with the checkpoint's clusters.

    Window i of a stream covers [i, i + 2) s and gets `seq` i, so hops skipped by a
    LiveRunner show as gaps in `seq`. A window without speech (see `has_speech`) gets an
    event with speech=False and no labels. `smoothing` in [0, 1) is the weight of the past
    in an exponential moving average of each head's probabilities (0: off); it restarts
    after every window without speech. `skipped_hops`, `overflows` and `capture_lag_s`
    are copied into every event; runners and sources set them. The checkpoint's heads are
    moved to the front end's device and dtype in place.
    """

    def __init__(self, checkpoint: Checkpoint, front_end: FrontEnd, *, speech_threshold_dbfs: float = -50.0,
                 smoothing: float = 0.0, stream: str = "main", clock: Callable[[], float] = time.perf_counter):
        checkpoint.check_front_end(front_end.spec)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.checkpoint, self.front_end = checkpoint, front_end
        self.heads = {name: head for name, head in checkpoint.heads.items()}
        for head in self.heads.values():  # channels-last: oneDNN's fast conv path (2.2x in bf16), same values
            head.speech.to(device=front_end.device, dtype=front_end.dtype, memory_format=torch.channels_last).eval()
        self.speech_threshold_dbfs = speech_threshold_dbfs
        self.smoothing = smoothing
        self.stream = stream
        self.clock = clock
        self.buffer = RingBuffer(WINDOW_SAMPLES, HOP_SAMPLES)
        self._staging: torch.Tensor | None = None  # reused (B, 32000) host batch, pinned for CUDA
        self.reset()

    def reset(self) -> None:
        """Start a new stream: stream time, smoothing and counters go back to zero."""
        self.buffer.reset()
        self._smoothed: dict[str, dict[str, np.ndarray] | None] = {}  # stream -> attribute -> (k,)
        self.skipped_hops = 0
        self.overflows = 0
        self.capture_lag_s = 0.0

    def warm_up(self) -> None:
        """One full front end + heads pass on a silent window (allocations, kernel selection)."""
        self._predict(np.zeros((1, WINDOW_SAMPLES), dtype=np.float32))

    def process(self, chunk: np.ndarray, available_at: float | None = None) -> list[LabelEvent]:
        """(n,) float32 samples at 16 kHz -> one event per window they complete (in one batch).

        `available_at` (on `clock`) is when the chunk arrived; default: now.
        """
        available_at = self.clock() if available_at is None else available_at
        return self.label_windows([(start, window, available_at) for start, window in self.buffer.push(chunk)])

    def finish(self) -> list[LabelEvent]:
        """End of stream. Only complete windows are labelled (as `audio.frame_audio`), so the
        trailing partial hop (< 1 s) is dropped and nothing is left to emit: returns []."""
        return []

    def label_window(self, start_sample: int, window: np.ndarray, available_at: float) -> LabelEvent:
        """One hop: window (32000,) starting at `start_sample` of this engine's stream."""
        return self.label_windows([(start_sample, window, available_at)])[0]

    def label_windows(self, items: Iterable[tuple]) -> list[LabelEvent]:
        """Several windows, (start_sample, window, available_at[, stream]) each, in one batched
        front-end pass (cross-stream batching); windows of one stream must come in order."""
        items = list(items)
        windows = [np.asarray(item[1], dtype=np.float32) for item in items]
        for window in windows:
            if window.shape != (WINDOW_SAMPLES,):
                raise ValueError(f"a window must have shape ({WINDOW_SAMPLES},), got {window.shape}")
        levels = [level_dbfs(w) for w in windows]
        speech = [has_speech(w, self.speech_threshold_dbfs, level) for w, level in zip(windows, levels)]
        voiced = [i for i, is_speech in enumerate(speech) if is_speech]
        probs = self._predict([windows[i] for i in voiced]) if voiced else {}
        row = {i: r for r, i in enumerate(voiced)}
        events = []
        for i, item in enumerate(items):
            item_probs = {name: p[row[i]] for name, p in probs.items()} if speech[i] else None
            stream = item[3] if len(item) > 3 else self.stream
            events.append(self._event(stream, int(item[0]), levels[i], item_probs, item[2]))
        return events

    @torch.inference_mode()
    def _predict(self, windows: list[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """N windows (32000,) -> attribute -> (N, k) float64 softmax; front end once per window."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.heads}
        step = getattr(self.front_end, "batch_size", 16)
        for begin in range(0, len(windows), step):
            features = self.front_end.extract(self._stage(windows[begin : begin + step]))  # (B, 99, D)
            for name, head in self.heads.items():  # both heads read the same features
                logits = head.speech(features)  # (B, k)
                out[name].append(logits.float().softmax(dim=-1).cpu().numpy().astype(np.float64))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def _stage(self, windows: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """(B, 32000) float32 host tensor holding `windows`, in a buffer reused between hops:
        no fresh 128 kB per window (page faults) for many streams, and pinned for fast copies
        to a GPU. Valid until the next call."""
        n = len(windows)
        if self._staging is None or len(self._staging) < n:
            pin = self.front_end.device.type == "cuda"
            self._staging = torch.empty((n, WINDOW_SAMPLES), dtype=torch.float32, pin_memory=pin)
        batch = self._staging[:n]
        np.stack(windows, out=batch.numpy())
        return batch

    def _event(self, stream: str, start_sample: int, level: float,
               probs: dict[str, np.ndarray] | None, available_at: float) -> LabelEvent:
        previous = self._smoothed.get(stream)
        if probs is not None and previous is not None and self.smoothing > 0:
            probs = {name: self.smoothing * previous[name] + (1 - self.smoothing) * p for name, p in probs.items()}
        self._smoothed[stream] = probs
        labels = {name: self._label(name, probs[name]) if probs else None for name in ATTRIBUTES if name in self.heads}
        arousal, valence = labels.get("arousal"), labels.get("valence")
        both = arousal is not None and valence is not None
        start_s = start_sample / SAMPLE_RATE_HZ
        return LabelEvent(
            seq=start_sample // HOP_SAMPLES, start_s=start_s, end_s=start_s + WINDOW_SAMPLES / SAMPLE_RATE_HZ,
            speech=probs is not None, arousal=arousal, valence=valence,
            pairing=pairing_name(arousal.cluster, valence.cluster) if both else None,
            direction=av_direction(arousal.trend, valence.trend) if both else None,
            level_dbfs=level, latency_ms=(self.clock() - available_at) * 1000.0,
            skipped_hops=self.skipped_hops, overflows=self.overflows, capture_lag_s=self.capture_lag_s,
            stream=stream,
        )

    def _label(self, attribute: str, probs: np.ndarray) -> AttributeLabel:
        cluster = self.heads[attribute].clusters[int(np.argmax(probs))]
        return AttributeLabel(cluster.id, cluster.name, cluster.level, cluster.trend,
                              [float(p) for p in probs], list(cluster.mean))


class LiveRunner:
    """Runs an Engine on a worker thread, fed from the audio source's thread.

    `feed` only pushes into the ring buffer under a lock and puts each completed window
    in a single slot; a window still unprocessed there is replaced and counted in
    `engine.skipped_hops` (memory stays at one window whatever the model's speed). The
    worker labels the newest window and hands the event to each `on_event` callback, with
    `latency_ms` measured from the `feed` that completed the window to the hand-over.
    `source` (optional) is read for `overflows` and `capture_lag_s`. `inject_delay_s`
    (tests, reliability drills) sleeps per hop in the worker to simulate a slow model.
    """

    def __init__(self, engine: Engine, on_event: Iterable[Callable[[LabelEvent], None]] = (), *,
                 source: Any = None, inject_delay_s: float = 0.0):
        self.engine, self.source = engine, source
        self.on_event = list(on_event)
        self.inject_delay_s = inject_delay_s
        self.error: BaseException | None = None  # what stopped the worker, if anything
        self._slot: tuple[int, np.ndarray, float] | None = None
        self._cond = threading.Condition()
        self._closing = self._drain = False
        self._worker = threading.Thread(target=self._run, name="c2p-engine", daemon=True)

    def start(self) -> LiveRunner:
        self._worker.start()
        return self

    @property
    def pending_windows(self) -> int:
        """Windows waiting for the worker: 0 or 1, never more."""
        return int(self._slot is not None)

    def feed(self, chunk: np.ndarray) -> None:
        """(n,) float32 at 16 kHz from the source thread; cheap, never waits for inference."""
        if self.error is not None:
            raise RuntimeError(f"inference worker stopped: {self.error}") from self.error
        now = self.engine.clock()
        with self._cond:
            windows = self.engine.buffer.push(chunk)
            for start, window in windows:
                if self._slot is not None:
                    self.engine.skipped_hops += 1
                self._slot = (start, window, now)
            if windows:
                self._cond.notify()

    def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop the worker; with `drain`, the window left in the slot is labelled first."""
        with self._cond:
            self._closing, self._drain = True, drain
            self._cond.notify()
        if self._worker.is_alive():
            self._worker.join(timeout_s)

    def __enter__(self) -> LiveRunner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(drain=exc[0] is None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closing:
                    self._cond.wait()
                if self._slot is None or (self._closing and not self._drain):
                    return
                start, window, available_at = self._slot
                self._slot = None
            if self.inject_delay_s > 0:
                time.sleep(self.inject_delay_s)
            if self.source is not None:
                self.engine.overflows = getattr(self.source, "overflows", 0)
                self.engine.capture_lag_s = getattr(self.source, "capture_lag_s", 0.0)
            try:
                event = self.engine.label_window(start, window, available_at)
            except Exception as err:  # surfaced by the next feed()
                log.exception("inference failed")
                self.error = err
                return
            event = dataclasses.replace(event, latency_ms=(self.engine.clock() - available_at) * 1000.0)
            for callback in self.on_event:
                try:
                    callback(event)
                except Exception:  # one broken sink must not silence the others
                    log.exception("event callback %r failed", callback)
