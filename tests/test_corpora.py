"""Tests for trainer.corpora: RECOLA layout, CSV manifest, synthetic corpus, windowing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from c2p_stream.audio import frame_pair
from c2p_stream.config import CorpusConfig
from trainer.corpora import (
    RATERS,
    CorpusError,
    corpus_identity,
    load_corpus,
    split_recordings,
    window_recordings,
)
from trainer.synthetic import SyntheticCorpusSpec, make_corpus, write_corpus

SR = 16_000
DURATIONS_S = {"train_1": 6.0, "train_2": 5.5, "dev_1": 6.0}


def write_rater_csv(path: Path, columns: dict[str, np.ndarray], step_s: float = 0.04) -> None:
    names = list(columns)
    n = len(next(iter(columns.values())))
    lines = [";".join(["time", *names])]
    lines += [";".join([f"{i * step_s:.6f}"] + [f"{columns[c][i]:.6f}" for c in names]) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_arff(path: Path, name: str, values: np.ndarray) -> None:
    rows = [f"'{name}',{i * 0.04:.6f},{v:.6f}" for i, v in enumerate(values)]
    header = ["@relation GoldStandard", "", "@attribute Instance_name string", "@attribute frameTime numeric",
              "@attribute GoldStandard numeric", "", "@data", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + rows) + "\n")


@pytest.fixture
def recola(tmp_path):
    """A RECOLA-layout folder with 2 train + 1 dev recordings; returns (root, known ratings)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "RECOLA"
    known = {}
    for name, duration_s in DURATIONS_S.items():
        n = int(duration_s * SR)
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
        (root / "recordings_audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "recordings_audio" / f"{name}.wav", audio.astype(np.float32), SR, subtype="FLOAT")
        n_frames = int(duration_s * 25) + 1  # RECOLA-like: one frame more than the audio
        for attr in ("arousal", "valence"):
            raters = {r: np.round(rng.uniform(-1, 1, n_frames), 6) for r in RATERS}
            gold = np.round(rng.uniform(-1, 1, n_frames), 6)
            write_rater_csv(root / "ratings_individual" / attr / f"{name}.csv", raters)
            write_arff(root / "ratings_gold_standard" / attr / f"{name}.arff", name, gold)
            known[name, attr] = {"raters": raters, "gold": gold}
    (root / "recordings_audio" / "test_1.wav").write_bytes(b"")  # the test split is ignored
    return root, known


def recola_config(root, **kw) -> CorpusConfig:
    return CorpusConfig(kind="recola", path=str(root), **kw)


def test_recola_raters_mean(recola):
    root, known = recola
    recs = load_corpus(recola_config(root))
    assert [(r.name, r.split) for r in recs] == [("train_1", "train"), ("train_2", "train"), ("dev_1", "dev")]
    for r in recs:
        n_frames = int(DURATIONS_S[r.name] * 25)  # the extra rating frame is cut to the audio
        assert r.audio.dtype == np.float32 and len(r.audio) == 640 * n_frames
        for attr in ("arousal", "valence"):
            expected = np.mean([known[r.name, attr]["raters"][c] for c in RATERS], axis=0)[:n_frames]
            assert r.contours[attr].dtype == np.float32
            np.testing.assert_allclose(r.contours[attr], expected, atol=1e-6)
    assert [r.name for r in split_recordings(recs, "dev")] == ["dev_1"]


def test_recola_gold_standard(recola):
    root, known = recola
    recs = load_corpus(recola_config(root, ratings="gold_standard"))
    for r in recs:
        for attr in ("arousal", "valence"):
            np.testing.assert_allclose(r.contours[attr], known[r.name, attr]["gold"][: len(r.contours[attr])], atol=1e-6)


def test_annotation_delay_shifts_labels(recola):
    root, known = recola
    base = load_corpus(recola_config(root, ratings="gold_standard"))[0]
    shifted = load_corpus(recola_config(root, ratings="gold_standard", annotation_delay_s=0.2))[0]
    gold = known["train_1", "arousal"]["gold"]
    # 0.2 s = 5 frames: audio frame i is paired with rating frame i + 5; the audio tail is dropped
    np.testing.assert_allclose(shifted.contours["arousal"], gold[5 : 5 + len(shifted.contours["arousal"])], atol=1e-6)
    assert len(shifted.contours["arousal"]) == len(gold) - 5
    assert len(shifted.audio) == 640 * len(shifted.contours["arousal"])
    np.testing.assert_array_equal(shifted.audio, base.audio[: len(shifted.audio)])
    # 0.1 s is not a whole frame: halfway between rating frames i + 2 and i + 3
    half = load_corpus(recola_config(root, ratings="gold_standard", annotation_delay_s=0.1))[0]
    np.testing.assert_allclose(half.contours["arousal"], (gold[2:-1] + gold[3:])[: len(half.contours["arousal"])] / 2, atol=1e-6)


def test_window_recordings_aligned(recola):
    root, _ = recola
    recs = load_corpus(recola_config(root))
    audio, contours, index = window_recordings(recs)
    per_rec = [len(frame_pair(r.audio, r.contours["arousal"])[0]) for r in recs]
    assert per_rec == [5, 4, 5]
    assert audio.shape == (14, 32000) and audio.dtype == np.float32
    assert contours["valence"].shape == (14, 50) and index.shape == (14, 2)
    for row, (i, w) in enumerate(index):
        np.testing.assert_array_equal(audio[row], recs[i].audio[w * SR : w * SR + 32000])
        np.testing.assert_array_equal(contours["valence"][row], recs[i].contours["valence"][w * 25 : w * 25 + 50])


def test_missing_rater_column(recola):
    root, known = recola
    path = root / "ratings_individual" / "valence" / "train_2.csv"
    raters = {k: v for k, v in known["train_2", "valence"]["raters"].items() if k != "FF2"}
    write_rater_csv(path, raters)
    with pytest.raises(CorpusError, match=r"train_2\.csv: line 1: missing column\(s\) FF2 \(found: time, FM1, FM2, FM3, FF1, FF3\)"):
        load_corpus(recola_config(root))


def test_nan_rating_names_file_line_column(recola):
    root, _ = recola
    path = root / "ratings_individual" / "arousal" / "dev_1.csv"
    lines = path.read_text().splitlines()
    cells = lines[6].split(";")
    cells[3] = "nan"  # FM3
    lines[6] = ";".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"dev_1\.csv: line 7, column 'FM3': expected a finite number, found 'nan'"):
        load_corpus(recola_config(root))


