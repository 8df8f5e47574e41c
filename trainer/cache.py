"""On-disk feature cache: the front end runs once per (corpus, front end, split), fp16, memory-mapped.

An entry is ``<cache_dir>/<key[:16]>/{features.npy, meta.json}``. The key is the sha256 of
the canonical JSON of the key material: corpus identity, split, front-end spec (computed
from the config, so a warm run never loads Wav2Vec2), a stamp of the weight files, the
compute dtype, the window count of every recording and the format version. meta.json holds
the material, shape, dtype, file size and a blake2b checksum of features.npy; a warm run
checks all of them before memory-mapping the file.

Writes are atomic: features stream into a temp file in the entry folder
(``np.lib.format.open_memmap``), which is fsynced and ``os.replace``d into place, then
meta.json is written the same way. meta.json is removed before a rebuild and written last,
so a crash at any point leaves no entry that validates; its stray ``.*.tmp`` files go at the next build.

Under torchrun (``torch.distributed`` initialised, any backend) rank r extracts windows
``r::world_size`` into its own shard; rank 0 assembles the entry; then every rank maps it.
The cache folder must be shared by all ranks (one machine, or a shared filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from c2p_stream.audio import frame_pair
from c2p_stream.config import FrontEndConfig
from c2p_stream.features import N_FRAMES, build_front_end, front_end_spec, resolve_device, resolve_dtype, resolve_model_dir
from trainer.corpora import Recording

FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 24  # 16 MiB: checksum reads and shard copies


def cached_features(
    recordings: list[Recording],
    split: str,
    front_end_config: FrontEndConfig,
    corpus_id: dict,
    cache_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Features of every window of `recordings`: (N, 99, D) float16, a read-only np.memmap.

    Rows follow ``window_recordings(recordings)``. Built on a miss (or a corrupt/stale entry,
    reported through `log`, default: a line on stderr), else mapped without building the front end.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    log = (log or _stderr_log) if rank == 0 else (lambda _msg: None)
    views = [frame_pair(r.audio, next(iter(r.contours.values())))[0] for r in recordings]
    n_windows = sum(len(v) for v in views)
    if n_windows == 0:
        raise ValueError(f"split {split!r}: no complete 2 s windows to extract features from")
    spec = front_end_spec(front_end_config)
    material = {
        "format": FORMAT_VERSION,
        "corpus": corpus_id,
        "split": split,
        "front_end": spec,
        "weights": _weights_stamp(front_end_config),
        "compute_dtype": _compute_dtype(front_end_config),
        "windows": [[r.name, len(v)] for r, v in zip(recordings, views)],
    }
    key = hashlib.sha256(_canonical(material).encode()).hexdigest()
    entry = Path(cache_dir).expanduser() / key[:16]
    shape = (n_windows, N_FRAMES, spec["dim"])

    if world > 1:  # every rank must agree on the entry (same inputs, same cache folder)
        keys = [None] * world
        dist.all_gather_object(keys, key)
        if any(k != key for k in keys):
            raise RuntimeError(f"ranks disagree on the feature cache key (different inputs?): {keys}")
    if rank == 0:
        problem = _validate(entry, key, material, shape)
        if problem is None:
            decision = ["hit", None]
        else:
            if problem != "missing":
                log(f"feature cache: {entry}: {problem}; rebuilding")
            entry.mkdir(parents=True, exist_ok=True)
            (entry / "meta.json").unlink(missing_ok=True)  # from now on the entry cannot validate
            for stale in entry.glob(".*.tmp"):  # left by a killed build; may be gigabytes
                stale.unlink(missing_ok=True)
            decision = ["miss", uuid.uuid4().hex]
    else:
        decision = [None, None]
    if world > 1:
        dist.broadcast_object_list(decision, src=0)
    status, nonce = decision  # nonce: names this build's temp files
    if status == "miss":
        log(f"feature cache: extracting {n_windows} {split} windows ({spec['kind']}) into {entry}")
        _build(entry, views, front_end_config, spec, shape, key, material, nonce, rank, world, progress)
    return np.load(entry / "features.npy", mmap_mode="r")


# ----------------------------------------------------------------------------- building


def _build(entry, views, config, spec, shape, key, material, nonce, rank, world, progress) -> None:
    """Extract this rank's windows, then (rank 0) assemble and publish the entry atomically."""
    final_tmp = entry / f".features.{nonce}.npy.tmp"
    shard = final_tmp if world == 1 else entry / f".shard-{rank}-of-{world}.{nonce}.npy.tmp"
    mine = np.arange(rank, shape[0], world)
    error = None
    try:
        _extract_into(shard, mine, views, config, spec, shape, material["split"], progress and rank == 0)
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks know
        error = err
    if world > 1:
        errors = [None] * world
        dist.all_gather_object(errors, None if error is None else f"rank {rank}: {error!r}")
        failed = [e for e in errors if e is not None]
        if error is None and failed:
            error = RuntimeError(f"feature extraction failed on another rank: {failed[0]}")
    if error is None and rank == 0:
        try:
            if world > 1:
                _assemble(final_tmp, entry, shape, world, nonce)
            _publish(final_tmp, entry, key, material, shape)
        except BaseException as err:  # noqa: BLE001
            error = err
    if world > 1:
        status = [None if error is None else repr(error)]
        dist.broadcast_object_list(status, src=0)  # also the barrier before every rank maps the entry
        if error is None and status[0] is not None:
            error = RuntimeError(f"assembling the feature cache failed on rank 0: {status[0]}")
        shard.unlink(missing_ok=True)
    final_tmp.unlink(missing_ok=True)
    if error is not None:
        raise error


