"""Speech front ends: (N, 32000) windows at 16 kHz -> (N, 99, D) frame features.

One interface, :class:`FrontEnd`, serves the offline feature cache and the live engine:
``build_front_end(config).extract(windows)``. Two kinds:

* ``wav2vec2``: the hidden state of transformer block ``layer`` (the paper's block 15 of
  wav2vec2-large-lv60, D = 1024), computed by running only the first ``layer`` blocks.
* ``logmel``: a log-mel spectrogram with the same 20 ms frame grid (D = n_mels), torch only;
  it serves the CPU demo and the tests.

Both give exactly N_FRAMES = 99 frames per 2 s window: Wav2Vec2's conv encoder has a
receptive field of 400 samples (25 ms) and a stride of 320 (20 ms): 1 + (32000 - 400) // 320.
Weights are only ever read from a local directory or the local Hugging Face cache.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from c2p_stream.audio import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from c2p_stream.config import FrontEndConfig

FRAME_SAMPLES = 400  # 25 ms analysis window (= Wav2Vec2 conv receptive field)
FRAME_HOP_SAMPLES = 320  # 20 ms frame shift (= Wav2Vec2 conv stride)
N_FRAMES = 1 + (WINDOW_SAMPLES - FRAME_SAMPLES) // FRAME_HOP_SAMPLES  # 99 frames per 2 s window
NORMALIZE_EPS = 1e-7  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
LOG_MEL_FLOOR = 1e-6  # power floor before log10: digital silence -> -6
LOG_MEL_OFFSET = 2.0  # log-mel features are (log10(power + floor) + offset) / scale
LOG_MEL_SCALE = 2.0

# The architecture of facebook/wav2vec2-large-lv60; the benchmark builds a random model of
# this size with ``save_random_wav2vec2(path, **LARGE_LV60_ARCH)``.
LARGE_LV60_ARCH: dict[str, Any] = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    conv_dim=(512,) * 7,
    conv_bias=True,
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
)

_HOW_TO_GET_WEIGHTS = (
    "Weights are never downloaded here. On a machine with internet run "
    "`hf download {model}` (older huggingface_hub: `huggingface-cli download {model}`) and copy "
    "the Hugging Face cache (~/.cache/huggingface, or wherever HF_HOME points) here, or set "
    "front_end.model to a local directory holding config.json and model.safetensors "
    "(e.g. written by `Wav2Vec2Model.save_pretrained`)."
)


class FrontEndError(RuntimeError):
    """A front end that cannot be built as configured (weights missing, layer out of range...)."""


class FrontEnd(nn.Module):
    """Base class: ``extract`` batches windows through ``forward``.

    Attributes: ``spec`` (JSON-able identity for cache keys and checkpoint matching; never
    device, dtype or batch size), ``dim`` (D), ``device``, ``dtype`` (compute and output dtype),
    ``batch_size`` (windows per forward pass). Build on the target device; do not ``.to()`` it.
    """

    spec: dict[str, Any]
    dim: int

    def __init__(self, device: torch.device, dtype: torch.dtype, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, 32000) float32 on self.device -> (B, 99, D) in self.dtype."""
        raise NotImplementedError

    @torch.inference_mode()
    def extract(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, 32000) float audio at 16 kHz -> (N, 99, D) in self.dtype on self.device.

        Runs ``batch_size`` windows per forward pass. The result is an inference tensor:
        ``.clone()`` it outside inference mode before it takes part in autograd.
        """
        if not isinstance(windows, torch.Tensor):
            windows = np.asarray(windows)
        if windows.ndim != 2 or windows.shape[1] != WINDOW_SAMPLES:
            raise ValueError(
                f"expected windows of shape (N, {WINDOW_SAMPLES}) (2 s at {SAMPLE_RATE_HZ} Hz), "
                f"got {tuple(windows.shape)}"
            )
        n = windows.shape[0]
        out = torch.empty((n, N_FRAMES, self.dim), dtype=self.dtype, device=self.device)
        for start in range(0, n, self.batch_size):
            batch = windows[start : start + self.batch_size]
            if isinstance(batch, np.ndarray):  # copy: frame_audio gives read-only strided views
                batch = torch.from_numpy(np.array(batch, dtype=np.float32))
            features = self(batch.to(device=self.device, dtype=torch.float32))
            if features.shape != (len(batch), N_FRAMES, self.dim):
                raise FrontEndError(
                    f"{type(self).__name__} gave features of shape {tuple(features.shape)}, "
                    f"expected ({len(batch)}, {N_FRAMES}, {self.dim})"
                )
            out[start : start + len(batch)] = features
        return out


class Wav2Vec2Frontend(FrontEnd):
    """Hidden state of Wav2Vec2 block ``layer`` (transformers' ``hidden_states[layer]``), D = hidden size.

    The paper takes block 15 of wav2vec2-large-lv60 (24 blocks): middle blocks of such models
    hold more paralinguistic information than the last ones, which specialise in the
    pre-training task. Blocks after ``layer`` would cost time and change nothing, so
    ``model.encoder.layers`` is cut to the first ``layer`` blocks. Layer-norm trap: with
    ``do_stable_layer_norm`` (Large) the encoder norms the output of its last block, so the
    truncated model's final norm is replaced by ``nn.Identity`` (in the other variant the norm
    comes before the blocks and stays). Input windows are normalised to zero mean and unit
    variance when the model's preprocessor_config.json says ``do_normalize`` (default: yes).
    ``self.model`` is the truncated ``Wav2Vec2Model`` (eval mode, no grad, weight norm folded).

    ``optimize`` (default) applies CPU rewrites that keep the values: the conv encoder's 1-D
    convs run as channels-last 2-D convs (oneDNN's fast path: its time 2.4x lower in bf16 on
    2 cores), and in bf16/fp16 the positional conv stays in low precision when a probe on its
    own weights shows this CPU computes it right (see _Float32Conv1d). ``optimize=False``
    keeps the plain transformers modules (the benchmark's lever ladder measures the difference).
    """

    def __init__(
        self,
        model: str | Path,
        layer: int = 15,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        optimize: bool = True,
    ) -> None:
        super().__init__(torch.device(device), dtype, batch_size)
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        model = str(model)
        model_dir, spec_model = resolve_model_dir(model)
        try:
            hf_config = Wav2Vec2Config.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FrontEndError(f"{model}: cannot read a Wav2Vec2 config ({err}). "
                                + _HOW_TO_GET_WEIGHTS.format(model=model)) from None
        n_layers = hf_config.num_hidden_layers
        if not 1 <= layer <= n_layers:
            raise FrontEndError(
                f"{model}: layer {layer} out of range: this model has {n_layers} transformer blocks, "
                f"so 1 <= layer <= {n_layers} (layer L is hidden_states[L], the output of block L)"
            )
        frames = WINDOW_SAMPLES
        for kernel, stride in zip(hf_config.conv_kernel, hf_config.conv_stride):
            frames = (frames - kernel) // stride + 1
        if frames != N_FRAMES:
            raise FrontEndError(
                f"{model}: its conv encoder gives {frames} frames per {WINDOW_SAMPLES}-sample window, "
                f"expected {N_FRAMES} (receptive field 400, stride 320)"
            )
        try:
            wav2vec2, info = Wav2Vec2Model.from_pretrained(
                model_dir, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError) as err:
            raise FrontEndError(f"{model}: cannot load Wav2Vec2 weights ({err}). "
                                + _HOW_TO_GET_WEIGHTS.format(model=model)) from None
        kept = [f"encoder.layers.{i}." for i in range(layer)]
        missing = sorted(
            key for key in info["missing_keys"]
            if key != "masked_spec_embed" and (not key.startswith("encoder.layers.") or key.startswith(tuple(kept)))
        )
        if missing:
            raise FrontEndError(f"{model}: weights missing from the checkpoint, they would be random: {missing[:5]}")

        wav2vec2.encoder.layers = nn.ModuleList(wav2vec2.encoder.layers[:layer])
        wav2vec2.config.num_hidden_layers = layer
        if hf_config.do_stable_layer_norm:
            wav2vec2.encoder.layer_norm = nn.Identity()  # the trap: it follows the last block
        wav2vec2.adapter = None  # hidden_states[L] never includes the adapter
        wav2vec2.float()
        _fold_weight_norm(wav2vec2)  # in fp32, before any cast: exact and faster
        if self.device.type == "cpu" and dtype != torch.float32:
            pos_conv = wav2vec2.encoder.pos_conv_embed
            if not (optimize and _low_precision_grouped_conv_is_accurate(pos_conv.conv, dtype)):
                _keep_float32(pos_conv)
        self.model = wav2vec2.eval().requires_grad_(False).to(device=self.device, dtype=dtype)
        if optimize and self.device.type == "cpu":
            _run_conv_encoder_channels_last(self.model.feature_extractor)

        self.normalize = _read_do_normalize(model_dir)
        self.dim = hf_config.hidden_size
        self.spec = {"kind": "wav2vec2", "model": spec_model, "layer": layer, "dim": self.dim}

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, 32000) float32 -> (B, 99, hidden_size) in self.dtype."""
        if self.normalize:  # per window, population variance, as Wav2Vec2FeatureExtractor
            mean = waveforms.mean(dim=1, keepdim=True)
            var = waveforms.var(dim=1, keepdim=True, correction=0)
            waveforms = (waveforms - mean) / torch.sqrt(var + NORMALIZE_EPS)
        return self.model(input_values=waveforms.to(self.dtype)).last_hidden_state


class CudaGraphFrontend(FrontEnd):
    """Another front end whose ``forward`` is replayed as a CUDA graph, one per input shape.

    A window through Wav2Vec2-Large is a few hundred small kernels; on a fast GPU launching
    them costs more than running them, and a graph launches them all at once. A shape is
    captured on first use (warm-up on a side stream, then capture); ``capture_s`` adds up the
    time. Each captured batch size keeps its activations in the graph's private memory pool.
    Same spec, dim, dtype and outputs as `inner`. CUDA only.
    """

    def __init__(self, inner: FrontEnd, warmup_calls: int = 3) -> None:
        if inner.device.type != "cuda":
            raise FrontEndError(f"CUDA graphs need a front end on a CUDA device, not {inner.device}")
        super().__init__(inner.device, inner.dtype, inner.batch_size)
        self.inner, self.spec, self.dim = inner, inner.spec, inner.dim
        self.warmup_calls = warmup_calls
        self.capture_s = 0.0
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, 32000) float32 on the GPU -> (B, 99, D), a fresh tensor (not the graph's)."""
        key = tuple(waveforms.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(waveforms)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(waveforms)
        graph.replay()
        return static_out.clone()

    def _capture(self, example: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        import time

        tick = time.perf_counter()
        static_in = example.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.inner(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.inner(static_in)
        torch.cuda.synchronize(self.device)
        self.capture_s += time.perf_counter() - tick
        return graph, static_in, static_out


class LogMelFrontend(FrontEnd):
    """Log-mel spectrogram on the Wav2Vec2 frame grid, D = n_mels.

    25 ms Hann window (n_fft 400), 20 ms hop, no centring -> 99 frames per 2 s. HTK mel
    filterbank over 0-8000 Hz (unnormalised triangles, peak 1) on the power spectrum. Output is
    ``(log10(power + 1e-6) + 2) / 2``: digital silence -> -2, white noise at -26 dBFS ~ -0.3,
    a full-scale tone's band ~ +3. No per-window normalisation: the level carries arousal.
    Computed in float32, returned in self.dtype.
    """

    def __init__(
        self,
        n_mels: int = 64,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> None:
        super().__init__(torch.device(device), dtype, batch_size)
        if n_mels < 1:
            raise FrontEndError(f"n_mels must be >= 1, got {n_mels}")
        self.register_buffer("window", torch.hann_window(FRAME_SAMPLES, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(n_mels), persistent=False)
        self.to(self.device)
        self.dim = n_mels
        self.spec = {"kind": "logmel", "n_mels": n_mels, "dim": n_mels}

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, 32000) float32 -> (B, 99, n_mels) in self.dtype."""
        frames = waveforms.unfold(1, FRAME_SAMPLES, FRAME_HOP_SAMPLES) * self.window  # (B, 99, 400)
        power = torch.fft.rfft(frames, n=FRAME_SAMPLES).abs().square()  # (B, 99, 201)
        mel = power @ self.filterbank.T  # (B, 99, n_mels)
        return ((torch.log10(mel + LOG_MEL_FLOOR) + LOG_MEL_OFFSET) / LOG_MEL_SCALE).to(self.dtype)


def mel_filterbank(
    n_mels: int, n_fft: int = FRAME_SAMPLES, sample_rate_hz: int = SAMPLE_RATE_HZ,
    f_min_hz: float = 0.0, f_max_hz: float = SAMPLE_RATE_HZ / 2,
) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 HTK-mel triangles with peak 1, band edges equally spaced in mel."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    edges_hz = 700.0 * (10.0 ** (np.linspace(to_mel(f_min_hz), to_mel(f_max_hz), n_mels + 2) / 2595.0) - 1.0)
    bins_hz = np.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


def build_front_end(config: FrontEndConfig) -> FrontEnd:
    """The front end `config` describes, on its resolved device and dtype.

    ``dtype: auto`` means float16 on CUDA and bfloat16/float32 on CPU (see resolve_dtype) for
    Wav2Vec2, and always float32 for log-mel (cheap, and its STFT runs in float32 anyway).
    """
    device = resolve_device(config.device)
    if config.kind == "wav2vec2":
        dtype = resolve_dtype(config.dtype, device)
        return Wav2Vec2Frontend(config.model, config.layer, device=device, dtype=dtype, batch_size=config.batch_size)
    if config.kind == "logmel":
        dtype = torch.float32 if config.dtype == "auto" else resolve_dtype(config.dtype, device)
        return LogMelFrontend(config.n_mels, device=device, dtype=dtype, batch_size=config.batch_size)
    raise FrontEndError(f"unknown front end kind {config.kind!r} (expected 'wav2vec2' or 'logmel')")


def front_end_spec(config: FrontEndConfig) -> dict[str, Any]:
    """The ``spec`` that ``build_front_end(config).spec`` will be, reading no weights (cache keys)."""
    if config.kind == "logmel":
        return {"kind": "logmel", "n_mels": config.n_mels, "dim": config.n_mels}
    if config.kind == "wav2vec2":
        model_dir, spec_model = resolve_model_dir(config.model)
        try:
            hf_config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise FrontEndError(f"{config.model}: cannot read config.json ({err}). "
                                + _HOW_TO_GET_WEIGHTS.format(model=config.model)) from None
        dim = hf_config.get("hidden_size", 768)  # Wav2Vec2Config's default
        return {"kind": "wav2vec2", "model": spec_model, "layer": config.layer, "dim": dim}
    raise FrontEndError(f"unknown front end kind {config.kind!r} (expected 'wav2vec2' or 'logmel')")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FrontEndError(f"device {name!r} requested but CUDA is not available (use 'cpu' or 'auto')")
    return device


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """'auto' -> float16 on CUDA; bfloat16 on a CPU with native bf16 (AVX512_BF16/AMX), else float32."""
    explicit = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name in explicit:
        return explicit[name]
    if name != "auto":
        raise ValueError(f"unknown dtype {name!r} (expected 'auto', {', '.join(map(repr, explicit))})")
    if torch.device(device).type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively; emulated bf16 is slower than float32.

    ``torch.backends.cpu.get_cpu_capability()`` says 'AVX512' for CPUs with and without bf16,
    so the kernel's flags decide (Linux /proc/cpuinfo; elsewhere: no).
    """
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """True if /proc/cpuinfo text lists avx512_bf16 or amx_bf16 (x86) or bf16 (aarch64 Features)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and {"avx512_bf16", "amx_bf16", "bf16"} & set(value.split()):
            return True
    return False


def save_random_wav2vec2(
    path: str | Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    do_stable_layer_norm: bool = True,
    seed: int = 0,
    do_normalize: bool | None = True,
    **overrides: Any,
) -> Path:
    """Write a randomly initialised Wav2Vec2Model (config.json + model.safetensors) to `path`.

    The conv encoder keeps the standard kernels/strides (20 ms frames, 99 per 2 s) with 32
    channels for speed; ``feat_extract_norm`` is 'layer' for the stable variant, else 'group'.
    `overrides` go to Wav2Vec2Config; ``**LARGE_LV60_ARCH`` gives the full Large size (the
    benchmark). ``do_normalize`` writes preprocessor_config.json (None: no file). Returns `path`.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    path = Path(path)
    settings: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        do_stable_layer_norm=do_stable_layer_norm,
        feat_extract_norm="layer" if do_stable_layer_norm else "group",
        conv_dim=(32,) * 7,
    )
    settings.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(Wav2Vec2Config(**settings))
    model.save_pretrained(path, safe_serialization=True)
    if do_normalize is not None:
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=SAMPLE_RATE_HZ, do_normalize=do_normalize, return_attention_mask=False
        ).save_pretrained(path)
    return path


def resolve_model_dir(model: str) -> tuple[str, str]:
    """(directory to load from, name for the spec): a local directory (spec: its absolute path)
    or a hub id found in the local Hugging Face cache (spec: the id). Never downloads."""
    local = Path(model).expanduser()
    if local.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        if not local.is_dir():
            raise FrontEndError(
                f"{model}: no such model directory. " + _HOW_TO_GET_WEIGHTS.format(model=FrontEndConfig.model)
            )
        resolved = str(local.resolve())
        return resolved, resolved
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=model, local_files_only=True), model
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError, OSError...
        raise FrontEndError(
            f"{model}: not a local directory and not in the local Hugging Face cache "
            f"({type(err).__name__}). " + _HOW_TO_GET_WEIGHTS.format(model=model)
        ) from None


def _read_do_normalize(model_dir: str) -> bool:
    """`do_normalize` from the model's preprocessor_config.json; True when there is none."""
    path = Path(model_dir) / "preprocessor_config.json"
    if not path.is_file():
        return True
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("do_normalize", True))
    except (OSError, ValueError) as err:
        raise FrontEndError(f"{path}: unreadable preprocessor config ({err})") from None


class _Float32Conv1d(nn.Conv1d):
    """A Conv1d that computes in float32 whatever the dtype of its input and weights.

    oneDNN's bf16 grouped conv1d with few channels per group and a long kernel returns wrong
    values on CPU (torch 2.13, AVX512/AMX: ~100% relative error for 2-4 channels per group,
    as in the tiny test models; fine for Large's 64). The positional conv is ~2% of the work.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)


def _keep_float32(pos_conv_embed: nn.Module) -> None:
    """Swap the positional conv (weight norm already folded) for a _Float32Conv1d, same state dict."""
    conv = pos_conv_embed.conv
    replacement = _Float32Conv1d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
    )
    replacement.weight = _parameter(conv.weight)
    replacement.bias = None if conv.bias is None else _parameter(conv.bias)
    pos_conv_embed.conv = replacement


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    """`tensor` as a frozen Parameter (weight-norm folding under inference_mode leaves plain tensors)."""
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach(), requires_grad=False)


@torch.no_grad()
def _low_precision_grouped_conv_is_accurate(conv: nn.Conv1d, dtype: torch.dtype) -> bool:
    """Whether this CPU computes `conv` (fp32 weights) in `dtype` within 2% of float32.

    Probed once per model on its own weights and a seeded random input of one window: the
    oneDNN bug _Float32Conv1d works around is wrong by ~50-100% (torch 2.13 gets up to 8
    channels per group wrong, 16 and more right, to ~0.3% in bf16), so 2% separates the two.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, conv.in_channels, N_FRAMES, generator=generator)
    bias = conv.bias
    exact = conv._conv_forward(x, conv.weight.float(), None if bias is None else bias.float())
    low = conv._conv_forward(x.to(dtype), conv.weight.to(dtype), None if bias is None else bias.to(dtype)).float()
    error = (low - exact).norm() / exact.norm().clamp_min(1e-12)
    return bool(torch.isfinite(error)) and float(error) < 0.02


