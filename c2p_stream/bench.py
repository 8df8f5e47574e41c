"""Benchmark: the optimised engine path against a naive reference, on the same audio.

    python -m c2p_stream.bench                      # CPU: reference vs optimised, JSON on stdout
    python -m c2p_stream.bench --levers             # + each speed lever measured on its own
    python -m c2p_stream.bench --device cuda --streams 1,64,256,512,1024 --training

One run builds (or reuses, in ``--cache-dir``) a full-size Wav2Vec2-Large with random weights
(hidden 1024, 24 blocks, 16 heads: 1.26 GB, written once), two paper-size SpeechCNN heads
(arousal, valence; Table 1, k = 4, random weights) and a Checkpoint in memory, synthesises a
speech session (``--seconds``, 20 s -> 19 hops of 1 s over 2 s windows), and labels every hop
twice:

* reference: eager fp32, the full 24-block model with ``output_hidden_states=True`` taking
  ``hidden_states[15]``, one front-end pass per head (two per hop), fp32 heads, inputs
  normalised by transformers' Wav2Vec2FeatureExtractor, ``torch.no_grad``;
* optimised: the real ``Engine.label_window`` per hop over ``features.Wav2Vec2Frontend``, as
  the CLI builds them (blocks <= 15 only, one pass shared by both heads, bf16 on CPUs with
  native bf16 / fp16 on CUDA, channels-last convs, ``torch.inference_mode``); on CUDA the
  benchmark adds what the CLI does not set yet: ``features.CudaGraphFrontend`` around the front
  end (``--no-cuda-graphs``) and ``torch.backends.cudnn.benchmark`` (``--no-cudnn-benchmark``).
  fp32 on CUDA is not bit-exact either: cuDNN convs use TF32 by default (torch's setting).

Per path the JSON gives per-hop latency p50/p99 (ms; with 19 hops p99 is about the maximum),
the real-time factor (mean processing time per hop / 1 s hop; p99 too), peak memory (CPU: the
process's resident-set high-water mark, reset per path through /proc/self/clear_refs; CUDA:
``torch.cuda.max_memory_allocated`` over the timed hops, the warm-up's peak (cuDNN autotuning,
graph capture) apart) and the ratio reference/optimised. Agreement: the labels of both paths
per hop and attribute (pass: equal on >= 99% of hops) and the largest absolute difference of
any class probability (pass: <= ``--tolerance``, default 0.05 for bf16/fp16 and 1e-3 for fp32).

Random heads give near-uniform probabilities (~1/k): labels flip on noise and a probability
tolerance says nothing. So the heads are calibrated first (``calibrate_heads``): their
feature standardisation gets the statistics of a separate calibration session (seed + 1)
through the exact fp32 front end, every conv/FC layer is scaled to unit output std on it
(LSUV-style; without it activations shrink ~1.5x per layer and fp16 works in its subnormal
range), and the last FC is shifted and scaled so that the logits have per-class mean 0 and std
``--logit-std`` (default 2) there. The JSON reports the resulting label histogram, mean top
probability and top-2 margin, so one can see the labels vary and are not coin flips, and a
noise floor: the reference itself on the audio after a 16-bit PCM round trip, i.e. how far
these random heads move under an inaudible input change. Random heads stay a proxy (their
sensitivity to small feature changes is not that of trained heads); ``--checkpoint`` swaps in
trained heads, and with ``--model-dir`` holding the real weights that is the agreement check
that counts. VAD is off (threshold -1000 dBFS), so both paths label every hop.

``--levers`` measures the levers one by one on the same hops (a cumulative ladder from the
reference: truncation to block 15, one shared pass, inference_mode, bf16/fp16 cast (and
autocast as the alternative), channels-last heads, the conv encoder as channels-last 2-D
convs, the low-precision positional conv, CUDA graphs), then alternatives on top of the final
settings: both heads fused into grouped convs or run in parallel with torch.jit.fork, 1 vs 2
intra-op threads, and reuse of the conv encoder's frames for the second that overlaps the
previous window (Wav2Vec2-Large-lv60 normalises each 2 s window to zero mean and unit
variance first, so reuse is not exact: the difference is measured and compared with the
tolerance). Each step says whether the engine uses it (``in_engine``).

``--streams N[,N...]`` runs N concurrent streams whose windows are batched into one
front-end pass per hop (``Engine.label_windows``, at most ``--max-batch`` windows a pass) and
reports per-hop p50/p99 of the batch; a stream count holds in real time when p99 stays under
``--stream-budget-ms`` (default 500 ms of the 1 s hop: a 2x margin). The sweep stops at the
first count that does not. ``--training`` adds feature-extraction throughput (front end alone,
windows/s at batch 16 and 64) and the time of one Algorithm 1 epoch on cached features
(``trainer.algorithm.train_head``, CPU as the trainer runs) for the demo SpeechCNN (log-mel 64,
``configs/demo.yaml``: 8 x 120 s sessions, batch 32) and for the paper-size SpeechCNN on
``--train-windows`` random Wav2Vec2-size features (batch 256).

dtype: ``auto`` is bf16 on a CPU with native bf16 (else fp32) and fp16 on CUDA; fp16 on CPU
is refused with an error (oneDNN has no fast fp16 path on most CPUs); bf16 on a CPU without
native bf16 runs, with a warning, emulated and slow. Threads: ``--threads`` (default torch's,
the number of physical cores) and ``--interop-threads`` are set before any work; nothing is
set at import time. Progress goes to stderr, the JSON alone to stdout (and ``--out`` FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from c2p_stream import features as fe_mod
from c2p_stream.audio import (
    HOP_S,
    HOP_SAMPLES,
    SAMPLE_RATE_HZ,
    WINDOW_SAMPLES,
    frame_audio,
)
from c2p_stream.checkpoint import AttributeHead, Checkpoint
from c2p_stream.clusters import describe_clusters
from c2p_stream.engine import Engine
from c2p_stream.features import (
    LARGE_LV60_ARCH,
    Wav2Vec2Frontend,
    cpu_supports_bf16,
    save_random_wav2vec2,
)
from c2p_stream.models import SpeechCNN, SpeechCNNDims

BENCH_FORMAT_VERSION = 1
ATTRIBUTES = ("arousal", "valence")
VAD_OFF_DBFS = -1000.0  # every window counts as speech: both paths label every hop
TARGET_CPU_RTF = 0.3
TARGET_GPU_P50_MS = 10.0
TARGET_STREAMS = 256
DEFAULT_CACHE_DIR = "~/.cache/c2p-stream/bench"
CALIBRATION_WINDOWS = 16  # windows of the calibration session (seed + 1)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    """Everything one benchmark run needs; the CLI flags map 1:1 onto these fields."""

    device: str = "cpu"
    dtype: str = "auto"
    seconds: float = 20.0
    seed: int = 0
    model_dir: str | None = None  # None: a random Wav2Vec2-Large in cache_dir (built once)
    checkpoint: str | None = None  # trained heads instead of calibrated random ones
    cache_dir: str = DEFAULT_CACHE_DIR
    layer: int = 15
    k: int = 4
    head_preset: str = "paper"
    logit_std: float = 2.0
    tolerance: float | None = None  # None: 0.05 for bf16/fp16, 1e-3 for fp32
    threads: int | None = None
    interop_threads: int | None = None
    warmup: int = 2
    reference: bool = True
    cuda_graphs: bool | None = None  # None: on for CUDA
    cudnn_benchmark: bool | None = None  # None: on for CUDA (optimised path only)
    levers: bool = False
    lever_hops: int = 10
    streams: list[int] = field(default_factory=list)
    stream_hops: int = 5
    stream_budget_ms: float = 500.0
    max_batch: int = 256
    training: bool = False
    train_windows: int = 512
    demo_windows: int = 8 * (120 - 1)  # configs/demo.yaml: 8 training sessions of 120 s
    extract_batches: list[int] = field(default_factory=lambda: [16, 64])


# ---------------------------------------------------------------- small measurements

def summarize(times_s: list[float], hop_s: float = HOP_S) -> dict[str, float]:
    """Per-hop processing times (s) -> p50/p99/mean/max in ms and real-time factors."""
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"hops": 0}
    return {
        "hops": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
        "rtf": round(float(ms.mean()) / (hop_s * 1000.0), 4),
        "rtf_p99": round(float(np.percentile(ms, 99)) / (hop_s * 1000.0), 4),
    }


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class PeakMemory:
    """Peak memory of a phase: RSS high-water mark (reset on entry where Linux allows) and,
    on CUDA, torch.cuda.max_memory_allocated. `result` holds MB figures after exit."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (reset per phase)"
        except OSError:
            self.method = "ru_maxrss (process lifetime)"
        self.rss_start_kb = _proc_status_kb("VmRSS") or 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.gpu_start = torch.cuda.memory_allocated(self.device)
        return self

    def mark_warm(self) -> None:
        """End of warm-up: the CUDA peak so far (autotuning workspaces, graph capture) is kept
        apart, and `peak_gpu_mb` covers the steady state from here on."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gpu_setup_peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def __exit__(self, *exc) -> None:
        peak_kb = _proc_status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        if peak_kb is None:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.result = {
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "peak_rss_delta_mb": round((peak_kb - self.rss_start_kb) / 1024, 1),
            "rss_end_mb": round((_proc_status_kb("VmRSS") or 0) / 1024, 1),
            "rss_method": self.method,
        }
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result["peak_gpu_mb"] = round(peak / 2**20, 1)
            self.result["peak_gpu_delta_mb"] = round((peak - self.gpu_start) / 2**20, 1)
            if hasattr(self, "gpu_setup_peak"):
                self.result["peak_gpu_warmup_mb"] = round(self.gpu_setup_peak / 2**20, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_hops(label: Callable[[int, np.ndarray], dict[str, np.ndarray]], windows: np.ndarray,
              warmup: int, device: torch.device, after_warmup: Callable[[], None] | None = None,
              ) -> tuple[list[float], dict[str, np.ndarray]]:
    """Run `label(start_sample, window)` on every window after `warmup` untimed ones.
    -> (per-hop seconds, attribute -> (H, k) probabilities)."""
    for i in range(min(warmup, len(windows))):
        label(i * HOP_SAMPLES, windows[i])
    _sync(device)
    if after_warmup is not None:
        after_warmup()
    times, probs = [], {}
    for i, window in enumerate(windows):
        tick = time.perf_counter()
        out = label(i * HOP_SAMPLES, window)
        _sync(device)
        times.append(time.perf_counter() - tick)
        for name, p in out.items():
            probs.setdefault(name, []).append(np.asarray(p, dtype=np.float64))
    return times, {name: np.stack(p) for name, p in probs.items()}


# ---------------------------------------------------------------- agreement

def check_agreement(reference: dict[str, np.ndarray], optimised: dict[str, np.ndarray],
                    tolerance: float, min_label_agreement: float = 0.99) -> dict[str, Any]:
    """Compare (H, k) probabilities per attribute: label agreement and max |delta prob|."""
    out: dict[str, Any] = {"tolerance": tolerance, "min_label_agreement": min_label_agreement, "attributes": {}}
    worst_labels, worst_prob = 1.0, 0.0
    for name, ref in reference.items():
        opt = optimised[name]
        if ref.shape != opt.shape:
            raise ValueError(f"{name}: reference probabilities {ref.shape} vs optimised {opt.shape}")
        agree = float(np.mean(ref.argmax(1) == opt.argmax(1))) if len(ref) else 1.0
        dprob = float(np.abs(ref - opt).max()) if ref.size else 0.0
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref], 1)
        out["attributes"][name] = {
            "label_agreement": round(agree, 4),
            "max_abs_dprob": round(dprob, 5),
            "reference_label_counts": np.bincount(ref.argmax(1), minlength=ref.shape[1]).tolist(),
            "mean_top_prob": round(float(top2[:, 1].mean()), 3) if len(ref) else None,
            "mean_top2_margin": round(float((top2[:, 1] - top2[:, 0]).mean()), 3) if len(ref) else None,
        }
        worst_labels, worst_prob = min(worst_labels, agree), max(worst_prob, dprob)
    out["label_agreement"] = round(worst_labels, 4)
    out["max_abs_dprob"] = round(worst_prob, 5)
    out["pass"] = bool(worst_labels >= min_label_agreement and worst_prob <= tolerance)
    return out


# ---------------------------------------------------------------- set-up

def resolve_bench_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype of the optimised path; fp16 on CPU is refused (see the module doc)."""
    dtype = fe_mod.resolve_dtype(name, device)
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("float16 on CPU is not supported by the benchmark (oneDNN has no fast fp16 path on "
                         "most CPUs): use --dtype bfloat16 (native on this CPU: "
                         f"{'yes' if cpu_supports_bf16() else 'no'}), float32 or auto")
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_supports_bf16():
        log("warning: this CPU has no native bf16 (AVX512_BF16/AMX): bf16 is emulated and slower than fp32")
    return dtype


