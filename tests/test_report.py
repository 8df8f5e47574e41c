import json
import math
import warnings

import numpy as np
import pytest

from c2p_stream.clusters import describe_clusters
from trainer.report import PAPER_TABLE3, table3_markdown, write_metrics, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(f1: float = 0.81) -> dict:
    row = {"accuracy": 0.8, "precision": 0.85, "recall": 0.79, "f1": f1, "majority_rate": 0.4, "chance_f1": 0.25,
           "nmi": 0.5, "contour_ccc": 0.6, "contour_rmse": 0.123, "cluster_sizes": [10, 20, 30, 40],
           "predicted_sizes": [12, 18, 30, 40], "confusion": np.eye(4, dtype=int).tolist(), "n": 100}
    return {a: {m: dict(row) for m in ("c2p", "acc", "aac")} for a in ("arousal", "valence")}


def _clusters(seed: int, empty: bool = False) -> list:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 50)
    shapes = [np.full(50, -0.5), 0.5 * t, 0.5 - 0.5 * t, np.full(50, 0.6)]
    contours = np.concatenate([s + 0.05 * rng.standard_normal((25, 50)) for s in shapes])
    labels = np.repeat(np.arange(4), 25)
    if empty:
        labels[labels == 3] = 2
    return describe_clusters(contours, labels, 4)


def test_metrics_json_round_trip_with_nan_as_null(tmp_path):
    metrics = _metrics()
    metrics["valence"]["aac"]["contour_ccc"] = float("nan")
    metrics["valence"]["acc"]["nmi"] = np.float32(0.25)
    metrics["arousal"]["c2p"]["cluster_sizes"] = np.array([1, 2, 3, 4])
    path = tmp_path / "metrics.json"
    write_metrics(metrics, path)
    loaded = json.loads(path.read_text())
    assert loaded["valence"]["aac"]["contour_ccc"] is None
    assert loaded["valence"]["acc"]["nmi"] == pytest.approx(0.25)
    assert loaded["arousal"]["c2p"]["cluster_sizes"] == [1, 2, 3, 4]
    assert loaded["arousal"]["acc"] == _metrics()["arousal"]["acc"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_table3_has_paper_numbers_beside_ours():
    metrics = _metrics()
    metrics["valence"]["c2p_coupled"] = dict(metrics["valence"]["c2p"], f1=float("nan"))
    table = table3_markdown(metrics)
    assert "| C2P | A | 0.80 (0.83) | 0.85 (0.90) | 0.79 (0.79) | 0.81 (0.84) |" in table
    assert "| AAC | V | 0.80 (0.25) |" in table
    assert "| C2P_COUPLED | V | 0.80 | 0.85 | 0.79 | n/a |" in table  # a variant without paper numbers
    assert "| 100 | 0.40 | 0.25 | 0.50 | 0.60 | 0.123 | 10/20/30/40 | 12/18/30/40 |" in table
    assert PAPER_TABLE3["valence"]["c2p"]["f1"] == 0.75


def test_write_report_writes_markdown_and_pngs(tmp_path):
    arousal, valence = _clusters(0), _clusters(1, empty=True)
    pairing = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 5, 27]], dtype=float)
    histories = {a: {"c2p": [{"epoch": e, "loss": 1 / e, "affect_loss": 0.5 / e, "speech_loss": 0.8 / e,
                              "speech_acc": 0.5 + e / 20} for e in range(1, 6)],
                     "acc": [{"epoch": e, "loss": 1.2 / e, "speech_acc": 0.3} for e in range(1, 6)]}
                 for a in ("arousal", "valence")}
    sweep = {a: {"k": list(range(2, 11)), "within_variance": [1 / k for k in range(2, 11)]} for a in ("arousal", "valence")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a glyph missing from the font
        report = write_report(tmp_path / "run", _metrics(), {"arousal": arousal, "valence": [c.to_dict() for c in valence]},
                              pairing, histories, sweep, "seed: 0\nk: 4\n", notes=["a note of this run"])
    text = report.read_text()
    for name in ("fig2_clusters.png", "fig3_pairing.png", "training_curves.png", "elbow.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in text
    assert "0.81 (0.84)" in text and "```yaml\nseed: 0\nk: 4\n```" in text
    assert "| A1 | low flat | 25.0% | low | flat |" in text and "| V4 | empty flat | 0.0% | empty | flat |" in text
    assert "| 1 | A4-V4 | high flat / empty flat | 27.0% | still · |" in text
    assert "| 2 | A3-V4 | mid falling / empty flat | 12.0% | south ↓ |" in text
    assert "a note of this run" in text and "not comparable across models" in text
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_write_report_without_optional_parts(tmp_path):
    metrics = {"arousal": {"c2p": {"accuracy": math.nan, "f1": 0.5}}}
    report = write_report(tmp_path, metrics, {"arousal": _clusters(2)}, None, {}, None, "k: 4")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["fig2_clusters.png", "report.md"]
    assert "| C2P | A | n/a (0.83) | n/a (0.90) | n/a (0.79) | 0.50 (0.84) |" in report.read_text()


def test_pairing_shape_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pairing matrix"):
        write_report(tmp_path, _metrics(), {"arousal": _clusters(0), "valence": _clusters(1)[:3]},
                     np.full((4, 4), 6.25), {}, None, "")
