import json
import pickle

import numpy as np
import pytest
import torch

import c2p_stream.checkpoint as checkpoint_module
from c2p_stream.checkpoint import AttributeHead, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from c2p_stream.clusters import describe_clusters
from c2p_stream.models import AffectNet, AffectNetDims, SpeechCNN, SpeechCNNDims

SPEC = {"kind": "logmel", "n_mels": 16, "dim": 16}


def tiny_checkpoint(k=3):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    contours = rng.standard_normal((30, 50)).astype(np.float32)
    labels = rng.integers(0, k, 30)
    heads = {
        "arousal": AttributeHead("arousal", "c2p", SpeechCNN(SpeechCNNDims(dim=16, k=k, preset="small")),
                                 rng.standard_normal((k, 8)).astype(np.float32), describe_clusters(contours, labels, k),
                                 AffectNet(AffectNetDims(k=k)).eval()),
        "valence": AttributeHead("valence", "acc", SpeechCNN(SpeechCNNDims(dim=16, k=k, preset="small")),
                                 contours[:k].copy(), describe_clusters(contours, labels, k)),
    }
    return Checkpoint(front_end=SPEC, heads=heads, info={"name": "tiny"}), contours


def test_round_trip_reproduces_outputs(tmp_path):
    checkpoint, contours = tiny_checkpoint()
    save_checkpoint(checkpoint, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    features = torch.randn(4, 99, 16)
    for name, head in checkpoint.heads.items():
        head.speech.eval()
        assert torch.allclose(head.speech(features), loaded.heads[name].speech(features))
        np.testing.assert_array_equal(head.reference_labels(contours), loaded.heads[name].reference_labels(contours))
        assert loaded.heads[name].clusters == head.clusters
    assert loaded.front_end == SPEC and loaded.front_end_config(device="cpu").n_mels == 16
    assert loaded.describe()["attributes"]["valence"]["k"] == 3


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    checkpoint, _ = tiny_checkpoint()
    save_checkpoint(checkpoint, tmp_path / "ckpt")
    save_checkpoint(checkpoint, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    load_checkpoint(tmp_path / "ckpt")


def test_front_end_mismatch(tmp_path):
    checkpoint, _ = tiny_checkpoint()
    checkpoint.check_front_end({"kind": "logmel", "n_mels": 16, "dim": 16, "extra": 1})
    with pytest.raises(CheckpointError, match="front end mismatch: checkpoint expects kind='logmel'"):
        checkpoint.check_front_end({"kind": "wav2vec2", "layer": 15, "dim": 1024})


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no_manifest", "bad_json", "manifest_digit", "pickle",
                                    "missing_dir"])
def test_damaged_checkpoints_are_refused(tmp_path, damage):
    checkpoint, _ = tiny_checkpoint()
    path = save_checkpoint(checkpoint, tmp_path / "ckpt")
    weights, manifest = path / "model.safetensors", path / "checkpoint.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "bitflip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "no_manifest":
        manifest.unlink()
    elif damage == "bad_json":
        manifest.write_text("{not json")
    elif damage == "manifest_digit":  # still valid JSON: only the manifest's own checksum can tell
        text = manifest.read_text()
        at = text.index('"mean"') + text[text.index('"mean"'):].index("3")
        manifest.write_text(text[:at] + "2" + text[at + 1:])
    elif damage == "pickle":
        class Boom:
            def __reduce__(self):
                return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))
        weights.write_bytes(pickle.dumps(Boom()))
        meta = json.loads(manifest.read_text())
        import hashlib
        meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # even with matching checksums
        meta["manifest_sha256"] = checkpoint_module._manifest_sha256(meta)
        manifest.write_text(json.dumps(meta))
    elif damage == "missing_dir":
        path = tmp_path / "absent"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) or "model.safetensors" in str(err.value)
    assert not (tmp_path / "pwned").exists()
