"""A run directory's human outputs: metrics.json, report.md and the paper's figures.

Plain data in, files out; nothing here trains. Figures are drawn on a bare matplotlib `Figure`
with the Agg canvas attached, so no pyplot state is touched and no backend is chosen at import.
Every file is written beside its final name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from c2p_stream.audio import CONTOUR_RATE_HZ
from c2p_stream.clusters import ClusterInfo, av_direction, direction_arrow, pairing_name

TABLE3_KEYS = ("accuracy", "precision", "recall", "f1")
PAPER_TABLE3 = {
    "arousal": {"c2p": dict(zip(TABLE3_KEYS, (0.83, 0.90, 0.79, 0.84))),
                "acc": dict(zip(TABLE3_KEYS, (0.34, 0.38, 0.36, 0.37))),
                "aac": dict(zip(TABLE3_KEYS, (0.24, 0.26, 0.28, 0.27)))},
    "valence": {"c2p": dict(zip(TABLE3_KEYS, (0.71, 0.78, 0.72, 0.75))),
                "acc": dict(zip(TABLE3_KEYS, (0.29, 0.32, 0.31, 0.31))),
                "aac": dict(zip(TABLE3_KEYS, (0.25, 0.24, 0.27, 0.25)))},
}
# Sec. 3.3: the five most frequent C2P pairings on RECOLA (pairing, %, AV direction).
PAPER_TOP_PAIRINGS = [("A2-V3", 19.6, "south-east"), ("A4-V2", 16.3, "north"), ("A2-V4", 15.6, "south-west"),
                      ("A4-V3", 15.2, "north-east"), ("A4-V4", 14.6, "north-west")]
DEFAULT_NOTES = (
    "Each model is scored against its own targets (C2P: nearest AffectNet-latent centroid; ACC: k-means on "
    "contours; AAC: k-means on contour means), so accuracy and F1 are not comparable across models on their own. "
    "Read each row against its majority rate and chance F1, and compare models on contour CCC/RMSE, which share "
    "one ground truth (the dev contours).",
    "Chance F1 is the expected macro-F1 of guessing with the reference class frequencies, which is 1/k; a model "
    "that always predicts the majority class has accuracy equal to the majority rate.",
    "In the paper's loss as written the cluster labels are constant within an epoch, so the speech loss cannot "
    "move AffectNet and the clusters are not speech-driven; the coupled variant (if run) is a separate model row.",
    "As in the paper (RECOLA's test labels are not public), the scores are on the development split.",
    "Cluster ids are k-means order and arbitrary: compare pairings with the paper's by trend and direction, "
    "not by number.",
)
_TREND_COLOURS = {"rising": "tab:green", "falling": "tab:red", "flat": "tab:blue"}


def write_metrics(metrics: dict, path: Path) -> None:
    """metrics.json ({attribute: {method: {metric: value}}}); NaN/inf become null, numpy types plain."""
    _write_atomic(Path(path), json.dumps(_plain(metrics), indent=1, allow_nan=False) + "\n")


def table3_markdown(metrics: dict) -> str:
    """Table 3 in the paper's layout, ours with the paper's in brackets, then the extra metrics."""
    rows3 = ["| Model | Attrb | Acc | P | R | F-score |", "| --- | --- | --- | --- | --- | --- |"]
    rows_x = ["| Model | Attrb | n | Majority rate | Chance F1 | NMI | Contour CCC | Contour RMSE | Cluster sizes "
              "| Predicted sizes |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for attribute, method, m in _rows(metrics):
        paper = PAPER_TABLE3.get(attribute, {}).get(method, {})
        cells = [_fmt(m.get(key)) + (f" ({paper[key]:.2f})" if key in paper else "") for key in TABLE3_KEYS]
        head = f"| {method.upper()} | {attribute[:1].upper()} |"
        rows3.append(f"{head} {' | '.join(cells)} |")
        extra = [m.get("n", "n/a"), _fmt(m.get("majority_rate")), _fmt(m.get("chance_f1")), _fmt(m.get("nmi")),
                 _fmt(m.get("contour_ccc")), _fmt(m.get("contour_rmse"), 3),
                 _sizes(m.get("cluster_sizes")), _sizes(m.get("predicted_sizes"))]
        rows_x.append(f"{head} {' | '.join(map(str, extra))} |")
    return ("Ours on the dev split, the paper's Table 3 in brackets.\n\n" + "\n".join(rows3)
            + "\n\nWhat to read them against (reference cluster sizes and predicted sizes are window counts, "
            "cluster 1 first).\n\n" + "\n".join(rows_x) + "\n")


def plot_cluster_contours(clusters_by_attribute: dict, path: Path) -> None:
    """Fig. 2: per attribute a row of k panels, mean contour with a ±1 std band over the 2 s window."""
    clusters_by_attribute = {a: _cluster_list(c) for a, c in clusters_by_attribute.items()}
    n_cols = max((len(c) for c in clusters_by_attribute.values()), default=1)
    fig = _figure((2.8 * n_cols, 2.4 * max(len(clusters_by_attribute), 1) + 0.5))
    axes = fig.subplots(max(len(clusters_by_attribute), 1), n_cols, squeeze=False, sharex=True)
    for row, (attribute, clusters) in zip(axes, clusters_by_attribute.items()):
        bands = [np.r_[np.subtract(c.mean, c.std), np.add(c.mean, c.std)] for c in clusters]
        finite = np.concatenate(bands)[np.isfinite(np.concatenate(bands))] if bands else np.array([])
        low, high = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
        margin = 0.05 * (high - low or 1.0)
        for ax, cluster in zip(row, clusters):
            mean, std = np.asarray(cluster.mean, float), np.asarray(cluster.std, float)
            t_s = np.arange(len(mean)) / CONTOUR_RATE_HZ
            colour = _TREND_COLOURS.get(cluster.trend, "grey")
            ax.axhline(0, color="0.8", lw=0.8)
            if np.isfinite(mean).any():
                ax.fill_between(t_s, mean - std, mean + std, color=colour, alpha=0.25, lw=0)
                ax.plot(t_s, mean, color=colour, lw=2)
            else:
                ax.text(0.5, 0.5, "empty", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_title(f"{attribute[:1].upper()}{cluster.id + 1}: {cluster.name} ({cluster.share:.1%})", fontsize=10)
            ax.set_ylim(low - margin, high + margin)
            ax.set_xlim(0, len(mean) / CONTOUR_RATE_HZ)
            ax.grid(alpha=0.3)
        for ax in row[len(clusters):]:
            ax.axis("off")
        row[0].set_ylabel(attribute)
    for ax in axes[-1]:
        ax.set_xlabel("time in window (s)")
    fig.suptitle("Fig. 2: cluster mean contours ± 1 std (training windows)")
    _save(fig, path)


def plot_pairing(matrix: np.ndarray, arousal_clusters, valence_clusters, path: Path) -> None:
    """Fig. 3: % of windows per arousal x valence pairing; each cell shows its AV-plane direction."""
    matrix = np.asarray(matrix, dtype=float)
    arousal, valence = _cluster_list(arousal_clusters), _cluster_list(valence_clusters)
    k_a, k_v = matrix.shape
    if (k_a, k_v) != (len(arousal), len(valence)):
        raise ValueError(f"pairing matrix {matrix.shape} does not match {len(arousal)} x {len(valence)} clusters")
    fig = _figure((2.0 + 1.6 * k_v, 1.5 + 1.0 * k_a))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1e-9), aspect="auto")
    for i in range(k_a):
        for j in range(k_v):
            arrow = direction_arrow(av_direction(arousal[i].trend, valence[j].trend))
            ax.text(j, i, f"{matrix[i, j]:.1f}%\n{arrow}", ha="center", va="center", fontsize=10,
                    color="white" if matrix[i, j] > 0.6 * matrix.max() else "black")
    ax.set_xticks(range(k_v), [_axis_label("V", j, valence, lambda t: av_direction("flat", t)) for j in range(k_v)])
    ax.set_yticks(range(k_a), [_axis_label("A", i, arousal, lambda t: av_direction(t, "flat")) for i in range(k_a)])
    ax.set_xlabel("valence cluster")
    ax.set_ylabel("arousal cluster")
    fig.colorbar(image, ax=ax, label="% of windows")
    ax.set_title("Fig. 3: arousal x valence cluster pairings")
    _save(fig, path)


def plot_elbow(sweep: dict, path: Path) -> None:
    """Within-cluster variance against k per attribute (the paper picks k = 4 at the elbow)."""
    fig = _figure((4.5 * max(len(sweep), 1), 3.4))
    axes = fig.subplots(1, max(len(sweep), 1), squeeze=False)[0]
    for ax, (attribute, curve) in zip(axes, sweep.items()):
        ax.plot(curve.get("k", []), curve.get("within_variance", []), "o-")
        ax.axvline(4, color="grey", ls="--", lw=1, label="paper: k = 4")
        ax.set(title=attribute, xlabel="k", ylabel="within-cluster variance")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_training_curves(histories: dict, path: Path) -> None:
    """Per attribute (rows) and logged quantity (columns), one line per method; missing keys are skipped."""
    known = ["loss", "affect_loss", "speech_loss", "speech_acc"]
    seen = {key for methods in histories.values() for log in methods.values() for entry in log for key in entry}
    keys = [k for k in known if k in seen] + sorted(seen - set(known) - {"epoch"}) or ["loss"]
    fig = _figure((3.6 * len(keys), 2.8 * max(len(histories), 1) + 0.4))
    axes = fig.subplots(max(len(histories), 1), len(keys), squeeze=False)
    for row, (attribute, methods) in zip(axes, histories.items()):
        for ax, key in zip(row, keys):
            for index, method in enumerate(_ordered(methods, ("c2p", "acc", "aac"))):  # one colour per method
                points = [(e.get("epoch", i + 1), e[key]) for i, e in enumerate(methods[method]) if _finite(e.get(key))]
                if points:
                    ax.plot(*zip(*points), marker=".", color=f"C{index}", label=method.upper())
            if not ax.lines:
                ax.text(0.5, 0.5, "n/a", transform=ax.transAxes, ha="center", va="center", color="grey")
            else:
                ax.legend(fontsize=8)
            ax.set(title=f"{attribute}: {key}", xlabel="epoch")
            ax.grid(alpha=0.3)
    _save(fig, path)


def write_report(run_dir: Path, metrics: dict, clusters: dict, pairing: np.ndarray | None, histories: dict,
                 sweep: dict | None, config_text: str, notes: list[str] = ()) -> Path:
    """Write report.md and its figures into `run_dir`; returns the report's path.

    `clusters` is {attribute: [ClusterInfo or its dict]} (the C2P clusters of Fig. 2), `pairing` the
    (k_a, k_v) percentages of evaluate.pairing_matrix, `sweep` the elbow data or None.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clusters = {a: _cluster_list(c) for a, c in (clusters or {}).items()}
    if pairing is not None and {"arousal", "valence"} <= clusters.keys():
        if np.shape(pairing) != (len(clusters["arousal"]), len(clusters["valence"])):
            raise ValueError(f"pairing matrix {np.shape(pairing)} does not match the arousal x valence clusters")
    lines = [f"# C2P run report: {run_dir.name}", "", "## Run configuration", "", "```yaml",
             config_text.rstrip(), "```", "", "## Table 3: classification on the dev split", "",
             table3_markdown(metrics)]
    if clusters:
        plot_cluster_contours(clusters, run_dir / "fig2_clusters.png")
        lines += ["## Clusters (Fig. 2)", "", "![Fig. 2: cluster contours](fig2_clusters.png)", ""]
        for attribute, infos in clusters.items():
            lines += [f"### {attribute}", "", "| Cluster | Name | Share | Level | Trend |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {attribute[:1].upper()}{c.id + 1} | {c.name} | {c.share:.1%} | {c.level} | {c.trend} |"
                      for c in infos] + [""]
    if pairing is not None and {"arousal", "valence"} <= clusters.keys():
        plot_pairing(pairing, clusters["arousal"], clusters["valence"], run_dir / "fig3_pairing.png")
        lines += ["## Arousal x valence pairings (Fig. 3)", "", "![Fig. 3: pairings](fig3_pairing.png)", "",
                  *_top_pairings(np.asarray(pairing, float), clusters["arousal"], clusters["valence"])]
    if any(log for methods in (histories or {}).values() for log in methods.values()):
        plot_training_curves(histories, run_dir / "training_curves.png")
        lines += ["## Training curves", "", "![Training curves](training_curves.png)", ""]
    if sweep:
        plot_elbow(sweep, run_dir / "elbow.png")
        lines += ["## Choice of k (elbow)", "", "![Within-cluster variance against k](elbow.png)", ""]
    lines += ["## Notes", "", *(f"- {note}" for note in (*DEFAULT_NOTES, *notes)), ""]
    report = run_dir / "report.md"
    _write_atomic(report, "\n".join(lines))
    return report


