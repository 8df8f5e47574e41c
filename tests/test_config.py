from pathlib import Path

import pytest

from c2p_stream.config import (
    ConfigError,
    RunConfig,
    dump_config,
    from_dict,
    load_config,
    with_overrides,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "recola.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, RunConfig)
    assert config.model.k == 4 and config.train.alpha == 0.2


def test_round_trip(tmp_path):
    config = load_config(CONFIGS / "recola.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("corpus: {kind: synthetic}\ntrain: {alfa: 0.3}\n", r"bad\.yaml: train\.alfa: unknown key"),
        ("corpus: {kind: synthetic}\ntrain: {alpha: high}\n", r"bad\.yaml: train\.alpha: expected float, got str 'high'"),
        ("corpus: {kind: synthetic}\nmodel: {k: 4.5}\n", r"bad\.yaml: model\.k: expected int, got float 4.5"),
        ("corpus: {kind: synthetic}\ntrain: {coupling: 1}\n", r"train\.coupling: expected bool, got int 1"),
        ("corpus: {kind: cremad}\n", r"corpus\.kind: expected one of 'synthetic', 'recola', 'manifest'"),
        ("corpus: {kind: synthetic}\ntrain: {attributes: [arousal, dominance]}\n", r"train\.attributes\[1\]: expected one of"),
        ("front_end: {kind: logmel}\n", r"bad\.yaml: corpus: missing required field"),
        ("corpus: [1, 2]\n", r"corpus: expected a mapping, got list"),
        ("corpus: {kind: synthetic\n", r"bad\.yaml: not valid YAML"),
        ("- 1\n- 2\n", r"top level: expected a mapping"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_exponent_without_dot_is_a_float(tmp_path):
    config = load_config(write(tmp_path, "corpus: {kind: synthetic}\ntrain: {lr: 1e-3}\n"))
    assert config.train.lr == pytest.approx(1e-3)


def test_overrides_are_type_checked():
    config = from_dict(RunConfig, {"corpus": {"kind": "synthetic"}})
    assert with_overrides(config, {"train.max_epochs": 3}).train.max_epochs == 3
    with pytest.raises(ConfigError, match="command line: train.max_epochs: expected int"):
        with_overrides(config, {"train.max_epochs": "three"})
    with pytest.raises(ConfigError, match="train.epochs: unknown key"):
        with_overrides(config, {"train.epochs": 3})
