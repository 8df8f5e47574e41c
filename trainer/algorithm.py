"""Algorithm 1 (C2P) and the ACC/AAC baselines: one training loop for one attribute.

C2P, per epoch: AffectNet (eval mode) embeds every training contour -> k-means on the
8-dim latents (k-means++ the first time, then warm-started from the previous centroids)
-> minibatches with L = alpha * CE(AffectNet(contour), y) + (1 - alpha) * CE(SpeechCNN(x), y).
The labels y are constants within an epoch, so as the paper writes it the speech loss never
reaches AffectNet. `coupling=True` is our variant that lets it: the speech term becomes the
cross-entropy between the SpeechCNN's prediction and a soft assignment of AffectNet's live
latent to the centroids, so AffectNet is pushed towards clusters that speech can predict.

Baselines: fixed labels from k-means on the raw contours (ACC) or their means (AAC), and
the same SpeechCNN trained on them (L = CE(SpeechCNN(x), y)).

Each epoch ends with an atomic state file, so `resume=True` continues from the last
completed epoch and reaches the same result as an uninterrupted run with the same seed.
Under torch.distributed every rank takes its share of each minibatch (DDP averages the
gradients) and all ranks cluster the same latents identically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from c2p_stream.checkpoint import AttributeHead
from c2p_stream.clusters import describe_clusters
from c2p_stream.config import TrainConfig
from c2p_stream.models import AffectNet, AffectNetDims, SpeechCNN, SpeechCNNDims
from trainer.clustering import align_ids, fit_kmeans

METHODS = ("c2p", "acc", "aac")
_EVAL_BATCH = 256


@dataclass
class TrainedHead:
    head: AttributeHead
    history: list[dict]  # one dict per epoch: loss, affect_loss, speech_loss, speech_acc, inertia, seconds


def train_head(
    attribute: str,
    method: str,
    features: np.ndarray,
    contours: np.ndarray,
    *,
    k: int,
    config: TrainConfig,
    speech_preset: str,
    state_dir: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> TrainedHead:
    """Train one attribute's model on (N, 99, D) features and (N, 50) contours."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if len(features) != len(contours):
        raise ValueError(f"{len(features)} feature windows but {len(contours)} contour windows")
    torch.manual_seed(config.seed)
    contours = np.ascontiguousarray(contours, dtype=np.float32)
    speech = SpeechCNN(SpeechCNNDims(n_frames=features.shape[1], dim=features.shape[2], k=k, preset=speech_preset))
    speech.set_feature_stats(*feature_stats(features))
    affect = AffectNet(AffectNetDims(k=k)) if method == "c2p" else None
    modules = [m for m in (speech, affect) if m is not None]
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=config.lr)
    fixed = None if method == "c2p" else fit_kmeans(_baseline_points(method, contours), k, seed=config.seed)
    centroids = None if fixed is None else fixed.centroids
    history: list[dict] = []
    labels = None
    if resume and state_dir is not None and (state := _load_latest_state(state_dir, log)) is not None:
        speech.load_state_dict(state["speech"])
        if affect is not None:
            affect.load_state_dict(state["affect"])
        optimizer.load_state_dict(state["optimizer"])
        centroids, labels = state["centroids"].numpy(), state["labels"].numpy()
        history = json.loads(state["history"])
        log(f"{attribute}/{method}: resumed after epoch {len(history)}")
    speech_ddp, affect_ddp = _maybe_ddp(speech), _maybe_ddp(affect)
    contours_t = torch.from_numpy(contours)

    for epoch in range(len(history) + 1, config.max_epochs + 1):
        if _early_stop(history, config):
            break
        tick = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)
        if affect is not None:
            clustering = _recluster(affect, contours_t, k, centroids, labels, config.seed)
            centroids, labels, inertia = clustering.centroids, clustering.labels, clustering.inertia
        else:
            labels, inertia = fixed.labels, fixed.inertia
        stats = _run_epoch(speech_ddp, affect_ddp, features, contours_t, labels, centroids, optimizer, config, epoch)
        history.append({"epoch": epoch, **stats, "inertia": inertia, "seconds": time.perf_counter() - tick})
        log(f"{attribute}/{method} epoch {epoch}: loss {stats['loss']:.4f} speech acc {stats['speech_acc']:.3f}")
        if state_dir is not None and _is_main():
            _save_state(state_dir, epoch, speech, affect, optimizer, centroids, labels, history)

    if affect is not None:  # final assignment with the final AffectNet, as one more clustering step
        clustering = _recluster(affect, contours_t, k, centroids, labels, config.seed)
        centroids, labels = clustering.centroids, clustering.labels
    else:
        labels = fixed.labels
    head = AttributeHead(attribute, method, speech.eval(), centroids, describe_clusters(contours, labels, k),
                         affect.eval() if affect is not None else None)
    return TrainedHead(head, history)


def predict_logits(speech: SpeechCNN, features: np.ndarray, batch_size: int = _EVAL_BATCH) -> np.ndarray:
    """(N, 99, D) features -> (N, k) float32 logits, in batches."""
    speech.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(np.asarray(features[start:start + batch_size], dtype=np.float32))
            outputs.append(speech(batch).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, speech.dims.k), np.float32)


