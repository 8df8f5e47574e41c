"""Dev-split evaluation of one attribute head (Table 3 plus the scores DESIGN.md asks for).

Each model defines its own targets (C2P: nearest AffectNet-latent centroid; ACC/AAC: their own
k-means), so accuracy and F1 are not comparable across models on their own. Beside them we give
the majority-class rate and chance F1 of the model's own targets, the cluster sizes, and a
contour-level score on a ground truth shared by all models: CCC and RMSE between each dev
window's true contour and the training mean contour of the cluster predicted from speech.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    normalized_mutual_info_score,
    precision_recall_fscore_support,
)

if TYPE_CHECKING:
    from c2p_stream.checkpoint import AttributeHead


def classification_metrics(reference: np.ndarray, predicted: np.ndarray, k: int) -> dict:
    """Accuracy, macro P/R/F1 over the k classes, and what to read them against.

    `majority_rate` is the accuracy of always guessing the most frequent reference class.
    `chance_f1` is the macro-F1 of guessing class j with probability p_j (the reference
    frequencies), taken on the expected confusion counts: E[TP_j] = N p_j^2 and
    E[TP_j + FP_j] = E[TP_j + FN_j] = N p_j, so precision_j = recall_j = F1_j = p_j and the
    macro mean is sum(p_j) / k = 1/k whatever the imbalance (an absent class scores 0, as in
    sklearn with zero_division=0). It is the large-N value; a finite sample's mean F1 is a
    little lower. A model stuck on the majority class scores accuracy = majority_rate.
    """
    reference = np.asarray(reference).astype(int).ravel()
    predicted = np.asarray(predicted).astype(int).ravel()
    if reference.shape != predicted.shape or reference.size == 0:
        raise ValueError(f"need equal, non-empty label arrays; got {reference.shape} and {predicted.shape}")
    for name, labels in (("reference", reference), ("predicted", predicted)):
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{name} labels must lie in [0, {k}); got [{labels.min()}, {labels.max()}]")
    labels = list(range(k))
    precision, recall, f1, _ = precision_recall_fscore_support(
        reference, predicted, labels=labels, average="macro", zero_division=0)
    sizes = np.bincount(reference, minlength=k)
    shares = sizes / sizes.sum()
    return {
        "accuracy": float(accuracy_score(reference, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "majority_rate": float(shares.max()),
        "chance_f1": float(shares.sum() / k),
        "nmi": float(normalized_mutual_info_score(reference, predicted)),
        "cluster_sizes": sizes.tolist(),
        "predicted_sizes": np.bincount(predicted, minlength=k).tolist(),
        "confusion": confusion_matrix(reference, predicted, labels=labels).tolist(),
        "n": int(reference.size),
    }


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient of two same-size arrays (flattened).

    2 cov(x, y) / (var x + var y + (mean x - mean y)^2), population moments. NaN when both are
    the same constant (0/0).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"ccc needs two non-empty arrays of one size; got {x.size} and {y.size}")
    mx, my = x.mean(), y.mean()
    covariance = np.mean((x - mx) * (y - my))
    denominator = x.var() + y.var() + (mx - my) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else float("nan")


def contour_scores(true_contours: np.ndarray, predicted: np.ndarray, cluster_means: np.ndarray,
                   cluster_shares: np.ndarray | None = None) -> dict:
    """CCC and RMSE between true contours (N, 50) and the mean contours (k, 50) of the predicted clusters (N,).

    A cluster that was empty in training has a NaN mean; predictions of it get the overall training
    mean contour instead: the share-weighted mean of the non-empty clusters' means when
    `cluster_shares` (k,) is given (exactly the training mean, since clusters partition the training
    windows), else their plain mean. The dev contours are never used for the fallback.
    """
    true_contours = np.asarray(true_contours, dtype=np.float64)
    predicted = np.asarray(predicted).astype(int).ravel()
    means = np.array(cluster_means, dtype=np.float64)
    if true_contours.ndim != 2 or len(true_contours) != len(predicted):
        raise ValueError(f"need true contours (N, T) and N predictions; got {true_contours.shape}, {predicted.shape}")
    if means.ndim != 2 or means.shape[1] != true_contours.shape[1]:
        raise ValueError(f"cluster means must be (k, {true_contours.shape[1]}); got {means.shape}")
    empty = np.isnan(means).any(axis=1)
    if empty.all():
        raise ValueError("every cluster mean is NaN: no training contour to compare against")
    if empty.any():
        weights = np.ones(len(means)) if cluster_shares is None else np.asarray(cluster_shares, dtype=np.float64)
        weights = np.where(empty, 0.0, weights)
        if weights.sum() <= 0:
            weights = (~empty).astype(np.float64)
        means[empty] = (weights[~empty, None] * means[~empty]).sum(axis=0) / weights.sum()
    estimate = means[predicted]
    return {
        "contour_ccc": ccc(true_contours, estimate),
        "contour_rmse": float(np.sqrt(np.mean((true_contours - estimate) ** 2))),
    }


def evaluate_head(head: AttributeHead, dev_contours: np.ndarray, dev_logits: np.ndarray) -> dict:
    """Score one head on the dev split: dev contours (N, 50), SpeechCNN logits (N, k) -> metrics dict.

    The reference is the cluster each dev contour falls in under the head's own clustering; the
    prediction is the speech argmax. Returns classification_metrics | contour_scores.
    """
    dev_logits = np.asarray(dev_logits)
    if dev_logits.ndim != 2 or dev_logits.shape != (len(dev_contours), head.k):
        raise ValueError(f"logits must be (N={len(dev_contours)}, k={head.k}); got {dev_logits.shape}")
    reference = head.reference_labels(dev_contours)
    predicted = dev_logits.argmax(axis=1)
    means = np.array([c.mean for c in head.clusters], dtype=np.float64)
    shares = np.array([c.share for c in head.clusters], dtype=np.float64)
    return classification_metrics(reference, predicted, head.k) | contour_scores(
        dev_contours, predicted, means, shares)


def pairing_matrix(arousal_labels: np.ndarray, valence_labels: np.ndarray, k_a: int, k_v: int) -> np.ndarray:
    """(k_a, k_v) percentage of windows in each arousal x valence cluster pairing (sums to 100)."""
    arousal_labels = np.asarray(arousal_labels).astype(int).ravel()
    valence_labels = np.asarray(valence_labels).astype(int).ravel()
    if arousal_labels.shape != valence_labels.shape or arousal_labels.size == 0:
        raise ValueError(f"need equal, non-empty label arrays; got {arousal_labels.shape} and {valence_labels.shape}")
    for name, labels, k in (("arousal", arousal_labels, k_a), ("valence", valence_labels, k_v)):
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{name} labels must lie in [0, {k}); got [{labels.min()}, {labels.max()}]")
    counts = np.zeros((k_a, k_v))
    np.add.at(counts, (arousal_labels, valence_labels), 1)
    return 100 * counts / arousal_labels.size
