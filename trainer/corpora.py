"""Corpora: RECOLA (AVEC 2016 layout), a CSV manifest or the synthetic corpus -> Recordings.

Every loader returns recordings whose contours are on the shared 25 Hz grid: frame i holds
the rating at time ``i / 25 + annotation_delay_s`` seconds and is paired with the audio of
``[i / 25, (i + 1) / 25)`` s. A delay therefore drops the first ``delay`` seconds of ratings
(raters react late); the last ``delay`` seconds of audio then have no label and are dropped.
Contours at another rate (or delays that are not a multiple of 40 ms) are linearly
interpolated on the file's time column (which must increase and start within the first
second; grid points before its first time take the first value).

Lengths: if the ratings (before the delay) cover more than 2 s less, or more, than the
audio, the recording is rejected as mismatched. A smaller difference (RECOLA has 7501
frames for 300 s of audio) is cut away: audio and contours are trimmed to the shorter, so
that ``len(audio) == 640 * len(contour)`` (640 samples = 40 ms at 16 kHz).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c2p_stream.audio import CONTOUR_RATE_HZ, SAMPLE_RATE_HZ, AudioError, frame_pair, load_audio
from c2p_stream.config import CorpusConfig

ATTRIBUTES = ("arousal", "valence")
SPLITS = ("train", "dev")  # RECOLA's test ratings are not public
RATERS = ("FM1", "FM2", "FM3", "FF1", "FF2", "FF3")  # RECOLA's six annotators
FRAME_SAMPLES = SAMPLE_RATE_HZ // CONTOUR_RATE_HZ  # 640 audio samples per 40 ms contour frame
MAX_LENGTH_MISMATCH_S = 2.0
_READER_VERSION = 1  # bump when loading semantics change: part of corpus_identity
_RECOLA_NAME = re.compile(r"^(train|dev)_(\d+)$")
_TIME_TOL_S = 1e-4


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the file (and line, column) and what was expected."""


@dataclass(frozen=True)
class Recording:
    """One recording: audio (n,) float32 at 16 kHz, contours {attribute: (n // 640,) float32 at 25 Hz}."""

    name: str
    split: str
    audio: np.ndarray
    contours: dict[str, np.ndarray]


# ----------------------------------------------------------------------------- public API


def load_corpus(config: CorpusConfig, base_dir: Path | None = None) -> list[Recording]:
    """All train and dev recordings, train first; relative paths resolve against `base_dir`."""
    if config.annotation_delay_s < 0 or not math.isfinite(config.annotation_delay_s):
        raise CorpusError(f"corpus.annotation_delay_s: expected a finite number >= 0, got {config.annotation_delay_s}")
    if config.kind == "synthetic":
        recordings = _load_synthetic(config)
        where = f"synthetic corpus (seed {config.seed})"
    elif config.kind == "recola":
        root = _corpus_path(config, base_dir)
        recordings = _load_recola(root, config)
        where = str(root)
    elif config.kind == "manifest":
        path = _corpus_path(config, base_dir)
        recordings = _load_manifest(path, config.annotation_delay_s)
        where = str(path)
    else:
        raise CorpusError(f"corpus.kind: expected 'synthetic', 'recola' or 'manifest', got {config.kind!r}")
    for split in SPLITS:
        if not split_recordings(recordings, split):
            raise CorpusError(f"{where}: the {split} split is empty (training needs train and dev recordings)")
    return recordings


def corpus_identity(config: CorpusConfig, base_dir: Path | None = None) -> dict:
    """JSON-able identity of the corpus inputs: the synthetic spec, or every file's path, size and mtime_ns.

    Used in the feature-cache key, so any change to a file (or the loader) gives a new key.
    """
    ident = {
        "kind": config.kind,
        "reader_version": _READER_VERSION,
        "annotation_delay_s": config.annotation_delay_s,
    }
    if config.kind == "synthetic":
        import trainer.synthetic as synthetic

        source = Path(synthetic.__file__).read_bytes()  # a changed generator is a changed corpus
        ident["spec"] = {
            "seed": config.seed, "n_train": config.n_train, "n_dev": config.n_dev, "session_s": config.session_s
        }
        ident["generator_sha256"] = hashlib.sha256(source).hexdigest()
        return ident
    if config.kind == "recola":
        root = _corpus_path(config, base_dir)
        files = [f for rec in _recola_files(root, config.ratings) for f in (rec[2], *rec[3].values())]
        ident["ratings"] = config.ratings
    else:
        root = _corpus_path(config, base_dir)
        files = [root] + [f for row in _read_manifest(root) for f in (row[2], row[3])]
    ident["root"] = str(root.resolve())
    ident["files"] = [_file_stamp(f) for f in files]
    return ident