def ensure_model(options: BenchOptions) -> Path:
    """The Wav2Vec2 directory: --model-dir, or a random Wav2Vec2-Large built once in the cache."""
    if options.model_dir is not None:
        return Path(options.model_dir).expanduser()
    path = Path(options.cache_dir).expanduser() / f"wav2vec2-large-lv60-random-seed{options.seed}"
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return path
    log(f"building a random Wav2Vec2-Large (1.26 GB) in {path} (once)")
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    save_random_wav2vec2(tmp, seed=options.seed, **LARGE_LV60_ARCH)
    shutil.rmtree(path, ignore_errors=True)  # an incomplete earlier build
    os.replace(tmp, path)
    return path


def model_arch(model_dir: Path) -> dict[str, Any]:
    config = json.loads((model_dir / "config.json").read_text())
    return {key: config.get(key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size", "do_stable_layer_norm")}


def session_windows(seconds: float, seed: int) -> np.ndarray:
    """(H, 32000) float32 windows of a synthetic speech session (numpy only)."""
    from trainer.synthetic import synthesize_session

    return np.array(frame_audio(synthesize_session(seconds, seed=seed).audio), dtype=np.float32)


def build_heads(dim: int, k: int, preset: str, seed: int) -> dict[str, SpeechCNN]:
    """Random fp32 SpeechCNN heads, one per attribute, deterministic in `seed`."""
    heads = {}
    for i, name in enumerate(ATTRIBUTES):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + i)
            heads[name] = SpeechCNN(SpeechCNNDims(n_frames=99, dim=dim, k=k, preset=preset)).eval()
    return heads


@torch.no_grad()
def calibrate_heads(heads: dict[str, SpeechCNN], calibration: torch.Tensor, logit_std: float) -> None:
    """Give random heads the activation scales of trained ones (LSUV-style, gain only).

    `calibration`: (N, 99, D) exact fp32 features of a separate session. Each head gets their
    per-dimension statistics for its input standardisation; then, in forward order, each
    conv and hidden FC layer is scaled (weight and bias by one gain) so that its outputs have
    std 1 over the calibration data, and the last FC is shifted and scaled so that the
    logits have per-class mean 0 and std `logit_std`. Why: PyTorch's default init shrinks
    activations ~1.5x per layer, so a paper head's logits vary ~1e-3 between windows and
    fp16 computes in its subnormal range; rescaling only the logits would blow that rounding
    up (measured: 0.2-0.25 max |dprob| for fp16 heads alone), an artefact no trained model
    has. Centring every layer as well (BatchNorm-like) was tried and rejected: it makes the
    random net chaotic (3% feature noise -> 0.4 |dprob|).
    """
    x0 = calibration.float()
    flat = x0.reshape(-1, x0.shape[-1])
    for head in heads.values():
        head.set_feature_stats(flat.mean(0), flat.std(0))
        x = ((x0 - head.feature_mean) / head.feature_std).unsqueeze(1)  # (N, 1, 99, D)
        layers = [*head.conv, nn.Flatten(), *head.fc]
        last = [m for m in layers if isinstance(m, nn.Linear)][-1]
        for layer in layers:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                out = layer(x)
                if layer is last:
                    mean = out.mean(0)
                    gain = logit_std / float((out - mean).std().clamp_min(1e-12))
                    layer.bias.sub_(mean)
                else:
                    gain = 1.0 / float(out.std().clamp_min(1e-12))
                layer.weight.mul_(gain)
                layer.bias.mul_(gain)
            x = layer(x)


def make_checkpoint(heads: dict[str, SpeechCNN], spec: dict[str, Any], k: int, seed: int) -> Checkpoint:
    """An in-memory Checkpoint around `heads` (deep copies) with random contour clusters."""
    rng = np.random.default_rng(seed)
    contours = rng.standard_normal((40, 50))
    labels = np.arange(len(contours)) % k
    attribute_heads = {
        name: AttributeHead(name, "acc", copy.deepcopy(head), contours[:k].astype(np.float32),
                            describe_clusters(contours, labels, k))
        for name, head in heads.items()
    }
    return Checkpoint(front_end=dict(spec), heads=attribute_heads, info={"name": "bench (random weights)"})


# ---------------------------------------------------------------- the two paths

class ReferencePath:
    """The naive reference: the full fp32 Wav2Vec2 with output_hidden_states, one pass per head."""

    def __init__(self, model_dir: Path, layer: int, device: torch.device):
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        self.layer, self.device = layer, device
        self.model = Wav2Vec2Model.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        try:
            self.processor = Wav2Vec2FeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        except OSError:  # no preprocessor_config.json: the Wav2Vec2 default (normalise)
            self.processor = Wav2Vec2FeatureExtractor(do_normalize=True)
        self.heads: dict[str, SpeechCNN] = {}

    @torch.no_grad()
    def features(self, window: np.ndarray) -> torch.Tensor:
        """(32000,) -> (1, 99, D) fp32 hidden_states[layer]."""
        inputs = self.processor(window, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_values
        return self.model(inputs.to(self.device), output_hidden_states=True).hidden_states[self.layer]

    @torch.no_grad()
    def label_shared(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """As `label`, with one front-end pass for all heads (same values; not timed)."""
        feats = self.features(window)
        return {name: head(feats).float().softmax(-1)[0].cpu().numpy() for name, head in self.heads.items()}

    @torch.no_grad()
    def label(self, start_sample: int, window: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, head in self.heads.items():  # naive: a front-end pass per head
            out[name] = head(self.features(window)).float().softmax(-1)[0].cpu().numpy()
        return out


def engine_label(engine: Engine) -> Callable[[int, np.ndarray], dict[str, np.ndarray]]:
    def label(start_sample: int, window: np.ndarray) -> dict[str, np.ndarray]:
        event = engine.label_window(start_sample, window, engine.clock())
        return {name: np.asarray(getattr(event, name).probabilities) for name in engine.heads}
    return label


def build_front_end(model_dir: Path, options: BenchOptions, device: torch.device, dtype: torch.dtype,
                    batch_size: int = 1, graphs: bool | None = None):
    """The optimised front end (features.Wav2Vec2Frontend), CUDA-graphed where asked."""
    front_end = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=dtype, batch_size=batch_size)
    graphs = (device.type == "cuda") if graphs is None else graphs
    if graphs:
        front_end = fe_mod.CudaGraphFrontend(front_end)
    return front_end


# ---------------------------------------------------------------- levers

class _Pipeline:
    """One lever configuration: window -> attribute -> probabilities, with `passes` front-end
    passes per hop (2: one per head, 1: shared), under no_grad or inference_mode, optionally
    under autocast."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], heads: dict[str, nn.Module],
                 device: torch.device, *, passes: int = 1, inference: bool = True,
                 autocast: torch.dtype | None = None, run_heads: Callable | None = None):
        self.features, self.heads, self.device = features, heads, device
        self.passes, self.inference, self.autocast = passes, inference, autocast
        self.run_heads = run_heads

    def __call__(self, start_sample: int, window: np.ndarray) -> dict[str, np.ndarray]:
        grad = torch.inference_mode() if self.inference else torch.no_grad()
        cast = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
                else contextlib.nullcontext())
        with grad, cast:
            x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None].to(self.device)
            if self.passes == 2:
                logits = {name: head(self.features(x)) for name, head in self.heads.items()}
            else:
                feats = self.features(x)
                logits = (self.run_heads(feats) if self.run_heads is not None
                          else {name: head(feats) for name, head in self.heads.items()})
            return {name: z.float().softmax(-1)[0].cpu().numpy() for name, z in logits.items()}


def _cast_heads(heads: dict[str, SpeechCNN], device: torch.device, dtype: torch.dtype,
                channels_last: bool = False) -> dict[str, SpeechCNN]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {name: copy.deepcopy(h).to(device=device, dtype=dtype, memory_format=fmt).eval() for name, h in heads.items()}


def fuse_heads(heads: dict[str, SpeechCNN]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Both heads' conv stacks as one stack of grouped convs (same values); FCs stay separate."""
    names, parts = list(heads), list(heads.values())
    first = parts[0]
    layers = []
    for modules in zip(*(h.conv for h in parts)):
        if isinstance(modules[0], nn.Conv2d):
            c0, groups = modules[0], (1 if modules[0].in_channels == 1 else len(parts))
            conv = nn.Conv2d(c0.in_channels * (1 if groups == 1 else len(parts)), c0.out_channels * len(parts),
                             c0.kernel_size, padding=c0.padding, groups=groups)
            conv.weight = nn.Parameter(torch.cat([m.weight for m in modules]), requires_grad=False)
            conv.bias = nn.Parameter(torch.cat([m.bias for m in modules]), requires_grad=False)
            layers.append(conv)
        else:
            layers.append(copy.deepcopy(modules[0]))
    stack = nn.Sequential(*layers).to(first.feature_mean.device, first.fc[0].weight.dtype,
                                      memory_format=torch.channels_last).eval()
    same_stats = all(torch.equal(h.feature_mean, first.feature_mean) and torch.equal(h.feature_std, first.feature_std)
                     for h in parts)
    if not same_stats:
        raise ValueError("fused heads need the same feature statistics")

    def run(feats: torch.Tensor) -> dict[str, torch.Tensor]:
        y = stack(((feats - first.feature_mean) / first.feature_std).unsqueeze(1))
        chunks = y.chunk(len(parts), dim=1)
        return {name: h.fc(c.flatten(1)) for name, h, c in zip(names, parts, chunks)}
    return run


def fork_heads(heads: dict[str, SpeechCNN]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The heads run concurrently with torch.jit.fork (inter-op threads)."""
    def run(feats: torch.Tensor) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():  # deprecated in favour of torch.compile, still the eager inter-op API
            warnings.simplefilter("ignore", DeprecationWarning)
            futures = {name: torch.jit.fork(h, feats) for name, h in heads.items()}
            return {name: torch.jit.wait(f) for name, f in futures.items()}
    return run


class ConvReuse:
    """The conv encoder's frames 50..98 of the previous window reused as frames 0..48 of the
    next (a hop is exactly 50 frames of 320 samples, and the conv encoder has no padding);
    only frames 49..98 (samples 15680..32000) are computed. Not exact: each window is
    normalised with its own mean and variance before the conv encoder."""

    def __init__(self, front_end: Wav2Vec2Frontend):
        self.fe, self.model = front_end, front_end.model
        self.previous: tuple[int, torch.Tensor] | None = None
        self.new_from_frame = fe_mod.N_FRAMES - HOP_SAMPLES // fe_mod.FRAME_HOP_SAMPLES  # 49
        self.new_from_sample = self.new_from_frame * fe_mod.FRAME_HOP_SAMPLES  # 15680

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fe.normalize:
            return x
        mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, correction=0)
        return (x - mean) / torch.sqrt(var + fe_mod.NORMALIZE_EPS)

    def rest(self, conv: torch.Tensor) -> torch.Tensor:
        """(1, C, 99) conv-encoder output -> (1, 99, D) block-L features."""
        hidden, _ = self.model.feature_projection(conv.transpose(1, 2))
        return self.model.encoder(hidden).last_hidden_state

    def __call__(self, x: torch.Tensor, start_sample: int) -> torch.Tensor:
        xn = self._normalise(x).to(self.fe.dtype)
        if self.previous is not None and self.previous[0] == start_sample - HOP_SAMPLES:
            fresh = self.model.feature_extractor(xn[:, self.new_from_sample:])  # (1, C, 50)
            conv = torch.cat([self.previous[1][:, :, fe_mod.N_FRAMES - self.new_from_frame:], fresh], dim=2)
        else:
            conv = self.model.feature_extractor(xn)
        self.previous = (start_sample, conv)
        return self.rest(conv)


def measure_levers(model_dir: Path, heads: dict[str, SpeechCNN], windows: np.ndarray, reference: dict[str, Any],
                   options: BenchOptions, device: torch.device, dtype: torch.dtype, tolerance: float) -> dict[str, Any]:
    """The lever ladder (cumulative from the reference), then alternatives on the final settings."""
    hops = windows[: max(1, options.lever_hops)]
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        return _ladder(model_dir, heads, hops, reference, options, device, dtype, tolerance)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _ladder(model_dir: Path, heads: dict[str, SpeechCNN], hops: np.ndarray, reference: dict[str, Any],
            options: BenchOptions, device: torch.device, dtype: torch.dtype, tolerance: float) -> dict[str, Any]:
    ref_probs = {name: p[: len(hops)] for name, p in reference["probs"].items()}
    steps: list[dict[str, Any]] = []
    ref_summary = summarize(reference["times"][: len(hops)])
    steps.append({"lever": "reference", "what": "full 24 blocks fp32, output_hidden_states, a pass per head, no_grad",
                  **_brief(ref_summary), "in_engine": False})
    low = "bf16" if dtype == torch.bfloat16 else ("fp16" if dtype == torch.float16 else "fp32")

    def run(lever: str, what: str, pipeline: Callable, in_engine: bool, baseline: str | None = None,
            ladder: bool = True, reset: Callable[[], None] | None = None) -> dict[str, Any]:
        log(f"lever {lever}")
        if reset is not None:
            reset()
        times, probs = time_hops(pipeline, hops, 1, device)
        if reset is not None:
            reset()
        step = {"lever": lever, "what": what, **_brief(summarize(times)), "in_engine": in_engine,
                **_vs(check_agreement(ref_probs, probs, tolerance))}
        base = baseline or next((s["lever"] for s in reversed(steps) if s.get("ladder", True)), "reference")
        base_mean = next(s["mean_ms"] for s in steps if s["lever"] == base)
        step["vs"] = base
        step["speedup_vs"] = round(base_mean / step["mean_ms"], 3)
        step["speedup_vs_reference"] = round(ref_summary["mean_ms"] / step["mean_ms"], 3)
        step["ladder"] = ladder
        steps.append(step)
        return step

    plain32 = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=torch.float32, optimize=False)
    heads32 = _cast_heads(heads, device, torch.float32)
    run("truncate_15", "only blocks <= 15 (fp32, plain modules), still a pass per head",
        _Pipeline(plain32, heads32, device, passes=2, inference=False), True)
    run("shared_pass", "one front-end pass shared by both heads",
        _Pipeline(plain32, heads32, device, passes=1, inference=False), True)
    run("inference_mode", "torch.inference_mode instead of no_grad",
        _Pipeline(plain32, heads32, device, passes=1, inference=True), True)
    if dtype != torch.float32:
        run(f"{low}_autocast", f"fp32 weights under torch.autocast({low}) (alternative to the cast)",
            _Pipeline(plain32, heads32, device, autocast=dtype), False, ladder=False)
    del plain32, heads32
    gc.collect()
    plain_low = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=dtype, optimize=False)
    if dtype != torch.float32:
        run(f"{low}_cast", f"front end and heads cast to {low}",
            _Pipeline(plain_low, _cast_heads(heads, device, dtype), device), True, baseline="inference_mode")
    heads_cl = _cast_heads(heads, device, dtype, channels_last=True)
    run("heads_channels_last", "SpeechCNN heads in channels-last memory format",
        _Pipeline(plain_low, heads_cl, device), True)
    if device.type == "cpu":
        fe_mod._run_conv_encoder_channels_last(plain_low.model.feature_extractor)
        run("conv_encoder_channels_last", "conv encoder's 1-D convs as channels-last 2-D convs (exact)",
            _Pipeline(plain_low, heads_cl, device), True)
        del plain_low
        gc.collect()
        final_fe = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=dtype)
        pos_low = not isinstance(final_fe.model.encoder.pos_conv_embed.conv, fe_mod._Float32Conv1d)
        if dtype != torch.float32:
            run(f"pos_conv_{low}", f"positional conv in {low} (probe on its weights: "
                f"{'accurate, used' if pos_low else 'inaccurate on this CPU, fp32 kept'})",
                _Pipeline(final_fe, heads_cl, device), pos_low)
    else:
        torch.backends.cudnn.benchmark = True
        run("cudnn_benchmark", "torch.backends.cudnn.benchmark: cuDNN times its conv algorithms once per shape",
            _Pipeline(plain_low, heads_cl, device), options.cudnn_benchmark is not False)
        del plain_low
        gc.collect()
        final_fe = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=dtype)
        graphed = fe_mod.CudaGraphFrontend(final_fe)
        tick = time.perf_counter()
        with torch.inference_mode():
            graphed(torch.zeros(1, WINDOW_SAMPLES, device=device))
        capture_s = time.perf_counter() - tick
        step = run("cuda_graphs", "front end replayed as a CUDA graph per batch size",
                   _Pipeline(graphed, heads_cl, device), bool(options.cuda_graphs is not False))
        step["capture_s"] = round(capture_s, 2)
        final_fe = graphed
    final = next(s["lever"] for s in reversed(steps) if s.get("ladder", True))

    # alternatives on top of the final settings
    run("heads_fused", "both heads' convs fused into grouped convs (one conv stack)",
        _Pipeline(final_fe, heads_cl, device, run_heads=fuse_heads(heads_cl)), False, baseline=final, ladder=False)
    run("heads_fork", "the two heads in parallel with torch.jit.fork (inter-op threads)",
        _Pipeline(final_fe, heads_cl, device, run_heads=fork_heads(heads_cl)), False, baseline=final, ladder=False)
    if device.type == "cpu":
        before = torch.get_num_threads()
        for n in sorted({1, 2, os.cpu_count() or 1} - {before}):
            torch.set_num_threads(n)
            try:
                run(f"threads_{n}", f"torch.set_num_threads({n}) (run: {before})",
                    _Pipeline(final_fe, heads_cl, device), False, baseline=final, ladder=False)
            finally:
                torch.set_num_threads(before)
    if isinstance(final_fe, Wav2Vec2Frontend):
        reuse = ConvReuse(final_fe)
        step = run("conv_encoder_reuse", "conv-encoder frames of the overlapping second reused from the previous window",
                   _ReusePipeline(reuse, heads_cl, device), False, baseline=final, ladder=False,
                   reset=lambda: setattr(reuse, "previous", None))
        exact = next(s for s in steps if s["lever"] == final)
        step["extra_max_abs_dprob_vs_exact_same_dtype"] = _reuse_difference(reuse, final_fe, heads_cl, hops, device)
        step["note"] = (f"not exact: per-window normalisation changes the reused frames; max |dprob| vs reference "
                        f"{step['max_abs_dprob']} against {exact['max_abs_dprob']} without reuse")
    return {"hops": len(hops), "dtype": low, "threads": torch.get_num_threads(), "final": final, "steps": steps}


class _ReusePipeline:
    def __init__(self, reuse: ConvReuse, heads: dict[str, nn.Module], device: torch.device):
        self.reuse, self.heads, self.device = reuse, heads, device

    def __call__(self, start_sample: int, window: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None].to(self.device)
            feats = self.reuse(x, start_sample)
            return {name: h(feats).float().softmax(-1)[0].cpu().numpy() for name, h in self.heads.items()}


def _reuse_difference(reuse: ConvReuse, front_end: Wav2Vec2Frontend, heads: dict[str, nn.Module],
                      hops: np.ndarray, device: torch.device) -> dict[str, float]:
    """Reused vs exactly computed features and probabilities, in the same dtype."""
    reuse.previous = None
    worst_feature, worst_prob = 0.0, 0.0
    with torch.inference_mode():
        for i, window in enumerate(hops):
            x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None].to(device)
            approx, exact = reuse(x, i * HOP_SAMPLES).float(), front_end(x).float()
            worst_feature = max(worst_feature, float((approx - exact).norm() / exact.norm()))
            for h in heads.values():
                dp = (h(approx.to(front_end.dtype)).float().softmax(-1) - h(exact.to(front_end.dtype)).float().softmax(-1))
                worst_prob = max(worst_prob, float(dp.abs().max()))
    reuse.previous = None
    return {"max_feature_rel_diff": round(worst_feature, 5), "max_abs_dprob": round(worst_prob, 5)}


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("p50_ms", "p99_ms", "mean_ms", "rtf") if key in summary}


def _vs(agreement: dict[str, Any]) -> dict[str, Any]:
    return {"label_agreement": agreement["label_agreement"], "max_abs_dprob": agreement["max_abs_dprob"]}


# ---------------------------------------------------------------- streams

def stream_items(windows: np.ndarray, hop: int, n_streams: int) -> list[tuple]:
    """The hop-`hop` window of each of `n_streams` streams: stream j reads the session
    rotated by j hops (distinct audio per stream, no synthesis per stream)."""
    n = len(windows)
    return [(hop * HOP_SAMPLES, windows[(hop + j) % n], 0.0, f"s{j}") for j in range(n_streams)]


def run_streams(engine: Engine, windows: np.ndarray, n_streams: int, hops: int,
                device: torch.device) -> tuple[list[float], list[list[Any]]]:
    """`hops` hops of `n_streams` concurrent streams, each hop one `label_windows` call
    (batched front end). -> (per-hop seconds, per hop the events in stream order)."""
    times, events = [], []
    for hop in range(hops):
        items = stream_items(windows, hop, n_streams)
        tick = time.perf_counter()
        now = engine.clock()
        batch = engine.label_windows([(s, w, now, name) for s, w, _, name in items])
        _sync(device)
        times.append(time.perf_counter() - tick)
        events.append(batch)
    return times, events


def sweep_streams(engine: Engine, windows: np.ndarray, counts: list[int], options: BenchOptions,
                  device: torch.device) -> dict[str, Any]:
    """Per stream count: batched hop p50/p99; the largest count with p99 under the budget."""
    rows, best = [], 0
    base_batch = engine.front_end.batch_size
    for n in sorted(set(counts)):
        engine.front_end.batch_size = max(1, min(n, options.max_batch))
        log(f"streams: {n} (batch {engine.front_end.batch_size})")
        try:
            with PeakMemory(device) as memory:
                run_streams(engine, windows, n, 1, device)  # warm-up (graph capture, kernel choice)
                memory.mark_warm()
                times, _ = run_streams(engine, windows, n, options.stream_hops, device)
        except torch.OutOfMemoryError as err:  # type: ignore[attr-defined]
            rows.append({"streams": n, "error": f"out of memory: {str(err)[:120]}"})
            break
        summary = summarize(times)
        ok = summary["p99_ms"] < options.stream_budget_ms
        rows.append({"streams": n, "batch": engine.front_end.batch_size, **_brief(summary),
                     "per_stream_ms": round(summary["mean_ms"] / n, 3), "real_time": ok, **memory.result})
        if not ok:
            break
        best = n
    engine.front_end.batch_size = base_batch
    return {"budget_p99_ms": options.stream_budget_ms, "hops_per_count": options.stream_hops,
            "max_real_time_streams": best, "rows": rows,
            "note": "largest tested count; the true limit lies between it and the next count"}


# ---------------------------------------------------------------- training throughput

def measure_training(model_dir: Path, options: BenchOptions, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Feature-extraction windows/s, and one Algorithm 1 epoch (train_head, CPU) on cached features."""
    from c2p_stream.config import TrainConfig
    from c2p_stream.features import LogMelFrontend
    from trainer.algorithm import train_head

    out: dict[str, Any] = {"extraction": []}
    front_end = Wav2Vec2Frontend(model_dir, options.layer, device=device, dtype=dtype, batch_size=1)
    rng = np.random.default_rng(options.seed)
    for batch in options.extract_batches:
        front_end.batch_size = batch
        windows = (0.1 * rng.standard_normal((batch, WINDOW_SAMPLES))).astype(np.float32)
        front_end.extract(windows)  # warm-up at this shape (cuDNN autotuning, allocations)
        _sync(device)
        n_batches = 1 if device.type == "cpu" else 5
        tick = time.perf_counter()
        for _ in range(n_batches):
            front_end.extract(windows)
        _sync(device)
        seconds = time.perf_counter() - tick
        out["extraction"].append({"front_end": f"wav2vec2 block {options.layer}", "batch": batch,
                                  "windows_per_s": round(n_batches * batch / seconds, 1)})
        log(f"extraction batch {batch}: {out['extraction'][-1]['windows_per_s']} windows/s")
    del front_end
    logmel = LogMelFrontend(64, device=device, batch_size=64)
    windows = (0.1 * rng.standard_normal((256, WINDOW_SAMPLES))).astype(np.float32)
    logmel.extract(windows[:8])
    tick = time.perf_counter()
    logmel.extract(windows)
    _sync(device)
    out["extraction"].append({"front_end": "logmel 64", "batch": 64,
                              "windows_per_s": round(256 / (time.perf_counter() - tick), 1)})

    epochs = []
    model_dim = model_arch(model_dir)["hidden_size"] or 1024
    for name, n, dim, preset, batch in (("demo (log-mel 64, small SpeechCNN)", options.demo_windows, 64, "small", 32),
                                        (f"benchmark heads ({options.head_preset} SpeechCNN, D={model_dim})",
                                         options.train_windows, model_dim, options.head_preset, 256)):
        feats = rng.standard_normal((n, 99, dim)).astype(np.float16)  # the cache stores fp16
        contours = rng.standard_normal((n, 50)).astype(np.float32)
        config = TrainConfig(max_epochs=1, batch_size=batch, seed=options.seed)
        log(f"training epoch: {name}, {n} windows")
        trained = train_head("arousal", "c2p", feats, contours, k=options.k, config=config,
                             speech_preset=preset, log=lambda message: None)
        seconds = trained.history[0]["seconds"]
        epochs.append({"model": name, "windows": n, "batch": batch, "epoch_s": round(seconds, 2),
                       "windows_per_s": round(n / seconds, 1), "device": "cpu (trainer)",
                       "threads": torch.get_num_threads()})
    out["epoch"] = epochs
    return out


# ---------------------------------------------------------------- the run

def run_benchmark(options: BenchOptions, command: str | None = None) -> dict[str, Any]:
    """One benchmark run -> the JSON-able result (see the module docstring)."""
    if options.levers and not options.reference:
        raise ValueError("--levers compares with the timed reference: drop --no-reference")
    device = fe_mod.resolve_device(options.device)
    dtype = resolve_bench_dtype(options.dtype, device)
    tolerance = options.tolerance if options.tolerance is not None else (1e-3 if dtype == torch.float32 else 0.05)
    graphs = (device.type == "cuda") if options.cuda_graphs is None else options.cuda_graphs
    if graphs and device.type != "cuda":
        raise ValueError("--cuda-graphs needs --device cuda")
    model_dir = ensure_model(options)
    arch = model_arch(model_dir)
    dim = arch["hidden_size"] or 768
    windows = session_windows(options.seconds, options.seed)
    calibration = session_windows(CALIBRATION_WINDOWS + 1, options.seed + 1)
    if options.checkpoint is not None:  # trained heads: the agreement that matters for real weights
        from c2p_stream.checkpoint import load_checkpoint

        trained = load_checkpoint(options.checkpoint)
        if trained.front_end.get("kind") != "wav2vec2" or trained.front_end.get("layer") != options.layer:
            raise ValueError(f"--checkpoint {options.checkpoint}: front end {trained.front_end} is not "
                             f"wav2vec2 block {options.layer} (see --layer)")
        heads = {name: head.speech.float().eval() for name, head in trained.heads.items()}
        options.k = next(iter(trained.heads.values())).k
    else:
        heads = build_heads(dim, options.k, options.head_preset, options.seed)
    log(f"{len(windows)} hops; model {model_dir}; device {device}; dtype {dtype}; threads {torch.get_num_threads()}")
    result: dict[str, Any] = {
        "format": "c2p-bench", "version": BENCH_FORMAT_VERSION,
        "command": command,
        "setup": _describe_setup(options, device, dtype, arch, model_dir, len(windows), tolerance, graphs),
    }

    # reference (also calibrates the heads: exact fp32 features of a separate session)
    log("reference path")
    with PeakMemory(device) as memory:
        reference = ReferencePath(model_dir, options.layer, device)
        calib = torch.cat([reference.features(w) for w in calibration]).cpu()
        if options.checkpoint is None:
            calibrate_heads(heads, calib, options.logit_std)
        reference.heads = {name: copy.deepcopy(h).to(device) for name, h in heads.items()}
        if options.reference:
            ref_times, ref_probs = time_hops(reference.label, windows, options.warmup, device, memory.mark_warm)
        else:
            ref_times = []
            ref_probs = {name: np.stack([reference.label(i * HOP_SAMPLES, w)[name] for i, w in enumerate(windows)])
                         for name in heads}
        log("noise floor: the reference after a 16-bit PCM round trip of the audio")
        pcm16 = np.round(windows * 32767.0) / 32767.0
        floor = [reference.label_shared(w) for w in pcm16.astype(np.float32)]
        floor_probs = {name: np.stack([f[name] for f in floor]) for name in heads}
    del reference, calib
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["reference"] = {**summarize(ref_times), **memory.result,
                           "what": "full 24 blocks fp32 eager, hidden_states[15], a pass per head, fp32 heads"}

    # optimised: the real engine path
    log("optimised path (Engine.label_window)")
    cudnn_benchmark = device.type == "cuda" and options.cudnn_benchmark is not False
    torch.backends.cudnn.benchmark = cudnn_benchmark
    with PeakMemory(device) as memory:
        tick = time.perf_counter()
        front_end = build_front_end(model_dir, options, device, dtype, graphs=graphs)
        spec = front_end.spec
        engine = Engine(make_checkpoint(heads, spec, options.k, options.seed), front_end,
                        speech_threshold_dbfs=VAD_OFF_DBFS)
        build_s = time.perf_counter() - tick
        tick = time.perf_counter()
        engine.warm_up()
        warm_s = time.perf_counter() - tick
        opt_times, opt_probs = time_hops(engine_label(engine), windows, options.warmup, device, memory.mark_warm)
    result["optimised"] = {**summarize(opt_times), **memory.result, "build_s": round(build_s, 2),
                           "first_call_s": round(warm_s, 2),
                           "cuda_graph_capture_s": round(getattr(front_end, "capture_s", 0.0), 2) if graphs else None,
                           "what": _optimised_what(device, dtype, graphs, front_end)}
    if ref_times:
        result["speedup"] = {"mean": round(float(np.mean(ref_times) / np.mean(opt_times)), 2),
                             "p50": round(float(np.percentile(ref_times, 50) / np.percentile(opt_times, 50)), 2)}
    result["agreement"] = check_agreement(ref_probs, opt_probs, tolerance)
    floor = check_agreement(ref_probs, floor_probs, tolerance)
    result["agreement"]["noise_floor"] = {
        "what": "the reference itself on the audio after a 16-bit PCM round trip (an inaudible change every "
                "real input has had): how much these random heads move under a tiny input change",
        "label_agreement": floor["label_agreement"], "max_abs_dprob": floor["max_abs_dprob"]}
    result["targets"] = _targets(result, device)

    if options.levers:
        engine_front = engine.front_end
        result["levers"] = measure_levers(model_dir, heads, windows,
                                          {"times": ref_times, "probs": ref_probs}, options, device, dtype, tolerance)
        result["levers"]["steps"].append({"lever": "engine", "what": "the real Engine path (the optimised result)",
                                          **_brief(result["optimised"]), "in_engine": True})
        engine.front_end = engine_front
    if options.streams:
        result["streams"] = sweep_streams(engine, windows, options.streams, options, device)
        result["targets"] = _targets(result, device)
    del engine, front_end
    gc.collect()
    if options.training:
        result["training"] = measure_training(model_dir, options, device, dtype)
    return result


def _optimised_what(device: torch.device, dtype: torch.dtype, graphs: bool, front_end: Any) -> str:
    inner = getattr(front_end, "inner", front_end)
    pos = getattr(getattr(getattr(inner, "model", None), "encoder", None), "pos_conv_embed", None)
    layer = getattr(inner, "spec", {}).get("layer")
    parts = [f"Engine.label_window, blocks <= {layer}, one shared pass, {str(dtype).removeprefix('torch.')}",
             "channels-last heads", "inference_mode"]
    if device.type == "cpu":
        parts.append("conv encoder as channels-last 2-D convs")
        if pos is not None and dtype != torch.float32:
            parts.append("positional conv in fp32" if isinstance(pos.conv, fe_mod._Float32Conv1d)
                         else f"positional conv in {str(dtype).removeprefix('torch.')}")
        parts.append(f"{torch.get_num_threads()} threads")
    if graphs:
        parts.append("CUDA graph of the front end")
    if device.type == "cuda" and torch.backends.cudnn.benchmark:
        parts.append("cudnn.benchmark")
    return ", ".join(parts)


def _targets(result: dict[str, Any], device: torch.device) -> dict[str, Any]:
    opt, agree = result["optimised"], result["agreement"]
    if device.type == "cpu":
        return {"cpu_rtf_max": TARGET_CPU_RTF, "cpu_rtf": opt["rtf"],
                "met": bool(opt["rtf"] <= TARGET_CPU_RTF and agree["pass"])}
    out = {"gpu_p50_ms_max": TARGET_GPU_P50_MS, "gpu_p50_ms": opt["p50_ms"], "streams_min": TARGET_STREAMS}
    streams = result.get("streams")
    out["max_real_time_streams"] = streams["max_real_time_streams"] if streams else None
    out["met"] = bool(opt["p50_ms"] <= TARGET_GPU_P50_MS and agree["pass"]
                      and (streams is None or streams["max_real_time_streams"] >= TARGET_STREAMS))
    return out


def _describe_setup(options: BenchOptions, device: torch.device, dtype: torch.dtype, arch: dict, model_dir: Path,
                    hops: int, tolerance: float, graphs: bool) -> dict[str, Any]:
    setup = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_supports_bf16(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "model_dir": str(model_dir), "wav2vec2": arch, "layer": options.layer,
        "heads": {"preset": options.head_preset, "k": options.k, "logit_std": options.logit_std,
                  "checkpoint": options.checkpoint},
        "audio": {"seconds": options.seconds, "seed": options.seed, "hops": hops, "hop_s": HOP_S,
                  "window_s": WINDOW_SAMPLES / SAMPLE_RATE_HZ},
        "warmup_hops": options.warmup, "tolerance": tolerance, "cuda_graphs": graphs,
    }
    try:
        import transformers

        setup["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(device)
    return setup


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"counts must be >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> tuple[BenchOptions, str | None]:
    d = BenchOptions()
    p = argparse.ArgumentParser(
        prog="python -m c2p_stream.bench",
        description="Time the optimised engine path against a naive reference (full-size Wav2Vec2-Large with "
                    "random weights, paper-size SpeechCNN heads) on the same synthetic speech; print one JSON "
                    "object on stdout. See the module docstring for what each figure means.",
    )
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="optimised path's dtype; auto = bf16 on a CPU with native bf16 else fp32, fp16 on CUDA; "
                        "float16 on CPU is an error (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="session length; hops = seconds - 1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="audio, model and head seed (default: %(default)s)")
    p.add_argument("--model-dir", default=None, help="a Wav2Vec2 directory to use instead of the cached random Large")
    p.add_argument("--checkpoint", default=None,
                   help="a trained c2p checkpoint (wav2vec2 block --layer) whose heads replace the random ones; "
                        "with --model-dir holding the real weights this is the agreement check that matters")
    p.add_argument("--cache-dir", default=d.cache_dir, help="where the random Large is built once (default: %(default)s)")
    p.add_argument("--layer", type=int, default=d.layer, help="Wav2Vec2 block (default: %(default)s)")
    p.add_argument("--k", type=int, default=d.k, help="clusters per head (default: %(default)s)")
    p.add_argument("--head-preset", default=d.head_preset, choices=["paper", "small"], help="SpeechCNN size (default: %(default)s)")
    p.add_argument("--logit-std", type=float, default=d.logit_std,
                   help="calibrated std of the heads' logits (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |delta prob| that passes (default: 0.05 for bf16/fp16, 1e-3 for fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--interop-threads", type=int, default=None, help="torch.set_num_interop_threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed hops per path (default: %(default)s)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="do not time the reference (it still runs once for the agreement check)")
    p.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=None,
                   help="replay the front end as a CUDA graph (default on CUDA)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false", default=None,
                   help="leave torch.backends.cudnn.benchmark off in the optimised CUDA path (default: on)")
    p.add_argument("--levers", action="store_true", help="measure each speed lever (ladder + alternatives)")
    p.add_argument("--lever-hops", type=int, default=d.lever_hops, help="hops per lever (default: %(default)s)")
    p.add_argument("--streams", type=_int_list, default=[], help="stream counts to sweep, e.g. 1,64,256,1024")
    p.add_argument("--stream-hops", type=int, default=d.stream_hops, help="timed hops per stream count (default: %(default)s)")
    p.add_argument("--stream-budget-ms", type=float, default=d.stream_budget_ms,
                   help="p99 per batched hop under which a stream count is real time (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="windows per front-end pass (default: %(default)s)")
    p.add_argument("--training", action="store_true", help="add extraction throughput and epoch times")
    p.add_argument("--train-windows", type=int, default=d.train_windows,
                   help="windows of the paper-size training epoch (default: %(default)s)")
    p.add_argument("--demo-windows", type=int, default=d.demo_windows,
                   help="windows of the demo training epoch (default: %(default)s, as configs/demo.yaml)")
    p.add_argument("--extract-batches", type=_int_list, default=d.extract_batches,
                   help="batch sizes for extraction throughput (default: 16,64)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    return BenchOptions(**args), out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, out = parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    if options.interop_threads is not None:
        torch.set_num_interop_threads(options.interop_threads)
    result = run_benchmark(options, command=" ".join(["python -m c2p_stream.bench", *argv]))
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
