"""The checkpoint: a directory with `model.safetensors` and `checkpoint.json`.

`checkpoint.json` holds everything needed to run the models: the front-end spec, the
window/hop/sample rates, and per attribute the method, k, model dims, and each cluster's
name, mean and std contour. The weights' sha256 is recorded there too, and the sha256 of
the manifest's own canonical JSON, so a truncated or bit-flipped file of either kind is
refused (a flipped digit in a prototype contour would still be valid JSON). Nothing is
unpickled: weights are safetensors, the rest JSON.
A checkpoint directory is written beside its final place and renamed into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from c2p_stream import audio
from c2p_stream.clusters import ClusterInfo
from c2p_stream.config import FrontEndConfig
from c2p_stream.models import AffectNet, SpeechCNN, SpeechCNNDims, affect_dims_from_dict

FORMAT = "c2p-checkpoint"
FORMAT_VERSION = 2  # 2: checkpoint.json carries its own checksum
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "checkpoint.json"
METHODS = ("c2p", "acc", "aac")
_FRONT_END_MATCH_KEYS = ("kind", "layer", "n_mels", "dim")  # the model path may move; these may not


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the front end it is given."""


@dataclass
class AttributeHead:
    """One attribute's model: the SpeechCNN predictor and the clusters it predicts.

    `centroids` live in the method's clustering space: AffectNet latents (c2p, (k, 8)),
    raw contours (acc, (k, 50)) or contour means (aac, (k, 1)).
    """

    attribute: str
    method: str
    speech: SpeechCNN
    centroids: np.ndarray
    clusters: list[ClusterInfo]
    affect: AffectNet | None = None

    @property
    def k(self) -> int:
        return len(self.clusters)

    def embed(self, contours: np.ndarray) -> np.ndarray:
        """(N, 50) contours -> (N, d) points in this method's clustering space."""
        contours = np.asarray(contours, dtype=np.float32)
        if self.method == "aac":
            return contours.mean(axis=1, keepdims=True)
        if self.method == "acc":
            return contours
        self.affect.eval()
        with torch.no_grad():
            return self.affect.encode(torch.from_numpy(contours)).numpy()

    def reference_labels(self, contours: np.ndarray) -> np.ndarray:
        """(N, 50) -> (N,) the cluster each contour falls in (nearest centroid)."""
        points = self.embed(contours)
        distances = ((points[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)


@dataclass
class Checkpoint:
    front_end: dict  # the FrontEnd.spec it was trained on
    heads: dict[str, AttributeHead]
    info: dict = field(default_factory=dict)  # provenance: training config, metrics summary

    def front_end_config(self, **overrides) -> FrontEndConfig:
        """A FrontEndConfig that rebuilds the training front end (device/dtype may be overridden)."""
        keys = ("kind", "model", "layer", "n_mels")
        return FrontEndConfig(**{k: self.front_end[k] for k in keys if k in self.front_end}, **overrides)

    def check_front_end(self, spec: dict) -> None:
        """Raise CheckpointError unless `spec` produces the features this checkpoint was trained on."""
        for key in _FRONT_END_MATCH_KEYS:
            if self.front_end.get(key) != spec.get(key):
                raise CheckpointError(
                    f"front end mismatch: checkpoint expects {key}={self.front_end.get(key)!r}, "
                    f"the front end gives {key}={spec.get(key)!r}"
                )

    def describe(self) -> dict:
        """The model description sent to feed clients: front end and clusters per attribute."""
        return {
            "front_end": self.front_end,
            "attributes": {
                name: {"method": head.method, "k": head.k, "clusters": [c.to_dict() for c in head.clusters]}
                for name, head in self.heads.items()
            },
            **{k: v for k, v in self.info.items() if k in ("name", "created")},
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write `checkpoint` to directory `path` atomically (a reader never sees a partial one)."""
    path = Path(path)
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a save that was killed
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    tensors, heads = {}, {}
    for name, head in checkpoint.heads.items():
        if head.method not in METHODS:
            raise ValueError(f"unknown method {head.method!r} for {name}")
        tensors.update({f"{name}.speech.{k}": v for k, v in head.speech.state_dict().items()})
        if head.affect is not None:
            tensors.update({f"{name}.affect.{k}": v for k, v in head.affect.state_dict().items()})
        tensors[f"{name}.centroids"] = torch.as_tensor(np.asarray(head.centroids, dtype=np.float32))
        heads[name] = {
            "method": head.method,
            "k": head.k,
            "speech_dims": vars(head.speech.dims),
            "affect_dims": vars(head.affect.dims) if head.affect is not None else None,
            "clusters": [c.to_dict() for c in head.clusters],
        }
    weights = tmp / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, weights)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "weights_sha256": _sha256(weights),
        "front_end": checkpoint.front_end,
        "audio": {
            "sample_rate_hz": audio.SAMPLE_RATE_HZ, "window_s": audio.WINDOW_S, "hop_s": audio.HOP_S,
            "contour_rate_hz": audio.CONTOUR_RATE_HZ,
        },
        "heads": heads,
        "info": checkpoint.info,
    }
    manifest["manifest_sha256"] = _manifest_sha256(manifest)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, allow_nan=True))
    for file in tmp.iterdir():
        _fsync(file)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint directory onto the CPU; every failure is a CheckpointError."""
    path = Path(path)
    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    for file in (manifest_path, weights_path):
        if not file.is_file():
            raise CheckpointError(f"{path}: not a c2p checkpoint ({file.name} is missing)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: format is not {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: version {manifest.get('version')!r}, expected {FORMAT_VERSION}")
    if manifest.get("manifest_sha256") != _manifest_sha256(manifest):
        raise CheckpointError(f"{manifest_path}: checksum mismatch (file is corrupt or was modified)")
    if _sha256(weights_path) != manifest.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: checksum mismatch (file is corrupt or was modified)")
    try:
        tensors = load_file(weights_path)
        heads = {name: _load_head(name, spec, tensors) for name, spec in manifest["heads"].items()}
        return Checkpoint(front_end=manifest["front_end"], heads=heads, info=manifest.get("info", {}))
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({type(err).__name__}: {err})") from None


def _load_head(name: str, spec: dict, tensors: dict[str, torch.Tensor]) -> AttributeHead:
    def state(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    speech = SpeechCNN(SpeechCNNDims(**spec["speech_dims"]))
    speech.load_state_dict(state(f"{name}.speech."))
    affect = None
    if spec["affect_dims"] is not None:
        affect = AffectNet(affect_dims_from_dict(spec["affect_dims"]))
        affect.load_state_dict(state(f"{name}.affect."))
        affect.eval()
    clusters = [ClusterInfo(**c) for c in spec["clusters"]]
    centroids = tensors[f"{name}.centroids"].numpy()
    if len(clusters) != spec["k"] or centroids.shape[0] != spec["k"] or speech.dims.k != spec["k"]:
        raise ValueError(f"{name}: k={spec['k']} does not match its clusters, centroids or SpeechCNN")
    return AttributeHead(name, spec["method"], speech.eval(), centroids, clusters, affect)


def _manifest_sha256(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), its own checksum left out."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(file: Path) -> None:
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())
