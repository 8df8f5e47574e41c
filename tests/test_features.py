import json
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from c2p_stream import features
from c2p_stream.audio import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from c2p_stream.config import FrontEndConfig
from c2p_stream.features import (
    N_FRAMES,
    FrontEndError,
    LogMelFrontend,
    build_front_end,
    cpuinfo_has_bf16,
    front_end_spec,
    mel_filterbank,
    resolve_device,
    resolve_dtype,
    save_random_wav2vec2,
)

N_LAYERS = 4
HIDDEN = 32


def random_windows(n, seed=0, rms=0.1):
    return (rms * np.random.default_rng(seed).standard_normal((n, WINDOW_SAMPLES))).astype(np.float32)


def w2v_config(path, **fields):
    return FrontEndConfig(kind="wav2vec2", model=str(path), device="cpu", dtype="float32", **fields)


@pytest.fixture(scope="module", params=[True, False], ids=["stable", "nonstable"])
def model_dir(request, tmp_path_factory):
    """A tiny random Wav2Vec2 (4 blocks, D = 32), with and without do_stable_layer_norm."""
    path = tmp_path_factory.mktemp("stable" if request.param else "nonstable")
    stable = request.param
    return save_random_wav2vec2(path, num_hidden_layers=N_LAYERS, hidden_size=HIDDEN, do_stable_layer_norm=stable)


@pytest.fixture(scope="module")
def stable_dir(tmp_path_factory):
    return save_random_wav2vec2(tmp_path_factory.mktemp("stable_only"), num_hidden_layers=N_LAYERS, hidden_size=HIDDEN)


