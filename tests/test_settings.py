"""Configuration: defaults, layered overrides, and errors that name the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tracklstm import settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = settings.load_schema(ROOT / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_shipped_config_is_valid(config: dict) -> None:
    settings.check_config(config, SCHEMA)


def test_config_defaults_are_the_reference(config: dict) -> None:
    train = config["training"]
    assert train["batch_size"] == 1256
    assert train["learning_rate"] == pytest.approx(1e-4)
    assert train["epochs"] == 100
    assert train["scheduler"]["kind"] == "plateau"
    assert {k: train["scheduler"][k] for k in ("factor", "patience", "threshold", "min_lr")} == {
        "factor": 0.85,
        "patience": 5,
        "threshold": 1e-5,
        "min_lr": 1e-6,
    }
    assert train["grad_clip_value"] == 1.0
    assert train["early_stopping"]["patience"] == 20
    assert config["model"]["hidden_sizes"] == [128, 64, 32]
    assert config["windows"]["length"] == 7


def test_layers_dataset_then_model(config: dict) -> None:
    config["models"]["gru"] = {"model": {"cell": "gru"}, "training": {"epochs": 3}}
    merged = settings.resolve_section(config, "training", "demo", "gru")
    assert merged["epochs"] == 3  # model variant wins
    assert merged["batch_size"] == config["datasets"]["demo"]["training"]["batch_size"]
    assert merged["scheduler"]["factor"] == 0.85  # nested keys kept
    assert settings.resolve_section(config, "model", "demo", "gru")["cell"] == "gru"
    assert settings.resolve_section(config, "model", "demo", "lstm")["cell"] == "lstm"
    # a dataset override never leaks into the config itself
    assert config["training"]["epochs"] == 100


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["training"].update(batch_sise=3), "batch_sise"),
        (lambda c: c["datasets"]["demo"]["training"].update(batch_size=0), "batch_size"),
        (lambda c: c["windows"].update(length=0), "windows.length"),
        (lambda c: c["datasets"]["demo"].update(source="ftp"), "datasets.demo.source"),
        (lambda c: c["build"].update(datasets=["nope"]), "nope"),
        (lambda c: c["datasets"]["mlchallenge2"].pop("url"), "url"),
    ],
)
def test_errors_name_the_key(config: dict, edit, named: str) -> None:
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(settings.ConfigError, match=named.replace(".", r"\.")):
        settings.check_config(bad, SCHEMA)


def test_raw_parts(config: dict) -> None:
    shards = config["datasets"]["demo"]["simulate"]["shards"]
    assert settings.raw_parts(config, "demo") == [f"shard{i:03d}" for i in range(shards)]
    assert settings.raw_parts(config, "mlchallenge2") == ["tracks"]


def test_merge_does_not_mutate() -> None:
    base = {"a": {"b": 1, "c": 2}}
    out = settings.merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}
