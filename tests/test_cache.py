"""Tests for trainer.cache: cold/warm runs, corruption, invalidation, interrupted writes, torchrun shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import trainer.cache as cache
from c2p_stream.config import FrontEndConfig
from c2p_stream.features import build_front_end, save_random_wav2vec2
from c2p_stream.features import front_end_spec
from trainer.cache import cached_features
from trainer.corpora import Recording, window_recordings

LOGMEL = FrontEndConfig(kind="logmel", n_mels=8, device="cpu", batch_size=4)
CORPUS_ID = {"kind": "test", "version": 1}


def make_recordings(seed: int = 0) -> list[Recording]:
    """Three noise recordings of 5, 4 and 6 s (4 + 3 + 5 = 12 windows)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i, seconds in enumerate((5, 4, 6)):
        audio = (0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32)
        contour = rng.uniform(-1, 1, seconds * 25).astype(np.float32)
        recs.append(Recording(f"r{i}", "train", audio, {"arousal": contour, "valence": -contour}))
    return recs


def expected_features(recs, config=LOGMEL) -> np.ndarray:
    audio, _, _ = window_recordings(recs)
    return build_front_end(config).extract(audio).to(torch.float16).numpy()


@pytest.fixture
def builds(monkeypatch):
    """Counts front-end builds and extract calls made by the cache."""
    counts = {"build": 0, "extract": 0}

    def counting_build(config):
        counts["build"] += 1
        front_end = build_front_end(config)
        extract = front_end.extract

        def counting_extract(windows):
            counts["extract"] += 1
            return extract(windows)

        front_end.extract = counting_extract
        return front_end

    monkeypatch.setattr(cache, "build_front_end", counting_build)
    return counts


def entry_of(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    return entry


def test_cold_then_warm(tmp_path, builds):
    recs = make_recordings()
    logs = []
    cold = cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=logs.append)
    assert builds == {"build": 1, "extract": 1} and len(logs) == 1 and "extracting 12 train windows" in logs[0]
    assert isinstance(cold, np.memmap) and cold.dtype == np.float16 and cold.shape == (12, 99, 8)
    assert not cold.flags.writeable
    np.testing.assert_array_equal(cold, expected_features(recs))
    meta = json.loads((entry_of(tmp_path) / "meta.json").read_text())
    assert meta["shape"] == [12, 99, 8] and meta["material"]["windows"] == [["r0", 4], ["r1", 3], ["r2", 5]]

    logs.clear()
    warm = cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=logs.append)
    assert builds["build"] == 1 and logs == []
    np.testing.assert_array_equal(warm, cold)
    assert sorted(p.name for p in entry_of(tmp_path).iterdir()) == ["features.npy", "meta.json"]


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "meta"])
def test_corrupt_entry_is_rebuilt(tmp_path, builds, damage):
    recs = make_recordings()
    good = np.array(cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=print))
    features = entry_of(tmp_path) / "features.npy"
    data = bytearray(features.read_bytes())
    if damage == "truncate":
        features.write_bytes(data[:-1000])
    elif damage == "bitflip":
        data[len(data) // 2] ^= 0x10
        features.write_bytes(data)
    else:
        (entry_of(tmp_path) / "meta.json").write_text("{not json")
    logs = []
    again = cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=logs.append)
    reason = {"truncate": "truncated", "bitflip": "checksum", "meta": "unreadable meta.json"}[damage]
    assert builds["build"] == 2 and reason in logs[0] and "rebuilding" in logs[0]
    np.testing.assert_array_equal(again, good)
    cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=logs.append)
    assert builds["build"] == 2  # the rebuilt entry validates