def full_model_outputs(model_dir, windows):
    """The untruncated model on the inputs Wav2Vec2FeatureExtractor would give it."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    processor = Wav2Vec2FeatureExtractor.from_pretrained(model_dir)
    inputs = processor(list(windows), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_values
    model = Wav2Vec2Model.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        return model(inputs, output_hidden_states=True), model


@pytest.mark.parametrize("n", [1, 5, 7])
def test_wav2vec2_shapes_any_n(stable_dir, n):
    front_end = build_front_end(w2v_config(stable_dir, layer=2, batch_size=3))
    out = front_end.extract(random_windows(n))
    assert out.shape == (n, N_FRAMES, HIDDEN) and out.dtype == torch.float32 and out.device.type == "cpu"


@pytest.fixture(scope="module")
def reference(model_dir):
    """(windows, the full model's outputs with output_hidden_states=True), once per model."""
    windows = random_windows(3, seed=1)
    return windows, full_model_outputs(model_dir, windows)[0]


@pytest.mark.parametrize("layer", [1, 2, N_LAYERS])
def test_truncated_model_reproduces_hidden_states(model_dir, reference, layer):
    windows, outputs = reference
    front_end = build_front_end(w2v_config(model_dir, layer=layer, batch_size=2))
    assert len(front_end.model.encoder.layers) == layer
    torch.testing.assert_close(front_end.extract(windows), outputs.hidden_states[layer], atol=1e-5, rtol=1e-5)


def test_stable_layer_norm_trap_is_real(stable_dir):
    """With do_stable_layer_norm, last_hidden_state carries the final norm: it is not hidden_states[L]."""
    windows = random_windows(2, seed=2)
    outputs, model = full_model_outputs(stable_dir, windows)
    assert not torch.allclose(outputs.last_hidden_state, outputs.hidden_states[N_LAYERS], atol=1e-2)
    torch.testing.assert_close(outputs.last_hidden_state, model.encoder.layer_norm(outputs.hidden_states[N_LAYERS]))
    # Truncating the blocks alone is not enough: the norm would land on block 2's output.
    model.encoder.layers = torch.nn.ModuleList(model.encoder.layers[:2])
    with torch.no_grad():
        inputs = torch.from_numpy(windows)
        inputs = (inputs - inputs.mean(1, keepdim=True)) / torch.sqrt(inputs.var(1, keepdim=True, correction=0) + 1e-7)
        naive = model(inputs).last_hidden_state
    assert not torch.allclose(naive, outputs.hidden_states[2], atol=1e-2)


def test_spec_and_loading_from_directory(stable_dir):
    front_end = build_front_end(w2v_config(stable_dir, layer=3))
    assert front_end.spec == {"kind": "wav2vec2", "model": str(stable_dir.resolve()), "layer": 3, "dim": HIDDEN}
    assert json.loads(json.dumps(front_end.spec)) == front_end.spec
    assert front_end.dim == HIDDEN and front_end.normalize
    assert not any(p.requires_grad for p in front_end.model.parameters()) and not front_end.model.training


def test_front_end_spec_needs_no_weights(stable_dir):
    for config in (w2v_config(stable_dir, layer=2), FrontEndConfig(kind="logmel", n_mels=40, device="cpu")):
        assert front_end_spec(config) == build_front_end(config).spec


def test_hub_id_found_in_local_cache(monkeypatch, tmp_path, stable_dir, no_network):
    """A hub id resolves to its snapshot in the local cache; the spec keeps the id."""
    import huggingface_hub

    repo = tmp_path / "hub" / "models--c2p-tests--tiny-w2v"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in stable_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    front_end = build_front_end(w2v_config("c2p-tests/tiny-w2v", layer=1))
    assert front_end.spec["model"] == "c2p-tests/tiny-w2v" and front_end.dim == HIDDEN
    assert no_network == []


def test_do_normalize_false_is_respected(tmp_path):
    model_dir = save_random_wav2vec2(tmp_path, num_hidden_layers=2, do_normalize=False)
    front_end = build_front_end(w2v_config(model_dir, layer=2))
    assert not front_end.normalize
    windows = random_windows(2, rms=0.3)
    expected = full_model_outputs(model_dir, windows)[0].hidden_states[2]  # processor leaves input raw
    torch.testing.assert_close(front_end.extract(windows), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Offline hub, an empty cache, and a record of any attempt to open a connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("model", ["c2p-stream-tests/not-cached-anywhere", "/definitely/missing/model_dir"])
def test_unavailable_weights_say_how_to_get_them(no_network, model):
    with pytest.raises(FrontEndError) as err:
        build_front_end(w2v_config(model))
    assert model in str(err.value) and "download" in str(err.value) and "local directory" in str(err.value)
    assert no_network == []


def test_directory_without_weights(tmp_path, stable_dir, no_network):
    (tmp_path / "config.json").write_text((stable_dir / "config.json").read_text())
    with pytest.raises(FrontEndError, match="cannot load Wav2Vec2 weights"):
        build_front_end(w2v_config(tmp_path, layer=1))
    assert no_network == []


def test_checkpoint_missing_a_used_block_is_refused(tmp_path):
    model_dir = save_random_wav2vec2(tmp_path, num_hidden_layers=N_LAYERS)
    weights = load_file(model_dir / "model.safetensors")
    dropped = {k: v for k, v in weights.items() if not k.startswith("encoder.layers.1.")}
    save_file(dropped, model_dir / "model.safetensors", metadata={"format": "pt"})
    assert build_front_end(w2v_config(model_dir, layer=1)).dim == HIDDEN  # block 2 not needed
    with pytest.raises(FrontEndError, match="would be random"):
        build_front_end(w2v_config(model_dir, layer=2))


@pytest.mark.parametrize("layer", [0, N_LAYERS + 1])
def test_layer_out_of_range(stable_dir, layer):
    with pytest.raises(FrontEndError, match=rf"1 <= layer <= {N_LAYERS}"):
        build_front_end(w2v_config(stable_dir, layer=layer))


def test_conv_stack_not_on_20ms_grid_is_refused(tmp_path):
    model_dir = save_random_wav2vec2(tmp_path, num_hidden_layers=1, conv_stride=(5, 2, 2, 2, 2, 2, 1))
    with pytest.raises(FrontEndError, match="expected 99"):
        build_front_end(w2v_config(model_dir, layer=1))


def test_bfloat16_cpu_close_to_float32(stable_dir):
    windows = random_windows(3, seed=3)
    reference = build_front_end(w2v_config(stable_dir, layer=N_LAYERS)).extract(windows)
    config = w2v_config(stable_dir, layer=N_LAYERS)
    config.dtype = "bfloat16"
    front_end = build_front_end(config)
    out = front_end.extract(windows)
    assert out.dtype == torch.bfloat16 and front_end.dtype == torch.bfloat16
    relative = (out.float() - reference).norm() / reference.norm()
    assert relative < 0.05


def test_cpu_rewrites_keep_the_values_and_build_under_inference_mode(stable_dir):
    windows = torch.from_numpy(random_windows(2, seed=4))
    plain = features.Wav2Vec2Frontend(stable_dir, N_LAYERS, optimize=False)
    with torch.inference_mode():  # folding weight norm here used to leave plain tensors behind
        fast = features.Wav2Vec2Frontend(stable_dir, N_LAYERS, dtype=torch.bfloat16)
        fast32 = features.Wav2Vec2Frontend(stable_dir, N_LAYERS)
        assert all(isinstance(layer.conv, features._ChannelsLastConv1d) for layer in fast32.model.feature_extractor.conv_layers)
        torch.testing.assert_close(fast32(windows), plain(windows), rtol=1e-4, atol=1e-5)
    # the tiny model has 2 channels per positional-conv group: bf16 is wrong there, so the probe keeps fp32
    assert isinstance(fast.model.encoder.pos_conv_embed.conv, features._Float32Conv1d)


def test_grouped_conv_probe_tells_right_from_wrong():
    conv = torch.nn.Conv1d(256, 256, 128, padding=64, groups=16)
    assert features._low_precision_grouped_conv_is_accurate(conv, torch.float32)

    class Wrong(torch.nn.Conv1d):
        def _conv_forward(self, x, weight, bias):
            out = super()._conv_forward(x, weight, bias)
            return out if x.dtype == torch.float32 else -out

    assert not features._low_precision_grouped_conv_is_accurate(Wrong(16, 16, 3, groups=2), torch.bfloat16)


def test_extract_rejects_wrong_window_shape(stable_dir):
    front_end = build_front_end(w2v_config(stable_dir, layer=1))
    with pytest.raises(ValueError, match="32000"):
        front_end.extract(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="32000"):
        front_end.extract(np.zeros(WINDOW_SAMPLES, np.float32))


@pytest.mark.parametrize("n", [0, 1, 5, 17])
def test_logmel_shapes_any_n(n):
    front_end = build_front_end(FrontEndConfig(kind="logmel", n_mels=40, device="cpu", batch_size=4))
    out = front_end.extract(random_windows(n))
    assert out.shape == (n, N_FRAMES, 40) and out.dtype == torch.float32


def test_logmel_accepts_read_only_views_and_tensors():
    from c2p_stream.audio import frame_audio

    windows = frame_audio(random_windows(1, seed=4).repeat(2, axis=0).ravel())  # read-only strided view
    front_end = LogMelFrontend(16)
    torch.testing.assert_close(front_end.extract(windows), front_end.extract(torch.from_numpy(windows.copy())))


def test_logmel_tone_peaks_in_its_band():
    t = np.arange(WINDOW_SAMPLES) / SAMPLE_RATE_HZ
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)[None]
    out = LogMelFrontend(64).extract(tone)[0]  # (99, 64)
    bank = mel_filterbank(64)
    expected_band = int(bank[:, 1000 * 400 // SAMPLE_RATE_HZ].argmax())  # 1 kHz is FFT bin 25
    assert (out.argmax(dim=1) == expected_band).all()
    assert 2.0 < out[:, expected_band].mean() < 4.0  # scaling documented in LogMelFrontend


def test_logmel_scaling_is_order_one():
    out = LogMelFrontend(64).extract(random_windows(2, rms=0.05))  # noise at -26 dBFS
    assert -1.5 < out.mean() < 1.5
    silence = LogMelFrontend(64).extract(np.zeros((1, WINDOW_SAMPLES), np.float32))
    torch.testing.assert_close(silence, torch.full_like(silence, -2.0))


def test_logmel_spec_and_dtype():
    front_end = build_front_end(FrontEndConfig(kind="logmel", n_mels=64, device="cpu", dtype="auto"))
    assert front_end.spec == {"kind": "logmel", "n_mels": 64, "dim": 64}
    assert front_end.dtype == torch.float32  # auto is float32 for log-mel, whatever the CPU
    config = FrontEndConfig(kind="logmel", device="cpu", dtype="bfloat16")
    assert build_front_end(config).extract(random_windows(1)).dtype == torch.bfloat16


def test_mel_filterbank_covers_the_band():
    bank = mel_filterbank(64)
    assert bank.shape == (64, 201) and bank.max() <= 1.0
    assert (bank.sum(dim=0)[1:-1] > 0).all()  # every bin strictly inside 0-8000 Hz is covered


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_resolve_dtype_auto_on_cpu(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(features, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_dtype("auto", torch.device("cpu")) == expected


def test_resolve_dtype_auto_on_cuda_and_explicit(monkeypatch):
    monkeypatch.setattr(features, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    assert resolve_dtype("float32", "cuda") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


def test_build_front_end_auto_dtype_follows_cpu(monkeypatch, stable_dir):
    monkeypatch.setattr(features, "cpu_supports_bf16", lambda: True)
    config = FrontEndConfig(kind="wav2vec2", model=str(stable_dir), layer=1, device="cpu", dtype="auto")
    front_end = build_front_end(config)
    assert front_end.dtype == torch.bfloat16 and next(front_end.model.parameters()).dtype == torch.bfloat16


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(FrontEndError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cpuinfo_parsing():
    assert cpuinfo_has_bf16("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpuinfo_has_bf16("flags\t\t: fpu avx512f amx_bf16\n")
    assert cpuinfo_has_bf16("Features\t: fp asimd sve bf16 i8mm\n")  # aarch64 (e.g. Graviton3)
    assert not cpuinfo_has_bf16("flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n")
    assert not cpuinfo_has_bf16("model name\t: bf16 marketing name\n")