def test_non_numeric_gold_standard(recola):
    root, _ = recola
    path = root / "ratings_gold_standard" / "valence" / "train_1.arff"
    lines = path.read_text().splitlines()
    lines[10] = "'train_1',0.120000,oops"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"train_1\.arff: line 11, column 'GoldStandard': expected a number, found 'oops'"):
        load_corpus(recola_config(root, ratings="gold_standard"))


def test_unsupported_arff(recola):
    root, _ = recola
    path = root / "ratings_gold_standard" / "arousal" / "train_2.arff"
    path.write_text(path.read_text().replace("@attribute frameTime numeric", "@attribute frameTime {a,b}"))
    with pytest.raises(CorpusError, match=r"train_2\.arff: line 4: unsupported ARFF attribute"):
        load_corpus(recola_config(root, ratings="gold_standard"))


def test_mismatched_file_lists(recola):
    root, _ = recola
    (root / "ratings_individual" / "valence" / "train_2.csv").unlink()
    shutil.copy(root / "ratings_individual" / "arousal" / "dev_1.csv", root / "ratings_individual" / "arousal" / "dev_7.csv")
    with pytest.raises(CorpusError) as err:
        load_corpus(recola_config(root))
    message = str(err.value)
    assert "recordings_audio/train_2.wav has no valence ratings (expected" in message
    assert "ratings_individual/arousal/dev_7.csv has no audio (expected" in message


def test_missing_folder(recola, tmp_path):
    root, _ = recola
    shutil.rmtree(root / "ratings_individual" / "valence")
    with pytest.raises(CorpusError, match=r"ratings_individual/valence: no such folder"):
        load_corpus(recola_config(root))
    with pytest.raises(CorpusError, match=r"nowhere: no such folder"):
        load_corpus(recola_config(tmp_path / "nowhere"))


