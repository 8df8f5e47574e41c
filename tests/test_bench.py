"""The benchmark's core on a tiny random Wav2Vec2 and small heads (CPU, no timed assertions)."""

import json
import math

import numpy as np
import pytest
import torch

from c2p_stream import bench, features
from c2p_stream.audio import HOP_SAMPLES
from c2p_stream.engine import Engine
from c2p_stream.features import FrontEndError, Wav2Vec2Frontend, save_random_wav2vec2

LAYER = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_random_wav2vec2(tmp_path_factory.mktemp("tiny_w2v"), num_hidden_layers=4)


def tiny_options(tiny_dir, **overrides):
    settings = dict(model_dir=str(tiny_dir), layer=LAYER, head_preset="small", seconds=4.0, dtype="float32",
                    warmup=1, lever_hops=2, stream_hops=1)
    settings.update(overrides)
    return bench.BenchOptions(**settings)


def tiny_engine(tiny_dir, dtype=torch.float32, batch_size=16, seed=0):
    front_end = Wav2Vec2Frontend(tiny_dir, LAYER, dtype=dtype, batch_size=batch_size)
    heads = bench.build_heads(front_end.dim, 4, "small", seed)
    windows = bench.session_windows(6, seed=seed + 1)
    with torch.inference_mode():
        calibration = Wav2Vec2Frontend(tiny_dir, LAYER).extract(windows).clone()
    bench.calibrate_heads(heads, calibration, logit_std=2.0)
    checkpoint = bench.make_checkpoint(heads, front_end.spec, 4, seed)
    return Engine(checkpoint, front_end, speech_threshold_dbfs=bench.VAD_OFF_DBFS)