def _top_pairings(matrix: np.ndarray, arousal: list[ClusterInfo], valence: list[ClusterInfo], top: int = 5) -> list[str]:
    lines = ["Most frequent pairings (ours; the paper's on RECOLA beside, matched by rank only):", "",
             "| Rank | Pairing | Clusters | Share | AV direction | Paper |", "| --- | --- | --- | --- | --- | --- |"]
    order = np.argsort(-matrix, axis=None, kind="stable")[:top]
    for rank, flat in enumerate(order):
        i, j = np.unravel_index(flat, matrix.shape)
        direction = av_direction(arousal[i].trend, valence[j].trend)
        paper = PAPER_TOP_PAIRINGS[rank] if rank < len(PAPER_TOP_PAIRINGS) else None
        paper_cell = f"{paper[0]} {paper[1]:.1f}% {paper[2]} {direction_arrow(paper[2])}" if paper else ""
        lines.append(f"| {rank + 1} | {pairing_name(i, j)} | {arousal[i].name} / {valence[j].name} | "
                     f"{matrix[i, j]:.1f}% | {direction} {direction_arrow(direction)} | {paper_cell} |")
    return lines + [""]


def _axis_label(prefix: str, index: int, clusters: list[ClusterInfo], direction) -> str:
    cluster = clusters[index]
    return f"{prefix}{index + 1} {direction_arrow(direction(cluster.trend))}\n{cluster.name}"


def _cluster_list(clusters) -> list[ClusterInfo]:
    return [c if isinstance(c, ClusterInfo) else ClusterInfo(**c) for c in clusters]


def _rows(metrics: dict):
    """(attribute, method, metrics) in the paper's order, then anything else in insertion order."""
    for attribute in _ordered(metrics, PAPER_TABLE3):
        for method in _ordered(metrics[attribute], ("c2p", "acc", "aac")):
            yield attribute, method, metrics[attribute][method]


def _ordered(keys, first) -> list:
    return [k for k in first if k in keys] + [k for k in keys if k not in first]


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.number)) and math.isfinite(float(value))


def _fmt(value, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "n/a"


def _sizes(sizes) -> str:
    return "/".join(str(int(s)) for s in sizes) if sizes else "n/a"


def _plain(value):
    """JSON-safe copy: numpy -> Python, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
