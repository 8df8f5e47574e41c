import numpy as np
import pytest
import torch

from c2p_stream.config import TrainConfig
from trainer.algorithm import _early_stop, feature_stats, predict_logits, train_head
from trainer.clustering import fit_kmeans


def learnable_data(n=240, dim=8, seed=0):
    """Contours of 4 shapes; features carry the shape in a few dimensions plus noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(-1, 1, 50)
    shapes = np.stack([np.full(50, -0.6), np.full(50, 0.6), 0.5 * t, -0.5 * t])
    kind = rng.integers(0, 4, n)
    contours = shapes[kind] + 0.05 * rng.standard_normal((n, 50))
    features = rng.standard_normal((n, 99, dim)).astype(np.float16)
    features[:, :, :4] += 2.0 * np.eye(4)[kind][:, None, :].astype(np.float16)
    return features, contours.astype(np.float32), kind


def config(**overrides):
    return TrainConfig(**{"batch_size": 32, "max_epochs": 6, "patience": 50, "seed": 1, "lr": 3e-3, **overrides})


@pytest.mark.parametrize("method", ["c2p", "acc", "aac"])
def test_learns_predictable_clusters(method):
    features, contours, _ = learnable_data()
    trained = train_head("arousal", method, features, contours, k=4, config=config(), speech_preset="small", log=lambda _: None)
    head = trained.head
    reference = head.reference_labels(contours)
    accuracy = (predict_logits(head.speech, features).argmax(1) == reference).mean()
    assert accuracy > 0.6, accuracy  # chance is about 0.25-0.5
    assert len(trained.history) == 6 and head.k == 4 and len(head.clusters) == 4
    assert (head.affect is not None) == (method == "c2p")


def test_coupling_variant_trains():
    features, contours, _ = learnable_data(n=128)
    trained = train_head("valence", "c2p", features, contours, k=4, config=config(coupling=True, max_epochs=3),
                         speech_preset="small", log=lambda _: None)
    assert all(np.isfinite(r["loss"]) for r in trained.history)


def test_resume_reaches_the_same_result(tmp_path):
    features, contours, _ = learnable_data(n=128)
    quiet = dict(k=4, speech_preset="small", log=lambda _: None)
    full = train_head("arousal", "c2p", features, contours, config=config(max_epochs=4), **quiet)
    train_head("arousal", "c2p", features, contours, config=config(max_epochs=2), state_dir=tmp_path, **quiet)
    (tmp_path / ".epoch-003.pt.tmp-1").write_bytes(b"partial")  # a crash mid-save leaves only a temp file
    resumed = train_head("arousal", "c2p", features, contours, config=config(max_epochs=4), state_dir=tmp_path,
                         resume=True, **quiet)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for a, b in zip(full.head.speech.state_dict().values(), resumed.head.speech.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(full.head.centroids, resumed.head.centroids)


def test_resume_skips_a_corrupt_latest_state(tmp_path):
    features, contours, _ = learnable_data(n=64)
    quiet = dict(k=4, speech_preset="small")
    train_head("arousal", "acc", features, contours, config=config(max_epochs=2), state_dir=tmp_path, log=lambda _: None, **quiet)
    newest = sorted(tmp_path.glob("epoch-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    messages = []
    resumed = train_head("arousal", "acc", features, contours, config=config(max_epochs=2), state_dir=tmp_path,
                         resume=True, log=messages.append, **quiet)
    assert any("unreadable training state" in m for m in messages)
    assert len(resumed.history) == 2


def test_kmeans_warm_start_keeps_ids_and_reseeds_empty_clusters():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.1, (50, 2)) for c in ([0, 0], [5, 5], [0, 5])])
    first = fit_kmeans(points, 3, seed=0)
    again = fit_kmeans(points + 0.01, 3, init=first.centroids)
    np.testing.assert_array_equal(first.labels, again.labels)
    far = np.array([[0, 0], [100, 100], [-100, 50]], dtype=float)  # two centroids with no points
    fixed = fit_kmeans(points, 3, init=far)
    assert fixed.reseeded >= 2 and sorted(np.bincount(fixed.labels, minlength=3)) == [50, 50, 50]
    assert np.isfinite(fixed.centroids).all()


def test_early_stopping_rule():
    cfg = TrainConfig(patience=2, min_delta=0.01)
    assert not _early_stop([{"loss": 1.0}, {"loss": 0.9}], cfg)
    assert _early_stop([{"loss": 1.0}, {"loss": 0.999}, {"loss": 0.995}], cfg)


def test_feature_stats_match_numpy():
    features = np.random.default_rng(0).standard_normal((10, 99, 3)).astype(np.float16)
    mean, std = feature_stats(features, chunk=3)
    flat = features.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), flat.std(0), atol=1e-4)