def _extract_into(path, indices, views, config, spec, shape, split, show_progress) -> None:
    """Front-end features of global windows `indices` -> a new .npy at `path`, (len(indices), 99, D) fp16."""
    if len(indices) == 0:
        return
    front_end = build_front_end(config)
    if front_end.spec != spec:
        raise RuntimeError(f"front_end_spec() predicted {spec} but the front end says {front_end.spec}: update it")
    starts = np.cumsum([0] + [len(v) for v in views])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(indices), *shape[1:]))
    step = config.batch_size * 4  # a few front-end batches per progress update
    with _progress_bar(len(indices), show_progress, f"{split} features") as advance:
        for lo in range(0, len(indices), step):
            chunk = indices[lo : lo + step]
            recs = np.searchsorted(starts, chunk, side="right") - 1
            batch = np.stack([views[r][g - starts[r]] for r, g in zip(recs, chunk)])
            features = front_end.extract(batch).to(torch.float16)
            if not torch.isfinite(features).all():
                where = f"windows {chunk[0]}..{chunk[-1]}"
                raise FloatingPointError(f"front end gave non-finite features (float16 overflow?) in {where}")
            out[lo : lo + len(chunk)] = features.cpu().numpy()
            advance(len(chunk))
    out.flush()
    del out
    _fsync(path)


def _assemble(final_tmp: Path, entry: Path, shape, world: int, nonce: str) -> None:
    """Interleave the rank shards (rank r holds rows r::world) into one temp file."""
    out = np.lib.format.open_memmap(final_tmp, mode="w+", dtype=np.float16, shape=shape)
    rows = max(1, _CHUNK_BYTES // (shape[1] * shape[2] * 2))
    for r in range(min(world, shape[0])):
        part = np.load(entry / f".shard-{r}-of-{world}.{nonce}.npy.tmp", mmap_mode="r")
        target = out[r::world]
        if part.shape != target.shape:
            raise RuntimeError(f"shard of rank {r} has shape {part.shape}, expected {target.shape}")
        for lo in range(0, len(part), rows):
            target[lo : lo + rows] = part[lo : lo + rows]
        del part
    out.flush()
    del out
    _fsync(final_tmp)


def _publish(tmp: Path, entry: Path, key: str, material: dict, shape) -> None:
    """Move the finished temp file into place, then write meta.json (last, atomically)."""
    features = entry / "features.npy"
    checksum = _blake2b(tmp)
    size = tmp.stat().st_size
    os.replace(tmp, features)
    _fsync_dir(entry)
    meta = {
        "key": key,
        "material": material,
        "shape": list(shape),
        "dtype": "float16",
        "file_size": size,
        "blake2b": checksum,
    }
    fd, meta_tmp = tempfile.mkstemp(dir=entry, prefix=".meta.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(meta_tmp, entry / "meta.json")
    finally:
        Path(meta_tmp).unlink(missing_ok=True)
    _fsync_dir(entry)


# ----------------------------------------------------------------------------- validation and helpers


def _validate(entry: Path, key: str, material: dict, shape) -> str | None:
    """None if the entry is complete and intact, else why not ('missing' for a plain cold start)."""
    meta_path, features = entry / "meta.json", entry / "features.npy"
    if not meta_path.exists():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        stored = (meta["key"], meta["shape"], meta["dtype"], meta["file_size"], meta["blake2b"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable meta.json ({type(err).__name__})"
    if stored[0] != key or _canonical(meta.get("material")) != _canonical(material):
        return "stale entry (meta.json describes other inputs)"
    if stored[1] != list(shape) or stored[2] != "float16":
        return f"meta.json says shape {stored[1]} {stored[2]}, expected {list(shape)} float16"
    if not features.is_file():
        return "features.npy is missing"
    size = features.stat().st_size
    if size != stored[3]:
        return f"features.npy has {size} bytes, meta.json says {stored[3]} (truncated?)"
    if _blake2b(features) != stored[4]:
        return "features.npy fails its checksum (corrupt)"
    try:
        array = np.load(features, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"features.npy unreadable ({err})"
    if array.shape != tuple(shape) or array.dtype != np.float16:
        return f"features.npy holds {array.shape} {array.dtype}, expected {tuple(shape)} float16"
    return None


def _weights_stamp(config: FrontEndConfig) -> list:
    """[name, size, mtime_ns] of the model folder's files, so re-saved weights are a new entry."""
    if config.kind != "wav2vec2":
        return []
    model_dir = Path(resolve_model_dir(config.model)[0])
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _compute_dtype(config: FrontEndConfig) -> str:
    """The dtype the front end computes in: fp32, bf16 and fp16 features differ."""
    if config.kind == "logmel" and config.dtype == "auto":
        return "float32"
    return str(resolve_dtype(config.dtype, resolve_device(config.device))).removeprefix("torch.")


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _blake2b(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _stderr_log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _progress_bar(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None]]:
    """Yields advance(n_windows); a Rich bar on stderr when enabled and stderr is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("windows"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