def test_short_contour(recola):
    root, known = recola
    path = root / "ratings_individual" / "arousal" / "train_1.csv"
    write_rater_csv(path, {k: v[:90] for k, v in known["train_1", "arousal"]["raters"].items()})  # 3.6 s of 6 s
    with pytest.raises(CorpusError, match=r"train_1\.csv: arousal ratings cover 3\.60 s but the audio of train_1 lasts 6\.00 s"):
        load_corpus(recola_config(root))
    write_rater_csv(path, {k: v[:130] for k, v in known["train_1", "arousal"]["raters"].items()})  # 5.2 s: cut
    rec = load_corpus(recola_config(root))[0]
    assert len(rec.contours["arousal"]) == len(rec.contours["valence"]) == 130
    assert len(rec.audio) == 130 * 640


def test_empty_split(recola):
    root, _ = recola
    for path in root.rglob("dev_1.*"):
        path.unlink()
    with pytest.raises(CorpusError, match=r"the dev split is empty"):
        load_corpus(recola_config(root))


def test_relative_path_and_identity(recola):
    root, _ = recola
    config = CorpusConfig(kind="recola", path="RECOLA")
    assert len(load_corpus(config, base_dir=root.parent)) == 3
    ident = corpus_identity(config, base_dir=root.parent)
    json.dumps(ident)
    assert len(ident["files"]) == 9  # 3 audio + 3 x 2 rating files
    assert corpus_identity(config, base_dir=root.parent) == ident
    path = root / "ratings_individual" / "arousal" / "train_1.csv"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1000))
    assert corpus_identity(config, base_dir=root.parent) != ident
    assert corpus_identity(CorpusConfig(kind="recola", path="RECOLA", ratings="gold_standard"), root.parent) != ident


# ----------------------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path):
    spec = SyntheticCorpusSpec(seed=3, n_train=2, n_dev=1, session_s=5.0)
    manifest = write_corpus(spec, tmp_path / "synth")
    recs = load_corpus(CorpusConfig(kind="manifest", path=str(manifest)))
    sessions = make_corpus(spec)
    assert [(r.name, r.split) for r in recs] == [(f"audio/{s.name}", s.split) for s in sessions]
    for r, s in zip(recs, sessions):
        np.testing.assert_array_equal(r.audio, s.audio)
        np.testing.assert_allclose(r.contours["arousal"], s.arousal, atol=1e-6)
        np.testing.assert_allclose(r.contours["valence"], s.valence, atol=1e-6)


def write_manifest_corpus(root: Path, rate_hz: float = 10.0, duration_s: float = 5.0) -> Path:
    """Manifest with linear-ramp contours at `rate_hz`, so interpolation is exact."""
    for name, split in (("a", "train"), ("b", "dev")):
        sf.write(root / f"{name}.wav", np.zeros(int(duration_s * SR), np.float32) + 0.01, SR)
        t = np.arange(int(duration_s * rate_hz) + 1) / rate_hz
        rows = [f"{ti:.6f},{0.1 * ti:.6f},{0.5 - 0.2 * ti:.6f}" for ti in t]
        (root / f"{name}.csv").write_text("time,arousal,valence\n" + "\n".join(rows) + "\n")
    manifest = root / "manifest.csv"
    manifest.write_text("audio,contour,split\na.wav,a.csv,train\nb.wav,b.csv,dev\n")
    return manifest


def test_manifest_resamples_to_25_hz(tmp_path):
    manifest = write_manifest_corpus(tmp_path, rate_hz=10.0)
    recs = load_corpus(CorpusConfig(kind="manifest", path="manifest.csv"), base_dir=tmp_path)
    t = np.arange(125) / 25
    for r in recs:
        assert len(r.contours["arousal"]) == 125 and len(r.audio) == 5 * SR
        np.testing.assert_allclose(r.contours["arousal"], 0.1 * t, atol=1e-6)
        np.testing.assert_allclose(r.contours["valence"], 0.5 - 0.2 * t, atol=1e-6)
    delayed = load_corpus(CorpusConfig(kind="manifest", path=str(manifest), annotation_delay_s=0.5))[0]
    np.testing.assert_allclose(delayed.contours["arousal"], 0.1 * (t[: len(delayed.contours["arousal"])] + 0.5), atol=1e-6)


