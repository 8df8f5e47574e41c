"""`c2p-train`: features -> C2P and baselines per attribute -> evaluation, report, checkpoint.

A run directory holds `config.yaml`, `metrics.json`, `report.md`, the figures,
`checkpoint/` (the C2P heads, loadable by `c2p-stream`) and `state/` (per-epoch training
state, so `--resume` continues an interrupted run). Runs unchanged under `torchrun`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from rich.console import Console

from c2p_stream.audio import AudioError
from c2p_stream.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from c2p_stream.config import ConfigError, RunConfig, dump_config, load_config, with_overrides
from c2p_stream.features import FrontEndError, front_end_spec
from trainer.algorithm import TrainedHead, predict_logits, train_head
from trainer.cache import cached_features
from trainer.corpora import CorpusError, corpus_identity, load_corpus, split_recordings, window_contours
from trainer.evaluate import evaluate_head, pairing_matrix
from trainer.report import write_metrics, write_report

console = Console(stderr=True, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _init_distributed()
        return run(args)
    except (ConfigError, CorpusError, AudioError, FrontEndError, CheckpointError, RunError) as err:
        console.print(f"[red]c2p-train: error:[/red] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("c2p-train: interrupted; continue with --resume")
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class RunError(RuntimeError):
    """A run directory that cannot be used as asked."""


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    config = with_overrides(config, dict(_parse_set(item) for item in args.set))
    if args.epochs is not None:
        config = with_overrides(config, {"train.max_epochs": args.epochs})
    out = Path(args.out)
    main_rank = not dist.is_initialized() or dist.get_rank() == 0
    _prepare_run_dir(out, config, args.resume, main_rank)
    log = console.print if main_rank else (lambda *_: None)

    recordings = load_corpus(config.corpus, base_dir=Path(args.config).resolve().parent)
    corpus_id = corpus_identity(config.corpus, base_dir=Path(args.config).resolve().parent)
    splits = {split: split_recordings(recordings, split) for split in ("train", "dev")}
    features = {
        split: cached_features(recs, split, config.front_end, corpus_id, config.cache_dir, progress=not args.no_progress)
        for split, recs in splits.items()
    }
    contours = {split: window_contours(recs) for split, recs in splits.items()}
    spec = front_end_spec(config.front_end)

    variants = ["c2p"] + (["c2p_coupled"] if config.train.coupling else []) + list(config.train.baselines)
    trained: dict[str, dict[str, TrainedHead]] = {}
    metrics: dict[str, dict[str, dict]] = {}
    for attribute in config.train.attributes:
        trained[attribute], metrics[attribute] = {}, {}
        for variant in variants:
            head = _train_variant(out, attribute, variant, config, features, contours, spec, args.resume, log)
            trained[attribute][variant] = head
            logits = predict_logits(head.head.speech, features["dev"])
            metrics[attribute][variant] = evaluate_head(head.head, contours["dev"][attribute], logits)
            m = metrics[attribute][variant]
            log(f"[bold]{attribute}/{variant}[/bold]: dev F1 {m['f1']:.3f}, accuracy {m['accuracy']:.3f} "
                f"(majority {m['majority_rate']:.3f}), contour CCC {m['contour_ccc']:.3f}")

    sweep = _sweep_k(args.sweep_k, config, features, contours, log) if args.sweep_k else None
    if not main_rank:
        return 0
    c2p_heads = {attribute: trained[attribute]["c2p"].head for attribute in trained}
    info = {
        "name": out.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "corpus": config.corpus.kind,
        "dev_f1": {attribute: metrics[attribute]["c2p"]["f1"] for attribute in metrics},
        "train_config": json.loads(json.dumps(yaml.safe_load(dump_config(config)))),
    }
    save_checkpoint(Checkpoint(front_end=spec, heads=c2p_heads, info=info), out / "checkpoint")
    pairing = None
    if {"arousal", "valence"} <= set(c2p_heads):
        a, v = (c2p_heads[x].reference_labels(contours["dev"][x]) for x in ("arousal", "valence"))
        pairing = pairing_matrix(a, v, c2p_heads["arousal"].k, c2p_heads["valence"].k)
    write_metrics(metrics, out / "metrics.json")
    report = write_report(
        out, metrics,
        clusters={attribute: head.clusters for attribute, head in c2p_heads.items()},
        pairing=pairing,
        histories={a: {v: t.history for v, t in heads.items()} for a, heads in trained.items()},
        sweep=sweep,
        config_text=dump_config(config),
    )
    log(f"wrote {report}, {out / 'metrics.json'} and {out / 'checkpoint'}")
    return 0


def _train_variant(out, attribute, variant, config, features, contours, spec, resume, log) -> TrainedHead:
    """Train one (attribute, variant), or load it when a resumed run already finished it."""
    state_dir = out / "state" / f"{attribute}-{variant}"
    final_dir, history_file = state_dir / "final", state_dir / "history.json"
    if resume and final_dir.is_dir() and history_file.is_file():
        log(f"{attribute}/{variant}: already trained, loading {final_dir}")
        return TrainedHead(load_checkpoint(final_dir).heads[attribute], json.loads(history_file.read_text()))
    train_config = with_overrides(config.train, {"coupling": variant == "c2p_coupled"}, source="variant")
    trained = train_head(
        attribute, "c2p" if variant.startswith("c2p") else variant,
        features["train"], contours["train"][attribute],
        k=config.model.k, config=train_config, speech_preset=config.model.speech_preset,
        state_dir=state_dir, resume=resume, log=log,
    )
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(Checkpoint(front_end=spec, heads={attribute: trained.head}), final_dir)
        _write_atomic(history_file, json.dumps(trained.history))
    return trained


def _sweep_k(k_range: str, config: RunConfig, features, contours, log) -> dict:
    """Within-cluster variance of the training contours per k (the elbow of Section 3.2)."""
    low, _, high = k_range.partition("..")
    try:
        ks = list(range(int(low), int(high) + 1))
    except ValueError:
        raise RunError(f"--sweep-k: expected a range like 2..10, got {k_range!r}") from None
    if not ks or ks[0] < 2:
        raise RunError(f"--sweep-k: expected a range of k >= 2 like 2..10, got {k_range!r}")
    sweep = {}
    for attribute in config.train.attributes:
        train_contours = contours["train"][attribute]
        variances = []
        for k in ks:
            head = train_head(attribute, "c2p", features["train"], train_contours, k=k, config=config.train,
                              speech_preset=config.model.speech_preset, log=lambda *_: None).head
            labels = head.reference_labels(train_contours)
            means = np.stack([train_contours[labels == c].mean(0) if (labels == c).any() else train_contours.mean(0)
                              for c in range(k)])
            variances.append(float(((train_contours - means[labels]) ** 2).sum(1).mean()))
            log(f"sweep {attribute} k={k}: within-cluster variance {variances[-1]:.4f}")
        sweep[attribute] = {"k": ks, "within_variance": variances}
    return sweep


def _prepare_run_dir(out: Path, config: RunConfig, resume: bool, main_rank: bool) -> None:
    """Check (every rank) then create (rank 0) the run directory and its config.yaml."""
    saved = out / "config.yaml"
    if saved.exists():
        if not resume:
            raise RunError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
        if saved.read_text() != dump_config(config):
            raise RunError(f"{saved}: the run was started with a different config; --resume needs the same one")
    if dist.is_initialized():
        dist.barrier()
    if main_rank and not saved.exists():
        _write_atomic(saved, dump_config(config))
    if dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _parse_set(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.alpha=0.3")
    return key.strip(), yaml.safe_load(value)


def _init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c2p-train",
        description="Train C2P (and the ACC/AAC baselines) for arousal and valence; write metrics, "
                    "report, figures and a checkpoint for c2p-stream.",
    )
    parser.add_argument("--config", required=True, help="YAML run config, e.g. configs/demo.yaml")
    parser.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    parser.add_argument("--sweep-k", metavar="LOW..HIGH", help="also train C2P for each k and plot the elbow")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.alpha=0.3 (repeatable)")
    parser.add_argument("--epochs", type=int, help="shorthand for --set train.max_epochs=N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


if __name__ == "__main__":
    sys.exit(main())