def test_main_prints_one_json_object_with_every_figure(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--model-dir", str(tiny_dir), "--layer", str(LAYER), "--head-preset", "small",
                       "--seconds", "4", "--dtype", "float32", "--warmup", "1", "--levers", "--lever-hops", "2",
                       "--streams", "1,3", "--stream-hops", "1", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert json.loads(out.read_text()) == result
    json.dumps(result, allow_nan=False)
    assert result["command"].startswith("python -m c2p_stream.bench --model-dir")
    assert result["setup"]["audio"]["hops"] == 3 and result["setup"]["wav2vec2"]["num_hidden_layers"] == 4
    for path in ("reference", "optimised"):
        figures = result[path]
        assert figures["hops"] == 3
        for key in ("p50_ms", "p99_ms", "mean_ms", "rtf", "rtf_p99", "peak_rss_mb", "peak_rss_delta_mb"):
            assert math.isfinite(figures[key]) and figures[key] >= 0, (path, key)
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert set(result["speedup"]) == {"mean", "p50"}
    agreement = result["agreement"]
    # fp32: the optimised engine (truncated model, exact CPU rewrites) reproduces the full model's hidden_states[L]
    assert agreement["pass"] and agreement["label_agreement"] == 1.0 and agreement["max_abs_dprob"] < 1e-3
    assert set(agreement["attributes"]) == {"arousal", "valence"}
    assert set(agreement["noise_floor"]) == {"what", "label_agreement", "max_abs_dprob"}
    assert result["targets"]["cpu_rtf_max"] == bench.TARGET_CPU_RTF and "met" in result["targets"]
    steps = {step["lever"]: step for step in result["levers"]["steps"]}
    for lever in ("reference", "truncate_15", "shared_pass", "inference_mode", "heads_channels_last",
                  "conv_encoder_channels_last", "heads_fused", "heads_fork", "conv_encoder_reuse", "engine"):
        assert lever in steps, lever
    assert all(step["max_abs_dprob"] < 1e-3 for step in steps.values() if "max_abs_dprob" in step
               and step["lever"] != "conv_encoder_reuse")  # every exact fp32 lever agrees with the reference
    assert "extra_max_abs_dprob_vs_exact_same_dtype" in steps["conv_encoder_reuse"]
    streams = result["streams"]
    assert [row["streams"] for row in streams["rows"]] == [1, 3]
    assert streams["max_real_time_streams"] in (0, 1, 3)


def test_agreement_logic():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    same = bench.check_agreement({"arousal": probs}, {"arousal": probs.copy()}, tolerance=0.05)
    assert same["pass"] and same["label_agreement"] == 1.0 and same["max_abs_dprob"] == 0.0
    assert sum(same["attributes"]["arousal"]["reference_label_counts"]) == 200

    flipped = probs.copy()
    i = int(np.argmax(probs.max(1)))  # swap the top class of one hop
    flipped[i] = probs[i][::-1]
    one_in_200 = bench.check_agreement({"a": probs}, {"a": flipped}, tolerance=1.0)
    assert one_in_200["label_agreement"] == 0.995 and one_in_200["pass"]  # >= 99% of hops
    one_in_50 = bench.check_agreement({"a": probs[:50]}, {"a": flipped[:50]}, tolerance=1.0)
    assert not one_in_50["pass"] if i < 50 else one_in_50["pass"]
    nudged = bench.check_agreement({"a": probs}, {"a": probs + 0.01}, tolerance=0.005)
    assert nudged["label_agreement"] == 1.0 and not nudged["pass"] and nudged["max_abs_dprob"] == pytest.approx(0.01)
    worst = bench.check_agreement({"a": probs, "b": probs}, {"a": probs, "b": flipped}, tolerance=1.0)
    assert worst["label_agreement"] == 0.995  # the worst attribute counts
    with pytest.raises(ValueError, match="reference probabilities"):
        bench.check_agreement({"a": probs}, {"a": probs[:10]}, tolerance=0.05)


def test_summarize_units():
    summary = bench.summarize([0.1, 0.2, 0.3])
    assert summary["p50_ms"] == 200.0 and summary["mean_ms"] == 200.0 and summary["rtf"] == 0.2
    assert summary["max_ms"] == 300.0 and bench.summarize([]) == {"hops": 0}


@pytest.mark.parametrize("batch_size", [16, 2])
def test_cross_stream_batching_gives_per_stream_labels(tiny_dir, batch_size):
    """The GPU path's batching logic, on CPU: N streams in one label_windows call per hop
    (chunked by batch_size) label each window as one engine per stream would."""
    windows = bench.session_windows(6, seed=0)
    batched = tiny_engine(tiny_dir, batch_size=batch_size)
    times, events = bench.run_streams(batched, windows, n_streams=5, hops=2, device=torch.device("cpu"))
    assert len(times) == 2 and [len(hop) for hop in events] == [5, 5]
    single = tiny_engine(tiny_dir, batch_size=1)
    for hop, hop_events in enumerate(events):
        for (start, window, _, stream), event in zip(bench.stream_items(windows, hop, 5), hop_events):
            alone = single.label_window(start, window, 0.0)
            assert event.stream == stream and event.seq == alone.seq == hop
            assert event.arousal.cluster == alone.arousal.cluster and event.valence.cluster == alone.valence.cluster
            np.testing.assert_allclose(event.arousal.probabilities, alone.arousal.probabilities, atol=1e-5)
            np.testing.assert_allclose(event.valence.probabilities, alone.valence.probabilities, atol=1e-5)
    labels = {e.arousal.cluster for hop in events for e in hop} | {e.valence.cluster for hop in events for e in hop}
    assert len(labels) > 1  # calibrated heads: the comparison is not between constant outputs


def test_dtype_handling(monkeypatch, tiny_dir):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="float16 on CPU is not supported"):
        bench.resolve_bench_dtype("float16", cpu)
    with pytest.raises(ValueError, match="float16 on CPU"):
        bench.run_benchmark(tiny_options(tiny_dir, dtype="float16"))
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(features, "cpu_supports_bf16", lambda native=native: native)
        assert bench.resolve_bench_dtype("auto", cpu) == expected
    assert bench.resolve_bench_dtype("float16", torch.device("cuda")) == torch.float16  # no GPU needed to decide
    with pytest.raises(ValueError, match="--cuda-graphs needs --device cuda"):
        bench.run_benchmark(tiny_options(tiny_dir, cuda_graphs=True))
    with pytest.raises(FrontEndError, match="CUDA graphs need a front end on a CUDA device"):
        features.CudaGraphFrontend(Wav2Vec2Frontend(tiny_dir, LAYER))


