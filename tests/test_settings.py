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
    settings.check_config(config, SCHEMA)  # raises ConfigError naming the key otherwise
    prepared = settings.prepare(copy.deepcopy(config))
    for dataset in prepared["build"]["datasets"]:
        for model in prepared["build"]["models"]:
            train = settings.stage_defaults(
                "train", settings.stage_settings(prepared, "train", dataset, model)
            )
            assert train["window_length"] == prepared["windows"]["length"]
    assert prepared["build"]["models"] == ["lstm", "residual", "residual_markov"]  # side by side


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
        (
            lambda c: c["datasets"]["demo"]["training"].update(covariance_loss_tail="landau"),
            "covariance_loss_tail",
        ),
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


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["windows"]["split"].update(train=float("nan")), "windows.split.train"),
        (lambda c: c["windows"]["split"].update(test=float("inf")), "windows.split.test"),
        (
            lambda c: c["datasets"]["demo"]["training"].update(learning_rate=float("nan")),
            "datasets.demo.training.learning_rate",
        ),
        (lambda c: c["challenge"].update(n_min=20, n_max=10), "challenge.n_min"),
        (lambda c: c["challenge"].update(n_min=5), "challenge.n_min"),
        (lambda c: c["windows"].update(length=12, last_target_plane=10), "windows.length"),
        (lambda c: c["runtime"].update(precision="fp16", cuda_graphs=True), "runtime.cuda_graphs"),
        (lambda c: c["models"]["gru"].update(runtime={"device": 3}), "runtime.device"),
    ],
)
def test_non_finite_numbers_and_cross_key_rules_are_refused(config: dict, edit, named) -> None:
    """What the schema's bounds let by (NaN compares false) and rules between keys."""
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(settings.ConfigError, match=named.replace(".", r"\.")):
        settings.check_config(bad, SCHEMA)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["datasets"]["demo"].update(windows={"length": 3}),
            r"windows\.length \(dataset demo, model residual.*\): 3 states hold 2 differences, "
            r"fewer than the 6 the residual model sees \(model\.history\)",
        ),
        (
            lambda c: c["windows"].update(split={"train": 0.9, "validation": 0.5, "test": 0.5}),
            r"windows\.split .*: the fractions \(train 0\.9, validation 0\.5, test 0\.5\) add up "
            r"to 1\.9, not 1",
        ),
        (
            lambda c: c["models"]["residual"]["model"].update(field=[[200.0, 2.0], [100.0, 1.0]]),
            r"model\.field \(dataset demo, model residual.*\): the regions' z_from must increase",
        ),
        (
            lambda c: c["evaluation"].update(helix_field=[[65.0, 2.0], [65.0, 1.0]]),
            r"evaluation\.helix_field .*: the regions' z_from must increase",
        ),
        (
            lambda c: c["models"]["lstm"].update(training={"jacobian_weight": 10}),
            r"training\.jacobian_weight \(dataset demo, model lstm.*\): the Jacobian term needs "
            r"model\.kind residual with model\.body mlp \(got kind 'reference', body 'mlp'\)",
        ),
    ],
)
def test_settings_a_job_would_fail_on_are_refused_before_any_job(
    config: dict, edit, message: str
) -> None:
    """A window too short for the residual model's history, split fractions that do not add
    up to 1, decreasing field tables: refused by the config check, naming the key."""
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(settings.ConfigError, match=message):
        settings.prepare(bad)


def test_a_stage_run_by_hand_is_held_to_the_same_rules() -> None:
    split = {"train": 0.9, "validation": 0.5, "test": 0.5}
    with pytest.raises(settings.ConfigError, match=r"windows\.split: .*add up to 1\.9"):
        settings.stage_defaults("windows", {"windows": {"split": split}})
    with pytest.raises(settings.ConfigError, match=r"evaluation\.helix_field: .*must increase"):
        settings.stage_defaults("evaluate", {"evaluation": {"helix_field": [[9, 1], [3, 1]]}})
    with pytest.raises(settings.ConfigError, match=r"training\.jacobian_weight: .*body 'gru'"):
        settings.stage_defaults(
            "train",
            {
                "model": {"kind": "residual", "body": "gru", "history": 2},
                "training": {"jacobian_weight": 5},
            },
        )


def test_prepare_fills_the_schema_defaults(config: dict) -> None:
    del config["runtime"], config["windows"]["seed"], config["export"]
    settings.prepare(config)
    assert config["runtime"]["device"] == "auto"
    assert config["windows"]["seed"] == 12345
    assert config["export"] == {
        "weights": "best",
        "tolerance": 1.0e-6,
        "onnx_opset": 18,
        "plain": True,
        "aoti": False,
        "aoti_cuda": False,
    }


def test_defaults_come_from_the_schema_alone() -> None:
    training = settings.defaults("training")
    assert (
        training["batch_size"]
        == SCHEMA["properties"]["training"]["properties"]["batch_size"]["default"]
    )
    assert set(settings.defaults("runtime")) == set(SCHEMA["properties"]["runtime"]["properties"])
    assert "device" not in training  # runtime choices are not hyperparameters


def test_stage_settings_hold_only_what_the_stage_reads(config: dict) -> None:
    settings.prepare(config)
    train = settings.stage_settings(config, "train", "demo", "gru")
    assert set(train) == {"model", "training", "runtime", "window_length"}
    assert train["model"]["cell"] == "gru" and train["training"]["epochs"] == 20
    # the demo's own windows: (its split) over the top-level ones
    windows = settings.merge(config["windows"], config["datasets"]["demo"]["windows"])
    assert settings.stage_settings(config, "windows", "demo") == {"windows": windows}
    assert windows["split"]["test"] > windows["split"]["train"]
    evaluation = settings.stage_settings(config, "evaluate", "demo", "lstm")["evaluation"]
    assert evaluation["helix_field"] == [[65.0, 2.0]]


def test_stage_run_by_hand_gets_defaults_and_checks() -> None:
    got = settings.stage_defaults("windows", {"windows": {"length": 5}})
    assert got["windows"]["length"] == 5 and got["windows"]["stride"] == 1
    with pytest.raises(settings.ConfigError, match=r"windows\.lenght: not a setting"):
        settings.stage_defaults("windows", {"windows": {"lenght": 5}})
    with pytest.raises(settings.ConfigError, match=r"training: not a setting"):
        settings.stage_defaults("windows", {"training": {}})
    with pytest.raises(settings.ConfigError, match=r"windows\.seed: expected an integer >= 0"):
        settings.stage_defaults("windows", {"windows": {"seed": -1}})


def test_target_keys_are_not_handed_to_the_stage(config: dict) -> None:
    """`export.plain`, `export.aoti` and `export.aoti_cuda` choose targets; the export stage's
    settings (its params) do not change."""
    settings.prepare(config)
    before = settings.stage_settings(config, "export", "demo", "lstm")
    config["export"]["plain"] = False
    config["export"]["aoti"] = True
    config["export"]["aoti_cuda"] = True
    assert settings.stage_settings(config, "export", "demo", "lstm") == before
    assert not {"plain", "aoti", "aoti_cuda"} & set(before["export"])
