"""Shared test helpers: tiny in-memory objects, nothing downloaded."""

import math

import pytest

from c2p_stream.events import AttributeLabel, LabelEvent


def make_label_event(seq: int = 0, speech: bool = True, k: int = 4, **overrides) -> LabelEvent:
    """A plausible LabelEvent for window [seq, seq + 2) s."""
    def label(cluster: int, trend: str) -> AttributeLabel:
        probs = [0.1 / (k - 1)] * k
        probs[cluster] = 0.9
        slope = {"rising": 1, "falling": -1, "flat": 0}[trend]
        return AttributeLabel(cluster, f"mid {trend}", "mid", trend, probs, [0.3 * slope * (i / 49 - 0.5) for i in range(50)])

    fields = dict(
        seq=seq, start_s=float(seq), end_s=float(seq + 2), speech=speech,
        arousal=label(seq % k, "rising") if speech else None,
        valence=label((seq + 1) % k, "falling") if speech else None,
        pairing=f"A{seq % k + 1}-V{(seq + 1) % k + 1}" if speech else None,
        direction="north-west" if speech else None,
        level_dbfs=-20.0 - 3 * math.sin(seq), latency_ms=12.5,
    )
    fields.update(overrides)
    return LabelEvent(**fields)


@pytest.fixture
def label_event_factory():
    return make_label_event


def make_tiny_checkpoint(k: int = 3, n_mels: int = 16, seed: int = 0):
    """A Checkpoint with random small SpeechCNN heads over an n_mels log-mel front end."""
    from c2p_stream.drills.engine import random_checkpoint

    return random_checkpoint(k=k, n_mels=n_mels, seed=seed)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    from c2p_stream.checkpoint import save_checkpoint

    return save_checkpoint(make_tiny_checkpoint(), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def speech_wav_30s(tmp_path_factory):
    """30 s of synthetic speech as a 16 kHz wav file."""
    import soundfile as sf

    from trainer.synthetic import synthesize_session

    path = tmp_path_factory.mktemp("audio") / "talk30.wav"
    sf.write(path, synthesize_session(30.0, 77).audio, 16_000, subtype="FLOAT")
    return path