def test_manifest_errors(tmp_path):
    manifest = write_manifest_corpus(tmp_path)
    config = CorpusConfig(kind="manifest", path=str(manifest))
    manifest.write_text("audio,contour,split\na.wav,a.csv,train\nb.wav,b.csv,test\n")
    with pytest.raises(CorpusError, match=r"manifest\.csv: line 3, column 'split': expected 'train' or 'dev', found 'test'"):
        load_corpus(config)
    manifest.write_text("audio,contour,split\na.wav,a.csv,train\nb.wav,missing.csv,dev\n")
    with pytest.raises(CorpusError, match=r"manifest\.csv: line 3, column 'contour': no such file .*missing\.csv"):
        load_corpus(config)
    manifest.write_text("audio,contours,split\n")
    with pytest.raises(CorpusError, match=r"manifest\.csv: line 1: missing column\(s\) contour"):
        load_corpus(config)
    manifest.write_text("audio,contour,split\na.wav,a.csv,train\nb.wav,b.csv,dev\n")
    lines = (tmp_path / "b.csv").read_text().splitlines()
    lines[4], lines[5] = lines[5], lines[4]
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"b\.csv: line 6, column 'time': time must increase, found 0\.3 after 0\.4"):
        load_corpus(config)
    (tmp_path / "b.csv").write_text("time,arousal,valence\n0,0.1,0.2\n0.1,,0.2\n")
    with pytest.raises(CorpusError, match=r"b\.csv: line 3, column 'arousal': expected a number, found ''"):
        load_corpus(config)
    with pytest.raises(CorpusError, match=r"nothing\.csv: no such manifest file"):
        load_corpus(CorpusConfig(kind="manifest", path=str(tmp_path / "nothing.csv")))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_loader():
    config = CorpusConfig(kind="synthetic", seed=1, n_train=2, n_dev=1, session_s=4.0)
    recs = load_corpus(config)
    sessions = make_corpus(SyntheticCorpusSpec(seed=1, n_train=2, n_dev=1, session_s=4.0))
    assert [(r.name, r.split) for r in recs] == [(s.name, s.split) for s in sessions]
    for r, s in zip(recs, sessions):
        np.testing.assert_array_equal(r.audio, s.audio)
        np.testing.assert_array_equal(r.contours["arousal"], s.arousal)
        np.testing.assert_array_equal(r.contours["valence"], s.valence)
    ident = corpus_identity(config)
    assert ident["spec"] == {"seed": 1, "n_train": 2, "n_dev": 1, "session_s": 4.0}
    assert corpus_identity(CorpusConfig(kind="synthetic", seed=2, n_train=2, n_dev=1, session_s=4.0)) != ident
    with pytest.raises(CorpusError, match="dev split is empty"):
        load_corpus(CorpusConfig(kind="synthetic", n_train=1, n_dev=0, session_s=3.0))


def test_manifest_identity(tmp_path):
    manifest = write_manifest_corpus(tmp_path)
    ident = corpus_identity(CorpusConfig(kind="manifest", path=str(manifest)))
    assert [Path(f["path"]).name for f in ident["files"]] == ["manifest.csv", "a.wav", "a.csv", "b.wav", "b.csv"]
    (tmp_path / "b.csv").write_text((tmp_path / "b.csv").read_text() + "5.1,0.51,-0.52\n")
    assert corpus_identity(CorpusConfig(kind="manifest", path=str(manifest)))["files"] != ident["files"]


def test_window_contours_equal_those_of_window_recordings():
    from trainer.corpora import window_contours, window_recordings
    from trainer.synthetic import SyntheticCorpusSpec, make_corpus
    from trainer.corpora import Recording

    sessions = make_corpus(SyntheticCorpusSpec(seed=1, n_train=2, n_dev=0, session_s=6.0))
    recordings = [Recording(s.name, s.split, s.audio, {"arousal": s.arousal, "valence": s.valence}) for s in sessions]
    expected = window_recordings(recordings)[1]
    got = window_contours(recordings)
    assert set(got) == set(expected) and all(np.array_equal(got[a], expected[a]) for a in got)