def split_recordings(recordings: list[Recording], split: str) -> list[Recording]:
    """The recordings of one split ('train' or 'dev'), in corpus order."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return [r for r in recordings if r.split == split]


def window_recordings(recordings: list[Recording]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """2 s / 1 s windows of every recording, in order.

    Returns audio (N, 32000) float32, contours {attribute: (N, 50) float32} and index (N, 2)
    int64 rows ``[recording_idx, window_idx]``; window w of a recording covers [w, w + 2) s.
    """
    return _windows(recordings, with_audio=True)


def window_contours(recordings: list[Recording]) -> dict[str, np.ndarray]:
    """The contours of ``window_recordings`` alone, without copying any audio (the trainer's need)."""
    return _windows(recordings, with_audio=False)[1]


def _windows(recordings: list[Recording], with_audio: bool):
    audio_parts, index_parts = [], []
    contour_parts: dict[str, list[np.ndarray]] = {}
    for i, rec in enumerate(recordings):
        audio_w = None
        for attr, contour in rec.contours.items():
            audio_w, contour_w = frame_pair(rec.audio, contour)  # strided views: no copy
            contour_parts.setdefault(attr, []).append(contour_w)
        if audio_w is None:
            raise ValueError(f"recording {rec.name} has no contours")
        audio_parts.append(audio_w)
        index_parts.append(np.stack([np.full(len(audio_w), i), np.arange(len(audio_w))], axis=1))
    if not audio_parts:
        empty = {a: np.empty((0, 50), np.float32) for a in ATTRIBUTES}
        return np.empty((0, 32000), np.float32), empty, np.empty((0, 2), np.int64)
    audio = np.concatenate(audio_parts).astype(np.float32, copy=False) if with_audio else None
    contours = {a: np.concatenate(parts).astype(np.float32, copy=False) for a, parts in contour_parts.items()}
    return audio, contours, np.concatenate(index_parts).astype(np.int64)


# ----------------------------------------------------------------------------- shared helpers


def _corpus_path(config: CorpusConfig, base_dir: Path | None) -> Path:
    if not config.path:
        raise CorpusError(f"corpus.path: required for kind {config.kind!r} (a RECOLA folder or a manifest CSV)")
    path = Path(config.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if config.kind == "recola" and not path.is_dir():
        raise CorpusError(f"{path}: no such folder (corpus.path of a RECOLA corpus)")
    if config.kind == "manifest" and not path.is_file():
        raise CorpusError(f"{path}: no such manifest file (corpus.path)")
    return path


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _audio(path: Path) -> np.ndarray:
    try:
        return load_audio(path)
    except AudioError as err:
        raise CorpusError(str(err)) from None


def _make_recording(name: str, split: str, audio: np.ndarray, ratings: dict, delay_s: float) -> Recording:
    """Put each attribute's (times_s (k,), values (k,), source) on the 25 Hz grid and trim lengths."""
    audio_s = len(audio) / SAMPLE_RATE_HZ
    contours = {}
    for attr, (times, values, source) in ratings.items():
        ratings_s = (math.floor(times[-1] * CONTOUR_RATE_HZ + 1e-6) + 1) / CONTOUR_RATE_HZ
        if abs(ratings_s - audio_s) > MAX_LENGTH_MISMATCH_S:
            shorter = "shorter" if ratings_s < audio_s else "longer"
            raise CorpusError(
                f"{source}: {attr} ratings cover {ratings_s:.2f} s but the audio of {name} lasts {audio_s:.2f} s "
                f"({shorter} by more than {MAX_LENGTH_MISMATCH_S:g} s): wrong or truncated file?"
            )
        contours[attr] = _on_contour_grid(times, values, delay_s, source)
    n_frames = min([len(audio) // FRAME_SAMPLES] + [len(c) for c in contours.values()])
    return Recording(
        name=name,
        split=split,
        audio=np.ascontiguousarray(audio[: n_frames * FRAME_SAMPLES], dtype=np.float32),
        contours={a: np.ascontiguousarray(c[:n_frames], dtype=np.float32) for a, c in contours.items()},
    )


def _on_contour_grid(times: np.ndarray, values: np.ndarray, delay_s: float, source: str) -> np.ndarray:
    """Ratings sampled at t = i / 25 + delay_s for every such t within the file: (m,) float32."""
    step_s = 1.0 / CONTOUR_RATE_HZ
    shift = delay_s * CONTOUR_RATE_HZ
    on_grid = abs(times[0]) < _TIME_TOL_S and np.all(np.abs(np.diff(times) - step_s) < _TIME_TOL_S)
    if on_grid and abs(shift - round(shift)) < 1e-6:
        out = values[round(shift) :]  # exact: no interpolation for 40 ms files and whole-frame delays
    else:
        n = max(math.floor((times[-1] - delay_s) * CONTOUR_RATE_HZ + 1e-6) + 1, 0)
        out = np.interp(np.arange(n) * step_s + delay_s, times, values)
    if len(out) == 0:
        raise CorpusError(f"{source}: ratings end at {times[-1]:.2f} s, before the annotation delay of {delay_s:g} s")
    return out.astype(np.float32)


def _read_table(path: Path, required: tuple[str, ...], time_first: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A ';' or ',' separated table with a header -> (times_s (k,), {column: (k,)}), checked.

    `time_first`: the first column is the time (any name containing 'time'); else a 'time' column.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: cannot read ({err})") from None
    if not lines or not lines[0].strip():
        raise CorpusError(f"{path}: line 1: expected a header row, found an empty line")
    delimiter = ";" if ";" in lines[0] else ","
    header = [h.strip() for h in next(csv.reader([lines[0]], delimiter=delimiter))]
    if time_first:
        if "time" not in header[0].lower():
            raise CorpusError(
                f"{path}: line 1: expected the first column to be the time in seconds (e.g. 'time'), found {header[0]!r}"
            )
        time_col = 0
    elif "time" in header:
        time_col = header.index("time")
    else:
        raise CorpusError(f"{path}: line 1: missing column 'time' (found: {', '.join(header)})")
    lowered = [h.lower() for h in header]
    missing = [c for c in required if c.lower() not in lowered]
    if missing:
        raise CorpusError(f"{path}: line 1: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    wanted = {c: lowered.index(c.lower()) for c in required}
    rows, line_nos = [], []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = next(csv.reader([line], delimiter=delimiter))
        if len(cells) != len(header):
            raise CorpusError(f"{path}: line {line_no}: expected {len(header)} fields as in the header, got {len(cells)}")
        row = [_number(cells[time_col], path, line_no, header[time_col])]
        row += [_number(cells[j], path, line_no, header[j]) for j in wanted.values()]
        rows.append(row)
        line_nos.append(line_no)
    if len(rows) < 2:
        raise CorpusError(f"{path}: expected at least 2 data rows, found {len(rows)}")
    table = np.asarray(rows, dtype=np.float64)
    _check_times(table[:, 0], line_nos, path, header[time_col])
    return table[:, 0], {c: table[:, k + 1] for k, c in enumerate(wanted)}


def _number(text: str, path: Path, line_no: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        where = f"{path}: line {line_no}, column {column!r}"
        raise CorpusError(f"{where}: expected a number, found {text.strip()!r}") from None
    if not math.isfinite(value):
        where = f"{path}: line {line_no}, column {column!r}"
        raise CorpusError(f"{where}: expected a finite number, found {text.strip()!r}")
    return value


def _check_times(times: np.ndarray, line_nos: list[int], path: Path, column: str) -> None:
    if times[0] < 0 or times[0] > 1.0:
        where = f"{path}: line {line_nos[0]}, column {column!r}"
        raise CorpusError(f"{where}: time must start between 0 and 1 s, found {times[0]:g}")
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = bad[0] + 1
        where = f"{path}: line {line_nos[i]}, column {column!r}"
        raise CorpusError(f"{where}: time must increase, found {times[i]:g} after {times[i - 1]:g}")


# ----------------------------------------------------------------------------- ARFF (gold standard)


def read_arff(path: Path) -> tuple[list[tuple[str, str]], list[tuple[int, list]]]:
    """The subset of ARFF that AVEC uses: string/numeric attributes, dense rows.

    Returns ([(name, 'string' | 'numeric')], [(line_no, values)]); numbers as float.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: cannot read ({err})") from None
    attributes: list[tuple[str, str]] = []
    rows: list[tuple[int, list]] = []
    in_data = False
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if not in_data:
            keyword = line.split(None, 1)[0].lower()
            if keyword == "@relation":
                continue
            if keyword == "@data":
                in_data = True
                continue
            if keyword != "@attribute":
                found = line[:40]
                raise CorpusError(f"{path}: line {line_no}: expected @relation, @attribute or @data, found {found!r}")
            m = re.match(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)$", line, re.IGNORECASE)
            kind = m.group(2).strip().lower() if m else ""
            if kind in ("numeric", "real", "integer"):
                kind = "numeric"
            if kind not in ("numeric", "string"):
                found = line[:60]
                raise CorpusError(f"{path}: line {line_no}: unsupported ARFF attribute {found!r} (only numeric and string)")
            attributes.append((m.group(1).strip("'\""), kind))
            continue
        if line.startswith("{"):
            raise CorpusError(f"{path}: line {line_no}: sparse ARFF rows are not supported")
        cells = next(csv.reader([line], quotechar="'", skipinitialspace=True))
        if len(cells) != len(attributes):
            raise CorpusError(f"{path}: line {line_no}: expected {len(attributes)} values, found {len(cells)}")
        values = [
            _number(cell, path, line_no, name) if kind == "numeric" else cell
            for cell, (name, kind) in zip(cells, attributes)
        ]
        rows.append((line_no, values))
    if not in_data:
        raise CorpusError(f"{path}: no @data section")
    return attributes, rows


def _read_gold_standard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """AVEC gold-standard ARFF -> (times_s (k,), values (k,))."""
    attributes, rows = read_arff(path)
    numeric = [i for i, (_, kind) in enumerate(attributes) if kind == "numeric"]
    names = [name for name, _ in attributes]
    time_idx = [i for i in numeric if names[i].lower() in ("frametime", "time")]
    if len(numeric) != 2 or len(time_idx) != 1:
        raise CorpusError(
            f"{path}: expected the numeric attributes frameTime and one rating (e.g. GoldStandard), "
            f"found: {', '.join(names)}"
        )
    (value_idx,) = [i for i in numeric if i != time_idx[0]]
    if len(rows) < 2:
        raise CorpusError(f"{path}: expected at least 2 data rows, found {len(rows)}")
    times = np.array([v[time_idx[0]] for _, v in rows])
    _check_times(times, [n for n, _ in rows], path, names[time_idx[0]])
    return times, np.array([v[value_idx] for _, v in rows])


# ----------------------------------------------------------------------------- RECOLA


def _recola_files(root: Path, ratings: str) -> list[tuple[str, str, Path, dict[str, Path]]]:
    """[(name, split, audio_path, {attribute: ratings_path})] for train and dev, sorted by split and number."""
    audio_dir = root / "recordings_audio"
    if ratings == "raters_mean":
        ratings_dirs, suffix = {a: root / "ratings_individual" / a for a in ATTRIBUTES}, ".csv"
    else:
        ratings_dirs, suffix = {a: root / "ratings_gold_standard" / a for a in ATTRIBUTES}, ".arff"
    for folder in (audio_dir, *ratings_dirs.values()):
        if not folder.is_dir():
            raise CorpusError(f"{folder}: no such folder (expected the AVEC 2016 layout under {root})")

    def names(folder: Path, ext: str) -> dict[str, Path]:
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ext and _RECOLA_NAME.match(p.stem)}

    audio = names(audio_dir, ".wav")
    rated = {a: names(d, suffix) for a, d in ratings_dirs.items()}
    problems = []
    for attr, files in rated.items():
        for n in sorted(audio.keys() - files.keys()):
            problems.append(f"{audio[n]} has no {attr} ratings (expected {ratings_dirs[attr] / (n + suffix)})")
        for n in sorted(files.keys() - audio.keys()):
            problems.append(f"{files[n]} has no audio (expected {audio_dir / (n + '.wav')})")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CorpusError(f"{root}: audio and rating files do not match: " + "; ".join(problems[:5]) + more)

    def order(name: str) -> tuple[int, int]:
        split, number = _RECOLA_NAME.match(name).groups()
        return SPLITS.index(split), int(number)

    return [(n, n.split("_")[0], audio[n], {a: rated[a][n] for a in ATTRIBUTES}) for n in sorted(audio, key=order)]


def _read_raters_mean(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RECOLA individual ratings (time;FM1;...;FF3) -> (times_s (k,), mean of the six raters (k,))."""
    times, columns = _read_table(path, RATERS, time_first=True)
    return times, np.mean([columns[r] for r in RATERS], axis=0)


def _load_recola(root: Path, config: CorpusConfig) -> list[Recording]:
    reader = _read_raters_mean if config.ratings == "raters_mean" else _read_gold_standard
    recordings = []
    for name, split, audio_path, rating_paths in _recola_files(root, config.ratings):
        ratings = {a: (*reader(p), str(p)) for a, p in rating_paths.items()}
        recordings.append(_make_recording(name, split, _audio(audio_path), ratings, config.annotation_delay_s))
    return recordings


# ----------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> list[tuple[str, str, Path, Path]]:
    """Manifest CSV (audio,contour,split; paths relative to its folder) -> [(name, split, audio, contour)]."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: cannot read manifest ({err})") from None
    header = [h.strip() for h in lines[0]] if lines else []
    missing = [c for c in ("audio", "contour", "split") if c not in header]
    if missing:
        raise CorpusError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} "
            f"(expected the header audio,contour,split; found: {', '.join(header)})"
        )
    col = {c: header.index(c) for c in ("audio", "contour", "split")}
    rows, seen = [], {}
    for line_no, cells in enumerate(lines[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise CorpusError(f"{path}: line {line_no}: expected {len(header)} fields as in the header, got {len(cells)}")
        split = cells[col["split"]].strip()
        if split not in SPLITS:
            raise CorpusError(f"{path}: line {line_no}, column 'split': expected 'train' or 'dev', found {split!r}")
        files = {}
        for c in ("audio", "contour"):
            rel = cells[col[c]].strip()
            files[c] = path.parent / rel
            if not rel or not files[c].is_file():
                raise CorpusError(f"{path}: line {line_no}, column {c!r}: no such file {str(files[c])!r}")
        name = Path(cells[col["audio"]].strip()).with_suffix("").as_posix()
        if name in seen:
            where = f"{path}: line {line_no}, column 'audio'"
            raise CorpusError(f"{where}: {name!r} is already listed on line {seen[name]}")
        seen[name] = line_no
        rows.append((name, split, files["audio"], files["contour"]))
    return rows


def _load_manifest(path: Path, delay_s: float) -> list[Recording]:
    recordings = []
    for name, split, audio_path, contour_path in _read_manifest(path):
        times, columns = _read_table(contour_path, ATTRIBUTES, time_first=False)
        ratings = {a: (times, columns[a], str(contour_path)) for a in ATTRIBUTES}
        recordings.append(_make_recording(name, split, _audio(audio_path), ratings, delay_s))
    return sorted(recordings, key=lambda r: SPLITS.index(r.split))  # train first, manifest order within


# ----------------------------------------------------------------------------- synthetic


def _load_synthetic(config: CorpusConfig) -> list[Recording]:
    from trainer.synthetic import SyntheticCorpusSpec, make_corpus

    try:
        spec = SyntheticCorpusSpec(config.seed, config.n_train, config.n_dev, config.session_s)
    except ValueError as err:
        raise CorpusError(f"corpus (synthetic): {err}") from None
    recordings = []
    for s in make_corpus(spec):
        times = np.arange(len(s.arousal)) / CONTOUR_RATE_HZ
        ratings = {a: (times, getattr(s, a), f"synthetic {s.name}") for a in ATTRIBUTES}
        recordings.append(_make_recording(s.name, s.split, s.audio, ratings, config.annotation_delay_s))
    return recordings