def feature_stats(features: np.ndarray, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (D,) over all frames of (N, 99, D) features, in chunks."""
    total = np.zeros(features.shape[2]), np.zeros(features.shape[2])
    for start in range(0, len(features), chunk):
        block = np.asarray(features[start:start + chunk], dtype=np.float64).reshape(-1, features.shape[2])
        total = total[0] + block.sum(axis=0), total[1] + (block**2).sum(axis=0)
    count = features.shape[0] * features.shape[1]
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def _baseline_points(method: str, contours: np.ndarray) -> np.ndarray:
    return contours if method == "acc" else contours.mean(axis=1, keepdims=True)


def _recluster(affect, contours, k, centroids, previous_labels, seed):
    """Algorithm 1 lines 4-5, with cluster ids kept consistent with the previous epoch."""
    clustering = fit_kmeans(_latents(affect, contours), k, init=centroids, seed=seed)
    return clustering if previous_labels is None else align_ids(clustering, previous_labels)


def _latents(affect: AffectNet, contours: torch.Tensor) -> np.ndarray:
    affect.eval()
    with torch.no_grad():
        return affect.encode(contours).numpy()


def _run_epoch(speech, affect, features, contours, labels, centroids, optimizer, config, epoch) -> dict:
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(labels))
    labels_t, centroids_t = torch.from_numpy(labels), torch.from_numpy(np.asarray(centroids, np.float32))
    for module in (speech, affect):
        if module is not None:
            module.train()
    sums = {"loss": 0.0, "affect_loss": 0.0, "speech_loss": 0.0, "correct": 0.0, "n": 0}
    for start in range(0, len(order), config.batch_size):
        index = np.sort(order[start:start + config.batch_size][rank::world])
        x = torch.from_numpy(np.asarray(features[index], dtype=np.float32))
        y = labels_t[index]
        speech_logits = speech(x)
        if affect is None:
            affect_loss = torch.zeros(())
            speech_loss = F.cross_entropy(speech_logits, y)
        else:
            affect_logits, latent = affect(contours[index])
            affect_loss = F.cross_entropy(affect_logits, y)
            if config.coupling:
                speech_loss = _coupled_speech_loss(speech_logits, latent, centroids_t)
            else:
                speech_loss = F.cross_entropy(speech_logits, y)
        loss = config.alpha * affect_loss + (1 - config.alpha) * speech_loss if affect is not None else speech_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(index)
        sums["loss"] += loss.item() * n
        sums["affect_loss"] += affect_loss.item() * n
        sums["speech_loss"] += speech_loss.item() * n
        sums["correct"] += (speech_logits.argmax(1) == y).sum().item()
        sums["n"] += n
    totals = torch.tensor([sums["loss"], sums["affect_loss"], sums["speech_loss"], sums["correct"], sums["n"]], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss, affect_loss, speech_loss, correct, n = totals.tolist()
    return {"loss": loss / n, "affect_loss": affect_loss / n, "speech_loss": speech_loss / n, "speech_acc": correct / n}


def _coupled_speech_loss(speech_logits: torch.Tensor, latent: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """CE between SpeechCNN's prediction and a soft assignment of the live latent to the centroids.

    The temperature is the mean squared latent-centroid distance, so the assignment is soft
    but not uniform at any latent scale; gradients reach both networks. Alone, this term is
    minimised by moving every latent into one cluster (trivially predictable); as in SCAN/IIC,
    the KL divergence of the batch's mean assignment from uniform is added to rule that out.
    """
    distances = torch.cdist(latent, centroids) ** 2
    soft = F.softmax(-distances / distances.mean().detach().clamp_min(1e-6), dim=1)
    agreement = -(soft * F.log_softmax(speech_logits, dim=1)).sum(dim=1).mean()
    marginal = soft.mean(dim=0).clamp_min(1e-8)
    return agreement + (marginal * (marginal * len(marginal)).log()).sum()


def _early_stop(history: list[dict], config: TrainConfig) -> bool:
    """True when the epoch loss has not dropped by a fraction min_delta for `patience` epochs."""
    best, stale = float("inf"), 0
    for record in history:
        if record["loss"] < best * (1 - config.min_delta):
            best, stale = record["loss"], 0
        else:
            stale += 1
    return stale >= config.patience


def _maybe_ddp(module):
    if module is None or not dist.is_initialized():
        return module
    return DistributedDataParallel(module)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _save_state(state_dir: Path, epoch: int, speech, affect, optimizer, centroids, labels, history) -> None:
    """Write epoch-NNN.pt atomically (temp file, fsync, rename) and keep the last two."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "speech": speech.state_dict(),
        "affect": affect.state_dict() if affect is not None else {},
        "optimizer": optimizer.state_dict(),
        "centroids": torch.as_tensor(np.asarray(centroids, np.float32)),
        "labels": torch.as_tensor(np.asarray(labels, np.int64)),
        "history": json.dumps(history),
    }
    final = state_dir / f"epoch-{epoch:03d}.pt"
    tmp = state_dir / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    for old in sorted(state_dir.glob("epoch-*.pt"))[:-2]:
        old.unlink()


def _load_latest_state(state_dir: Path, log: Callable[[str], None]) -> dict | None:
    """The newest epoch state that loads; unreadable ones are reported and skipped.

    Temp files of saves cut short by a kill are removed here: they never hold a used state.
    """
    for stale in state_dir.glob(".epoch-*.pt.tmp-*"):
        stale.unlink(missing_ok=True)
    for path in sorted(state_dir.glob("epoch-*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means this file is unusable
            log(f"{path}: unreadable training state ({type(err).__name__}); trying an older one")
    return None
