"""k-means for Algorithm 1 and the baselines: warm starts and no empty clusters."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning


@dataclass(frozen=True)
class Clustering:
    centroids: np.ndarray  # (k, d) float32
    labels: np.ndarray  # (N,) int64
    inertia: float  # sum of squared distances to the assigned centroid
    reseeded: int  # empty clusters re-seeded in this call


def fit_kmeans(points: np.ndarray, k: int, init: np.ndarray | None = None, seed: int = 0) -> Clustering:
    """Cluster (N, d) points into k groups.

    Without `init`: k-means++ with 10 restarts. With `init` (the previous epoch's centroids):
    a single run from those points, so cluster ids stay stable across epochs. A centroid left
    with no points (before or after fitting) is re-seeded on the point farthest from its
    centroid, so no cluster is empty and no NaN reaches the loss.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(points)}")
    reseeded = 0
    if init is not None:
        init, reseeded = _reseed_empty(points, np.asarray(init, dtype=np.float64))
    kmeans = KMeans(k, init="k-means++" if init is None else init, n_init=10 if init is None else 1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k: handled below
        kmeans.fit(points)
    centroids, more = _reseed_empty(points, kmeans.cluster_centers_)
    labels = _assign(points, centroids)
    inertia = float(((points - centroids[labels]) ** 2).sum())
    return Clustering(centroids.astype(np.float32), labels, inertia, reseeded + more)


def align_ids(clustering: Clustering, previous_labels: np.ndarray) -> Clustering:
    """Renumber clusters to agree best with `previous_labels` (Hungarian matching on overlap).

    As AffectNet's latent space moves during an epoch, warm-started k-means can still swap
    cluster ids; without this the classifiers' targets would change meaning between epochs.
    """
    k = len(clustering.centroids)
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (clustering.labels, previous_labels), 1)
    new_ids, old_ids = linear_sum_assignment(-overlap)
    order = np.empty(k, dtype=np.int64)
    order[old_ids] = new_ids  # cluster that takes id `old` is the fitted cluster `new`
    relabel = np.argsort(order)
    return Clustering(clustering.centroids[order], relabel[clustering.labels], clustering.inertia, clustering.reseeded)


def _assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)


def _reseed_empty(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, int]:
    """Move each empty cluster's centroid onto the point currently farthest from its centroid."""
    centroids = centroids.copy()
    reseeded = 0
    for _ in range(len(centroids)):
        labels = _assign(points, centroids)
        empty = np.setdiff1d(np.arange(len(centroids)), labels)
        if len(empty) == 0:
            break
        distances = ((points - centroids[labels]) ** 2).sum(axis=1)
        centroids[empty[0]] = points[distances.argmax()]
        reseeded += 1
    return centroids, reseeded