def test_key_changes_with_inputs(tmp_path, builds):
    recs = make_recordings()
    run = lambda **kw: cached_features(  # noqa: E731
        kw.get("recs", recs), kw.get("split", "train"), kw.get("config", LOGMEL),
        kw.get("corpus_id", CORPUS_ID), tmp_path, progress=False, log=lambda m: None,
    )
    run()
    run(corpus_id={"kind": "test", "version": 2})
    assert run(config=FrontEndConfig(kind="logmel", n_mels=6, device="cpu")).shape == (12, 99, 6)
    run(split="dev")
    run(recs=recs[:2])
    assert builds["build"] == 5 and len(list(tmp_path.iterdir())) == 5
    run(config=FrontEndConfig(kind="logmel", n_mels=8, device="cpu", batch_size=2))  # batch size: same features
    assert builds["build"] == 5


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    recs = make_recordings()
    config = FrontEndConfig(kind="logmel", n_mels=8, device="cpu", batch_size=1)  # 3 chunks of 4 windows
    real_build = cache.build_front_end

    def failing_build(cfg):
        front_end = real_build(cfg)
        calls = []

        def extract(windows):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated crash mid-extraction")
            return front_end.__class__.extract(front_end, windows)

        front_end.extract = extract
        return front_end

    monkeypatch.setattr(cache, "build_front_end", failing_build)
    with pytest.raises(KeyboardInterrupt):
        cached_features(recs, "train", config, CORPUS_ID, tmp_path, progress=False, log=lambda m: None)
    entry = entry_of(tmp_path)
    assert list(entry.iterdir()) == []  # temp file removed, nothing published
    monkeypatch.setattr(cache, "build_front_end", real_build)
    result = cached_features(recs, "train", config, CORPUS_ID, tmp_path, progress=False, log=lambda m: None)
    np.testing.assert_array_equal(result, expected_features(recs))


def test_crash_after_features_before_meta(tmp_path, builds, monkeypatch):
    """A crash between publishing features.npy and meta.json: the entry does not validate."""
    recs = make_recordings()
    cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=lambda m: None)
    entry = entry_of(tmp_path)
    (entry / "meta.json").unlink()
    logs = []
    cached_features(recs, "train", LOGMEL, CORPUS_ID, tmp_path, progress=False, log=logs.append)
    assert builds["build"] == 2 and (entry / "meta.json").exists()


def test_wav2vec2_warm_run_loads_no_weights(tmp_path, builds, monkeypatch):
    model_dir = save_random_wav2vec2(tmp_path / "w2v")
    config = FrontEndConfig(kind="wav2vec2", model=str(model_dir), layer=2, dtype="float32", device="cpu", batch_size=8)
    assert front_end_spec(config) == build_front_end(config).spec
    assert front_end_spec(LOGMEL) == build_front_end(LOGMEL).spec
    recs = make_recordings()[:2]
    cold = cached_features(recs, "train", config, CORPUS_ID, tmp_path / "cache", progress=False, log=lambda m: None)
    assert builds["build"] == 1 and cold.shape == (7, 99, 32)

    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("a warm run must not load Wav2Vec2")

    monkeypatch.setattr(transformers.Wav2Vec2Model, "from_pretrained", no_weights)
    warm = cached_features(recs, "train", config, CORPUS_ID, tmp_path / "cache", progress=False, log=lambda m: None)
    assert builds["build"] == 1
    np.testing.assert_array_equal(warm, cold)
    monkeypatch.undo()

    save_random_wav2vec2(model_dir, seed=1)  # re-saved weights at the same path: a new entry
    cached_features(recs, "train", config, CORPUS_ID, tmp_path / "cache", progress=False, log=lambda m: None)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def _rank_worker(rank: int, world: int, init_file: str, cache_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        features = cached_features(make_recordings(), "train", LOGMEL, CORPUS_ID, Path(cache_dir), progress=False)
        np.save(Path(out_dir) / f"rank{rank}.npy", np.asarray(features))
    finally:
        dist.destroy_process_group()


def test_torchrun_shards_match_single_process(tmp_path, builds):
    single = np.array(cached_features(make_recordings(), "train", LOGMEL, CORPUS_ID, tmp_path / "single", progress=False))
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "dist"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), single)
    entry = entry_of(tmp_path / "dist")
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "meta.json"]  # shards cleaned up
    builds["build"] = 0
    warm = cached_features(make_recordings(), "train", LOGMEL, CORPUS_ID, tmp_path / "dist", progress=False)
    assert builds["build"] == 0  # the entry built by 2 ranks is the single-process entry
    np.testing.assert_array_equal(warm, single)
