"""c2p-train end to end on a tiny synthetic corpus (seconds), including torchrun with gloo."""

import json
import os
import subprocess
import sys

import pytest

from c2p_stream.checkpoint import load_checkpoint
from trainer.cli import main

TINY = """
corpus: {kind: synthetic, seed: 3, n_train: 3, n_dev: 1, session_s: 40.0}
front_end: {kind: logmel, n_mels: 32, device: cpu}
model: {k: 4, speech_preset: small}
train: {batch_size: 32, max_epochs: 8, patience: 8, lr: 0.002, seed: 0}
cache_dir: CACHE
"""
REQUIRED = {"accuracy", "precision", "recall", "f1", "majority_rate", "cluster_sizes", "nmi", "contour_ccc", "contour_rmse"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = root / "tiny.yaml"
    config.write_text(TINY.replace("CACHE", str(root / "cache")))
    assert main(["--config", str(config), "--out", str(root / "run"), "--no-progress"]) == 0
    return config, root / "run"


def test_outputs_and_c2p_beats_chance(tiny_run):
    _, run = tiny_run
    metrics = json.loads((run / "metrics.json").read_text())
    for attribute in ("arousal", "valence"):
        assert set(metrics[attribute]) == {"c2p", "acc", "aac"}
        for model in metrics[attribute].values():
            assert REQUIRED <= set(model) and len(model["cluster_sizes"]) == 4
    arousal = metrics["arousal"]["c2p"]
    assert arousal["accuracy"] > arousal["majority_rate"] and arousal["f1"] > 0.4  # chance F1 is 0.25
    for name in ("report.md", "fig2_clusters.png", "fig3_pairing.png", "training_curves.png", "config.yaml"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "0.84" in report and f"{arousal['f1']:.2f}" in report
    checkpoint = load_checkpoint(run / "checkpoint")
    assert set(checkpoint.heads) == {"arousal", "valence"}
    assert all(h.method == "c2p" and h.k == 4 and len(h.clusters[0].mean) == 50 for h in checkpoint.heads.values())
    assert checkpoint.front_end == {"kind": "logmel", "n_mels": 32, "dim": 32}


def test_existing_run_needs_resume_and_resume_of_a_finished_run_changes_nothing(tiny_run, capsys):
    config, run = tiny_run
    before = (run / "metrics.json").read_text()
    assert main(["--config", str(config), "--out", str(run), "--no-progress"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["--config", str(config), "--out", str(run), "--no-progress", "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == json.loads(before)


def test_bad_config_is_one_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("corpus: {kind: synthetic}\ntrain: {alpha: high}\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "bad.yaml: train.alpha: expected float, got str 'high'" in capsys.readouterr().err


def test_torchrun_two_processes_gloo(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        TINY.replace("CACHE", str(tmp_path / "cache"))
        .replace("max_epochs: 8, patience: 8", "max_epochs: 2, patience: 8, attributes: [arousal], baselines: []")
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "trainer.cli", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"arousal"} and metrics["arousal"]["c2p"]["n"] == 39
    history = json.loads((tmp_path / "run" / "state" / "arousal-c2p" / "history.json").read_text())
    assert len(history) == 2


def test_sweep_k_reports_within_cluster_variance_and_plots_the_elbow(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        TINY.replace("CACHE", str(tmp_path / "cache"))
        .replace("max_epochs: 8, patience: 8", "max_epochs: 2, patience: 8, attributes: [arousal], baselines: []")
    )
    assert main(["--config", str(config), "--out", str(tmp_path / "run"), "--no-progress", "--sweep-k", "2..4"]) == 0
    assert (tmp_path / "run" / "elbow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "elbow.png" in (tmp_path / "run" / "report.md").read_text()
    assert main(["--config", str(config), "--out", str(tmp_path / "run2"), "--sweep-k", "1..x"]) == 2