def test_bf16_engine_path_labels_every_hop(tiny_dir):
    engine = tiny_engine(tiny_dir, dtype=torch.bfloat16)
    head = engine.heads["arousal"].speech
    assert next(head.parameters()).dtype == torch.bfloat16
    assert next(p for p in head.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    windows = bench.session_windows(5, seed=0)
    times, probs = bench.time_hops(bench.engine_label(engine), windows, 1, torch.device("cpu"))
    assert len(times) == 4 and probs["arousal"].shape == (4, 4)
    assert np.all(np.isfinite(probs["valence"])) and np.allclose(probs["valence"].sum(1), 1.0, atol=1e-6)


def test_calibrated_heads_have_unit_activations_and_spread_logits():
    torch.manual_seed(0)
    feats = 1.5 + torch.randn(12, 99, 16)
    heads = bench.build_heads(16, 4, "small", seed=0)
    bench.calibrate_heads(heads, feats, logit_std=2.0)
    with torch.no_grad():
        for head in heads.values():
            logits = head(feats)
            assert torch.allclose(logits.mean(0), torch.zeros(4), atol=1e-4)
            assert float(logits.std()) == pytest.approx(2.0, rel=1e-3)
            x = ((feats - head.feature_mean) / head.feature_std).unsqueeze(1)
            x = head.conv[0](x)
            assert float(x.std()) == pytest.approx(1.0, rel=1e-3)


def test_conv_reuse_is_exact_without_per_window_normalisation(tmp_path):
    """The frame bookkeeping of the reuse lever (hop = 50 frames, fresh frames from sample
    15680) is exact; only the per-window normalisation makes reuse differ."""
    model_dir = save_random_wav2vec2(tmp_path / "plain", num_hidden_layers=2, do_normalize=False)
    front_end = Wav2Vec2Frontend(model_dir, 2)
    reuse = bench.ConvReuse(front_end)
    assert (reuse.new_from_frame, reuse.new_from_sample) == (49, 15680)
    windows = bench.session_windows(5, seed=2)
    with torch.inference_mode():
        for i, window in enumerate(windows):
            x = torch.from_numpy(window)[None]
            torch.testing.assert_close(reuse(x, i * HOP_SAMPLES), front_end(x), rtol=1e-4, atol=1e-4)


def test_training_section(tiny_dir):
    out = bench.measure_training(tiny_dir, tiny_options(tiny_dir, train_windows=8, demo_windows=24,
                                                        extract_batches=[2]),
                                 torch.device("cpu"), torch.float32)
    assert [e["batch"] for e in out["extraction"]] == [2, 64]
    assert all(e["windows_per_s"] > 0 for e in out["extraction"])
    assert [e["windows"] for e in out["epoch"]] == [24, 8] and all(e["epoch_s"] > 0 for e in out["epoch"])


def test_parse_args_maps_flags_onto_options():
    options, out = bench.parse_args(["--device", "cuda", "--streams", "1,64,256", "--no-cuda-graphs", "--levers",
                                     "--out", "x.json"])
    assert options.device == "cuda" and options.streams == [1, 64, 256] and options.cuda_graphs is False
    assert options.levers and out == "x.json"
    assert bench.parse_args([])[0].cuda_graphs is None  # on for CUDA by default
    with pytest.raises(SystemExit):
        bench.parse_args(["--streams", "0"])
