"""Resolve and check the workflow configuration (config.yaml) for one dataset and model.

The top-level sections hold the defaults (the reference); a dataset may override any of them,
and a model variant may override ``model``, ``training``, ``export`` and ``evaluation``. The
merged result is checked against the top-level section's schema, and errors name the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

#: The sections a dataset or model variant may override.
SECTIONS: tuple[str, ...] = ("conversion", "windows", "model", "training", "export", "evaluation")
MODEL_SECTIONS: tuple[str, ...] = ("model", "training", "export", "evaluation")


class ConfigError(ValueError):
    """A configuration key or value that is wrong; the message names the key."""


def merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """Recursive dict merge: values in ``override`` win; nested dicts merge key by key."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_schema(path: str | Path) -> dict[str, Any]:
    """The config schema (YAML)."""
    return yaml.safe_load(Path(path).read_text())


def _key_path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = (
        [prefix, *[str(p) for p in error.absolute_path]]
        if prefix
        else list(map(str, error.absolute_path))
    )
    return ".".join(p for p in parts if p) or "(top level)"


def _check(instance: Any, schema: dict[str, Any], root: dict[str, Any], prefix: str) -> None:
    validator_cls = jsonschema.validators.validator_for(root)
    resolver_schema = {**schema, "$defs": root.get("$defs", {})}
    errors = sorted(
        validator_cls(resolver_schema).iter_errors(instance), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = [f"{_key_path(e, prefix)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def check_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Check the whole config, every dataset's and model's merged sections, and `build`."""
    _check(config, schema, schema, "")
    datasets = config.get("datasets", {})
    models = config.get("models", {}) or {}
    for name in config.get("build", {}).get("datasets", []):
        if name not in datasets:
            raise ConfigError(
                f"build.datasets: {name!r} is not a dataset (known: {', '.join(datasets)})"
            )
    for name in config.get("build", {}).get("models", []):
        if name not in models:
            raise ConfigError(f"build.models: {name!r} is not a model (known: {', '.join(models)})")
    for ds in datasets:
        for model in models:
            for section in SECTIONS:
                merged = resolve_section(config, section, ds, model)
                _check(
                    merged,
                    schema["properties"][section],
                    schema,
                    f"{section} (as merged for dataset {ds}, model {model})",
                )


def resolve_section(
    config: dict[str, Any], section: str, dataset: str, model: str | None = None
) -> dict[str, Any]:
    """One section as it applies to ``dataset`` (and model variant ``model``)."""
    merged = merge(config.get(section, {}), config["datasets"][dataset].get(section))
    if model is not None and section in MODEL_SECTIONS:
        variant = (config.get("models") or {}).get(model) or {}
        merged = merge(merged, variant.get(section))
    return merged


def raw_parts(config: dict[str, Any], dataset: str) -> list[str]:
    """Names of a dataset's raw CSV files: shards of a simulated set, else one ``tracks``."""
    ds = config["datasets"][dataset]
    if ds["source"] == "simulate":
        return [f"shard{i:03d}" for i in range(int(ds["simulate"]["shards"]))]
    return ["tracks"]
