"""Human-readable descriptions of contour clusters and of arousal x valence pairings.

A cluster is named by the level of its mean contour (low / mid / high against the
terciles of all training windows' means) and its trend (rising / falling / flat: the
change from the first to the last 0.4 s of the mean contour, against a quarter of the
spread of that change across all windows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_EDGE_FRAMES = 10  # 0.4 s at 25 Hz at each end of a contour
_FLAT_FRACTION = 0.25
_ARROWS = {"north": "↑", "north-east": "↗", "east": "→", "south-east": "↘", "south": "↓",
           "south-west": "↙", "west": "←", "north-west": "↖", "still": "·"}


@dataclass(frozen=True)
class ClusterInfo:
    id: int  # 0-based
    name: str  # "<level> <trend>"
    level: str
    trend: str
    mean: list[float]  # (50,) mean contour
    std: list[float]  # (50,) per-sample std
    share: float  # fraction of training windows in the cluster

    def to_dict(self) -> dict:
        return asdict(self)


def contour_change(contours: np.ndarray) -> np.ndarray:
    """(N, 50) -> (N,) mean of the last 0.4 s minus mean of the first 0.4 s."""
    return contours[:, -_EDGE_FRAMES:].mean(axis=1) - contours[:, :_EDGE_FRAMES].mean(axis=1)


def describe_clusters(contours: np.ndarray, labels: np.ndarray, k: int) -> list[ClusterInfo]:
    """Mean/std contour, share and name of each of k clusters of `contours` (N, 50)."""
    contours = np.asarray(contours, dtype=np.float64)
    low_edge, high_edge = np.quantile(contours.mean(axis=1), [1 / 3, 2 / 3])
    flat_band = _FLAT_FRACTION * contour_change(contours).std()
    infos = []
    for cluster in range(k):
        members = contours[labels == cluster]
        if len(members) == 0:
            mean = std = np.full(contours.shape[1], np.nan)
            level, trend = "empty", "flat"
        else:
            mean, std = members.mean(axis=0), members.std(axis=0)
            level = "low" if mean.mean() < low_edge else "high" if mean.mean() > high_edge else "mid"
            change = contour_change(mean[None])[0]
            trend = "rising" if change > flat_band else "falling" if change < -flat_band else "flat"
        infos.append(ClusterInfo(cluster, f"{level} {trend}", level, trend, mean.tolist(), std.tolist(),
                                 float(np.mean(labels == cluster))))
    return infos


def pairing_name(arousal_cluster: int, valence_cluster: int) -> str:
    """0-based ids -> the paper's 1-based pairing name, e.g. (3, 2) -> "A4-V3"."""
    return f"A{arousal_cluster + 1}-V{valence_cluster + 1}"


def av_direction(arousal_trend: str, valence_trend: str) -> str:
    """Move on the AV plane (x: valence, y: arousal): rising arousal is north, rising valence east."""
    vertical = {"rising": "north", "falling": "south"}.get(arousal_trend, "")
    horizontal = {"rising": "east", "falling": "west"}.get(valence_trend, "")
    return "-".join(part for part in (vertical, horizontal) if part) or "still"


def direction_arrow(direction: str) -> str:
    return _ARROWS.get(direction, "?")
