"""Typed configuration: dataclasses, strict YAML in and out, dotted overrides.

A config file is a YAML mapping whose keys mirror the dataclasses below. Loading is
strict: an unknown key, a value of the wrong type or a missing required field raises
:class:`ConfigError` naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(ValueError):
    """A config file or override that does not match its dataclass."""


@dataclass
class FrontEndConfig:
    """Speech front end: Wav2Vec2 hidden state of block `layer`, or a log-mel spectrogram."""

    kind: Literal["wav2vec2", "logmel"] = "wav2vec2"
    model: str = "facebook/wav2vec2-large-lv60"  # Hugging Face id (local cache only) or a directory
    layer: int = 15  # transformers' hidden_states index: output of the 15th transformer block
    n_mels: int = 64
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 16  # windows per front-end forward pass


@dataclass
class CorpusConfig:
    """Where windows come from: RECOLA (AVEC 2016 layout), a CSV manifest or the synthetic corpus."""

    kind: Literal["synthetic", "recola", "manifest"] = "synthetic"
    path: str | None = None  # RECOLA root folder or manifest CSV
    ratings: Literal["raters_mean", "gold_standard"] = "raters_mean"  # RECOLA only
    annotation_delay_s: float = 0.0  # labels at t + delay are paired with audio at t
    seed: int = 0  # synthetic only
    n_train: int = 8
    n_dev: int = 4
    session_s: float = 60.0


@dataclass
class ModelConfig:
    k: int = 4  # clusters per attribute
    speech_preset: Literal["paper", "small"] = "paper"  # SpeechCNN size (Table 1 or a log-mel-sized one)


@dataclass
class TrainConfig:
    """Algorithm 1 settings; defaults are the paper's."""

    attributes: list[Literal["arousal", "valence"]] = field(default_factory=lambda: ["arousal", "valence"])
    alpha: float = 0.2  # L = alpha * L_affect + (1 - alpha) * L_speech
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 3  # early stopping: epochs without a relative loss drop of min_delta
    min_delta: float = 1e-3
    coupling: bool = False  # let the speech loss reach AffectNet (DESIGN.md); False = paper as written
    baselines: list[Literal["acc", "aac"]] = field(default_factory=lambda: ["acc", "aac"])
    seed: int = 0


@dataclass
class RunConfig:
    """Everything `c2p-train` needs for one run."""

    corpus: CorpusConfig
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str = "~/.cache/c2p-stream/features"


def load_config(path: str | Path, cls: type[T] = RunConfig) -> T:
    """Read a YAML file into `cls`, failing with a ConfigError that names the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: e.g. an integer literal too long to convert
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return from_dict(cls, {} if data is None else data, source=str(path))


def dump_config(config: Any) -> str:
    """YAML text that `load_config` reads back into an equal dataclass."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def with_overrides(config: T, overrides: dict[str, Any], source: str = "command line") -> T:
    """A copy of `config` with dotted keys (e.g. ``{"train.alpha": 0.5}``) replaced, type-checked."""
    data = dataclasses.asdict(config)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for name in parents:
            if not isinstance(node.get(name), dict):
                raise ConfigError(f"{source}: {dotted}: unknown key")
            node = node[name]
        if leaf not in node:
            raise ConfigError(f"{source}: {dotted}: unknown key")
        node[leaf] = value
    return from_dict(type(config), data, source=source)


def from_dict(cls: type[T], data: Any, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_describe(data)}")
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (expected one of: {', '.join(known)})")
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        key = prefix + f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], source, key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{source}: {key}: missing required field")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, source, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {key}: expected one of {choices}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_describe(value)}")
        return [_convert(args[0], item, source, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)  # PyYAML reads `1e-3` (no dot) as a string
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{source}: {key}: expected {tp.__name__}, got {_describe(value)}")


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # e.g. an int too long to print (over sys.get_int_max_str_digits())
        text = f"<{type(value).__name__} too large to show>"
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
