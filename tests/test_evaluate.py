import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from c2p_stream.checkpoint import AttributeHead
from c2p_stream.clusters import describe_clusters
from trainer.evaluate import ccc, classification_metrics, contour_scores, evaluate_head, pairing_matrix


def test_perfect_prediction_scores_one():
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 0, 0])
    m = classification_metrics(labels, labels, 4)
    assert [m[k] for k in ("accuracy", "precision", "recall", "f1", "nmi")] == pytest.approx([1.0] * 5)
    assert m["confusion"] == np.diag([3, 2, 2, 2]).tolist() and m["n"] == 9
    assert m["cluster_sizes"] == m["predicted_sizes"] == [3, 2, 2, 2]


def test_constant_prediction_scores_the_majority_rate():
    reference = np.array([2, 2, 2, 2, 2, 0, 1, 1, 3, 3])
    m = classification_metrics(reference, np.full(10, 2), 4)
    assert m["accuracy"] == pytest.approx(m["majority_rate"]) == pytest.approx(0.5)
    assert m["predicted_sizes"] == [0, 0, 10, 0] and m["nmi"] == pytest.approx(0.0)


def test_known_confusion_matches_sklearn_macro_with_absent_class():
    reference = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 0, 1, 1, 2, 2, 2, 0, 2])
    m = classification_metrics(reference, predicted, 4)  # class 3 never occurs: it counts as 0 in the macro mean
    kw = dict(labels=range(4), average="macro", zero_division=0)
    assert m["precision"] == pytest.approx(precision_score(reference, predicted, **kw))
    assert m["recall"] == pytest.approx(recall_score(reference, predicted, **kw))
    assert m["f1"] == pytest.approx(f1_score(reference, predicted, **kw))
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion"][0] == [2, 1, 0, 0] and m["confusion"][3] == [0, 0, 0, 0]


def test_chance_f1_matches_monte_carlo():
    rng = np.random.default_rng(0)
    shares = np.array([0.55, 0.25, 0.15, 0.05])
    reference = rng.choice(4, size=4000, p=shares)
    m = classification_metrics(reference, reference, 4)
    p = np.bincount(reference, minlength=4) / len(reference)
    simulated = [f1_score(reference, rng.choice(4, size=len(reference), p=p), labels=range(4), average="macro",
                          zero_division=0) for _ in range(50)]
    assert m["chance_f1"] == pytest.approx(0.25)
    assert m["chance_f1"] == pytest.approx(np.mean(simulated), abs=0.01)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        classification_metrics(np.array([0, 4]), np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="equal"):
        classification_metrics(np.array([0, 1]), np.array([0]), 4)


def test_ccc_known_cases():
    x = np.sin(np.linspace(0, 2 * np.pi, 200, endpoint=False))  # zero mean: -x is perfectly discordant
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, -x) == pytest.approx(-1.0)
    assert 0 < ccc(x, x + 0.5) < 1  # perfectly correlated but biased
    assert 0 < ccc(x, 2 * x) < 1  # perfectly correlated but scaled
    assert np.isnan(ccc(np.ones(5), np.ones(5)))


def test_contour_scores_exact_and_empty_cluster_fallback():
    means = np.stack([np.full(50, -1.0), np.full(50, np.nan), np.full(50, 1.0)])
    true = np.stack([np.full(50, -1.0), np.full(50, 1.0)])
    exact = contour_scores(true, np.array([0, 2]), means)
    assert exact["contour_ccc"] == pytest.approx(1.0) and exact["contour_rmse"] == pytest.approx(0.0)
    # cluster 1 is empty: its prediction falls back to the training mean (share-weighted: 0.75*-1 + 0.25*1 = -0.5)
    scores = contour_scores(true, np.array([1, 1]), means, cluster_shares=np.array([0.75, 0.0, 0.25]))
    assert np.isfinite(scores["contour_ccc"]) and scores["contour_rmse"] == pytest.approx(np.sqrt((0.25 + 2.25) / 2))
    unweighted = contour_scores(true, np.array([1, 1]), means)  # plain mean of -1 and 1 = 0
    assert unweighted["contour_rmse"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        contour_scores(true, np.array([0, 0]), np.full((2, 50), np.nan))


def test_evaluate_head_on_a_contour_clustering_head():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 50)
    shapes = np.stack([np.full(50, -0.5), 0.5 * t, 0.5 - 0.5 * t, np.full(50, 0.6)])
    train = np.repeat(shapes, 20, axis=0) + 0.02 * rng.standard_normal((80, 50))
    labels = np.repeat(np.arange(4), 20)
    head = AttributeHead("arousal", "acc", speech=None, centroids=shapes.astype(np.float32),
                         clusters=describe_clusters(train, labels, 4))
    dev = np.repeat(shapes, 5, axis=0) + 0.02 * rng.standard_normal((20, 50))
    logits = np.eye(4)[np.repeat(np.arange(4), 5)]
    m = evaluate_head(head, dev, logits)
    assert m["accuracy"] == pytest.approx(1.0) and m["cluster_sizes"] == [5, 5, 5, 5]
    assert m["contour_ccc"] > 0.95 and m["contour_rmse"] < 0.05
    worse = evaluate_head(head, dev, np.roll(logits, 1, axis=1))
    assert worse["accuracy"] == 0.0 and worse["contour_ccc"] < m["contour_ccc"]
    with pytest.raises(ValueError, match="logits"):
        evaluate_head(head, dev, logits[:, :3])


def test_pairing_matrix_sums_to_100():
    arousal = np.array([0, 0, 1, 3, 3, 3, 2, 0])
    valence = np.array([1, 1, 2, 0, 0, 3, 2, 1])
    matrix = pairing_matrix(arousal, valence, 4, 4)
    assert matrix.shape == (4, 4) and matrix.sum() == pytest.approx(100.0)
    assert matrix[0, 1] == pytest.approx(37.5) and matrix[3, 0] == pytest.approx(25.0)
    with pytest.raises(ValueError):
        pairing_matrix(np.array([0, -1]), np.array([0, 0]), 4, 4)