class _ChannelsLastConv1d(nn.Conv1d):
    """A Conv1d computed as a channels-last 2-D conv on (B, C, 1, T): the same values, but
    oneDNN's blocked fast path on CPU instead of its slow plain-layout 1-D conv. The weight
    is stored in the matching (O, K, I) memory order, so no copy is made per call; the output
    (B, C, T) is time-major in memory, which is what the layer norm that follows reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.unsqueeze(2), self.weight.unsqueeze(2), self.bias, (1, self.stride[0]),
                        0, (1, self.dilation[0]), self.groups).squeeze(2)


def _run_conv_encoder_channels_last(feature_extractor: nn.Module) -> None:
    """Swap each unpadded Conv1d of Wav2Vec2's conv encoder for a _ChannelsLastConv1d (same state dict)."""
    for layer in feature_extractor.conv_layers:
        conv = layer.conv
        if type(conv) is not nn.Conv1d or conv.padding != (0,) or conv.padding_mode != "zeros":
            continue
        replacement = _ChannelsLastConv1d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
            conv.dilation, conv.groups, conv.bias is not None, device="meta",
        )
        weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)
        replacement.weight = nn.Parameter(weight, requires_grad=False)
        replacement.bias = None if conv.bias is None else _parameter(conv.bias)
        layer.conv = replacement


def _fold_weight_norm(module: nn.Module) -> None:
    """Replace weight-norm parametrisations (the positional conv) by their computed weight."""
    from torch.nn.utils import parametrize

    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)


