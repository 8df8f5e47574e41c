"""The live engine's output: one LabelEvent per hop, and the JSON messages of the feed.

Every message is a JSON object with a `type` and the `schema` version. Cluster ids are
0-based in `cluster`; the human-facing pairing uses the paper's 1-based names (`A4-V3`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
ATTRIBUTES = ("arousal", "valence")


@dataclass(frozen=True)
class AttributeLabel:
    """One attribute's label for a window."""

    cluster: int  # 0-based cluster id
    name: str  # e.g. "high rising"
    level: str  # low | mid | high
    trend: str  # rising | falling | flat
    probabilities: list[float]  # (k,) softmax of the SpeechCNN head
    prototype: list[float]  # (50,) the cluster's mean contour at 25 Hz


@dataclass(frozen=True)
class LabelEvent:
    """Labels for the window [start_s, end_s) of stream time.

    `speech` is False for a window without speech: then `arousal`, `valence`, `pairing`
    and `direction` are None rather than a guess. Counters are cumulative for the stream.
    """

    seq: int  # 0, 1, 2 ... one per hop
    start_s: float
    end_s: float
    speech: bool
    arousal: AttributeLabel | None
    valence: AttributeLabel | None
    pairing: str | None  # e.g. "A4-V3"
    direction: str | None  # move on the AV plane (x: valence, y: arousal), e.g. "north-east"
    level_dbfs: float  # RMS input level of the window
    latency_ms: float  # last sample of the window available -> event handed to the feed
    skipped_hops: int = 0  # hops dropped because inference fell behind
    overflows: int = 0  # input overflows reported by the audio device
    capture_lag_s: float = 0.0  # wall time elapsed minus stream time (grows when capture stalls)
    stream: str = "main"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        """The websocket / JSONL form: ``{"type": "labels", "schema": 1, ...}``."""
        return {"type": "labels", "schema": SCHEMA_VERSION, **asdict(self)}


def hello_message(model: dict[str, Any]) -> dict[str, Any]:
    """First message to each client: schema version and model description."""
    return {"type": "hello", "schema": SCHEMA_VERSION, "model": model}


def end_message(reason: str, **details: Any) -> dict[str, Any]:
    """Last message of a stream; reason is e.g. "eof", "source lost", "shutdown"."""
    return {"type": "end", "schema": SCHEMA_VERSION, "reason": reason, **details}


def gap_message(dropped: int) -> dict[str, Any]:
    """Told to a slow client before its next message: how many of its messages were dropped."""
    return {"type": "gap", "schema": SCHEMA_VERSION, "dropped": dropped}
