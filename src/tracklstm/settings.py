"""The configuration: its schema and defaults, the layered resolver, and every check of it.

One owner for settings. ``config.schema.yaml`` beside this file (``workflow/schemas/`` links to
it) is the only place a default lives; :func:`defaults` reads them from it. The top-level
sections of config.yaml hold the reference; a dataset may override any section, and a model
variant (under ``models:``) may override ``model``, ``training``, ``runtime``, ``export`` and
``evaluation``. :func:`resolve_section` merges those layers, and :func:`stage_settings` gives
each stage the merged sections it reads (the Snakemake rules pass them to the stage's
``--settings``; a stage run by hand fills what is missing from the schema's defaults).

:func:`prepare` is what the Snakefile runs once, before any job: the schema (with its defaults
filled in), finite numbers, every dataset's and variant's merged sections, the names that refer
to other entries, and the rules between keys. Every error is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import copy
import itertools
import math
from functools import cache
from pathlib import Path
from typing import Any

import yaml

#: The config schema (with every default) shipped inside the package.
SCHEMA_FILE: Path = Path(__file__).with_name("config.schema.yaml")
#: The sections a dataset may override.
SECTIONS: tuple[str, ...] = (
    "conversion",
    "windows",
    "challenge",
    "model",
    "training",
    "runtime",
    "export",
    "evaluation",
)
#: The sections a model variant may override.
MODEL_SECTIONS: tuple[str, ...] = ("model", "training", "runtime", "export", "evaluation")
#: The sections each stage reads (its ``--settings``); ``train`` also gets the window length.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "to_parquet": ("conversion",),
    "windows": ("windows",),
    "challenge": ("challenge",),
    "train": ("model", "training", "runtime"),
    "export": ("export",),
    "predict": ("conversion",),
    "evaluate": ("evaluation",),
}


#: Keys that choose what the workflow builds, not how a stage computes: left out of what a
#: stage is handed, so that turning them on re-runs nothing already built.
TARGET_KEYS: dict[str, tuple[str, ...]] = {"export": ("plain", "aoti", "aoti_cuda")}


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


def load_schema(path: str | Path = SCHEMA_FILE) -> dict[str, Any]:
    """The config schema (YAML; libyaml's loader where there is one: every stage starts here)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader)


@cache
def _schema() -> dict[str, Any]:
    return load_schema()


def schema() -> dict[str, Any]:
    """The package's config schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def _defaults_of(node: dict[str, Any]) -> Any:
    if "properties" in node:
        return {
            key: _defaults_of(sub)
            for key, sub in node["properties"].items()
            if "default" in sub or "properties" in sub
        }
    return copy.deepcopy(node["default"])


def defaults(section: str) -> dict[str, Any]:
    """A section's defaults, read from the schema (the one place they are written)."""
    return _defaults_of(_schema()["properties"][section])


# --------------------------------------------------------------------------------------------
# Checks


def _key(parts: Any, prefix: str = "") -> str:
    names = [prefix, *(f"[{p}]" if isinstance(p, int) else str(p) for p in parts)]
    return ".".join(n for n in names if n).replace(".[", "[") or "(top level)"


def _bound(node: dict[str, Any]) -> str:
    lo = [f">= {node['minimum']}"] if "minimum" in node else []
    lo += [f"> {node['exclusiveMinimum']}"] if "exclusiveMinimum" in node else []
    hi = [f"<= {node['maximum']}"] if "maximum" in node else []
    hi += [f"< {node['exclusiveMaximum']}"] if "exclusiveMaximum" in node else []
    return " and ".join(lo + hi)


def describe(node: dict[str, Any]) -> str:
    """What a schema node accepts, in words: ``an integer >= 1``, ``plateau, cosine or ...``."""
    if "enum" in node:
        names = ["null" if v is None else str(v).lower() for v in node["enum"]]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = {
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "string": "a string",
        "array": "a list",
        "object": "a mapping",
    }
    parts = []
    for t in types:
        if t == "null":
            continue
        text = words.get(t, t)
        bound = _bound(node) if t in ("integer", "number") else ""
        parts.append(f"{text} {bound}".strip())
    if "null" in types:
        parts.append("null")
    return " or ".join(parts) or "a valid value"


def _errors(instance: Any, node: dict[str, Any], prefix: str, where: str = "") -> list[str]:
    """Every schema error of ``instance`` against ``node``, each naming its key (and
    ``where``: which dataset and model variant it was merged for)."""
    import jsonschema  # only when something is checked: stages import this module at start-up

    root = _schema()
    validator = jsonschema.validators.validator_for(root)({**node, "$defs": root["$defs"]})
    lines = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        key = _key(e.absolute_path, prefix) + where
        if e.validator in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            lines.append(f"{key}: expected {describe(e.schema)}, got {e.instance!r} ({e.message})")
        elif e.validator == "pattern":
            what = e.schema.get("description") or f"a string matching {e.schema['pattern']}"
            lines.append(f"{key}: expected {what}, got {e.instance!r}")
        elif e.validator == "enum":
            lines.append(f"{key}: expected {describe(e.schema)}, got {e.instance!r}")
        elif e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = ", ".join(e.schema.get("properties", {})) or "(none)"
            extra = [k for k in e.instance if k not in e.schema.get("properties", {})]
            base = _key(e.absolute_path, prefix)
            lines += [f"{_key([k], base)}{where}: not a setting (known: {known})" for k in extra]
        else:
            lines.append(f"{key}: {e.message}")
    return lines


def _non_finite(value: Any, path: list[Any], where: str = "") -> list[str]:
    """Keys holding NaN or an infinity (YAML's .nan, .inf), which the schema's bounds let by."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_key(path)}{where}: expected a finite number, got {value!r}"]
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _non_finite(v, [*path, k], where)]
    if isinstance(value, list):
        return [m for i, v in enumerate(value) for m in _non_finite(v, [*path, i], where)]
    return []


def _raise(lines: list[str]) -> None:
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def check_section(
    section: str, values: dict[str, Any] | None, prefix: str | None = None
) -> dict[str, Any]:
    """``values`` over the section's defaults, checked against the schema; return the merge.

    For a stage run by hand (its ``--settings``). Raises ConfigError naming the key.
    """
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{prefix or section}: expected a mapping, got {values!r}")
    merged = merge(defaults(section), values)
    node = _schema()["properties"][section]
    _raise(_non_finite(merged, [prefix or section]) or _errors(merged, node, prefix or section))
    return merged


def _fill_defaults(instance: dict[str, Any], node: dict[str, Any]) -> None:
    """Fill the schema's defaults into ``instance`` in place (nested objects included)."""
    for key, sub in node.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and "properties" in sub:
            _fill_defaults(instance[key], sub)


def field_problem(field: Any) -> str | None:
    """What is wrong with a piecewise field ``[[z_from (cm), q·Bz (T)], ...]``, or None: the one
    check of a field table (the config's, before any job; ``physics.helix_field.check_field``
    raises it for a field given by hand)."""
    try:
        starts = [z for z, _ in ((float(z), float(b)) for z, b in field)]
    except (TypeError, ValueError):
        return f"expected a list of [z_from, q·Bz] pairs of numbers, got {field!r}"
    if not starts:
        return "the field needs at least one region"
    if any(b <= a for a, b in itertools.pairwise(starts)):
        return f"the regions' z_from must increase, got {starts}"
    return None


def _section_rules(section: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules within one section that a schema cannot say: ``(key, what is wrong)``."""
    out = []
    if section == "windows":
        split = values["split"]
        total = sum(split.values())
        if abs(total - 1.0) > 1e-9:
            shares = ", ".join(f"{k} {v:g}" for k, v in split.items())
            out.append(("windows.split", f"the fractions ({shares}) add up to {total:g}, not 1"))
    if section == "evaluation":
        problem = field_problem(values["helix_field"])
        if problem:
            out.append(("evaluation.helix_field", problem))
    if section == "model" and values.get("kind") == "residual":
        problem = field_problem(values["field"])
        if problem:
            out.append(("model.field", problem))
    return out


def _cross_key_rules(config: dict[str, Any], dataset: str, model: str) -> list[tuple[str, str]]:
    """Rules between keys that a schema cannot say: ``(key, what is wrong)`` for one dataset
    and model variant."""
    win = resolve_section(config, "windows", dataset)
    ch = resolve_section(config, "challenge", dataset)
    rt = resolve_section(config, "runtime", dataset, model)
    md = resolve_section(config, "model", dataset, model)
    out = [
        rule
        for section in ("windows", "evaluation", "model")
        for rule in _section_rules(section, resolve_section(config, section, dataset, model))
    ]
    if md["kind"] == "residual" and md["history"] > win["length"] - 1:
        out.append(
            (
                "windows.length",
                f"{win['length']} states hold {win['length'] - 1} differences, fewer than the "
                f"{md['history']} the residual model sees (model.history): set windows.length "
                f"to {md['history'] + 1} or more, or model.history to {win['length'] - 1} or less",
            )
        )
    if win["length"] > win["last_target_plane"]:
        out.append(
            (
                "windows.length",
                f"{win['length']} states leave no target plane up to "
                f"windows.last_target_plane {win['last_target_plane']}",
            )
        )
    if ch["n_min"] > ch["n_max"]:
        out.append(("challenge.n_min", f"{ch['n_min']} is above challenge.n_max {ch['n_max']}"))
    if ch["n_min"] < win["length"]:
        out.append(
            (
                "challenge.n_min",
                f"{ch['n_min']} states are fewer than a window (windows.length "
                f"{win['length']}): such lines could not be predicted",
            )
        )
    tr = resolve_section(config, "training", dataset, model)
    return out + _runtime_rules(rt) + _training_rules(md, tr)


def _training_rules(md: dict[str, Any], tr: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules between the training and the model: the Jacobian term needs a residual MLP."""
    if tr["jacobian_weight"] > 0 and (md["kind"] != "residual" or md["body"] != "mlp"):
        return [
            (
                "training.jacobian_weight",
                "the Jacobian term needs model.kind residual with model.body mlp (got kind "
                f"{md['kind']!r}, body {md['body']!r})",
            )
        ]
    return []


def _runtime_rules(rt: dict[str, Any]) -> list[tuple[str, str]]:
    if rt["cuda_graphs"] and rt["precision"] == "fp16":
        return [
            (
                "runtime.cuda_graphs",
                "not with precision fp16 (its loss scaler cannot be captured); use bf16",
            )
        ]
    return []


#: Folder names under results/ that cannot be dataset names.
RESERVED: tuple[str, ...] = ("external", "compare")


def external_models(config: dict[str, Any]) -> dict[str, str]:
    """name -> path of the exported model files to evaluate (top-level section only)."""
    return dict((config.get("evaluation") or {}).get("external_models") or {})


def comparisons(config: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """name -> runs of every comparison of ``compare:``."""
    return dict(config.get("compare") or {})


def _name_rules(config: dict[str, Any]) -> list[str]:
    """Names that refer to other entries: build, also_on, compare; reserved dataset names."""
    datasets = list(config.get("datasets", {}))
    models = list(config.get("models") or {})
    out = []
    for key, names, what in (("datasets", datasets, "dataset"), ("models", models, "model")):
        for name in config.get("build", {}).get(key, []):
            if name not in names:
                out.append(
                    f"build.{key}: {name!r} is not a {what} (known: {', '.join(names) or '(none)'})"
                )
    out += [
        f"datasets: {r!r} is a reserved name (results/{r}/ holds evaluations of external "
        "models and comparisons)"
        for r in RESERVED
        if r in datasets
    ]
    for ds in datasets:
        for model in models:
            for data in resolve_section(config, "evaluation", ds, model).get("also_on") or []:
                if data not in datasets:
                    out.append(
                        f"evaluation.also_on (dataset {ds}, model {model}): {data!r} is not a "
                        f"dataset (known: {', '.join(datasets)})"
                    )
    known = {"dataset": datasets, "data": datasets, "model": models}
    known["external"] = list(external_models(config))
    for name, runs in comparisons(config).items():
        for i, r in enumerate(runs):
            for key, names in known.items():
                if key in r and r[key] not in names:
                    out.append(
                        f"compare.{name}[{i}].{key}: {r[key]!r} is not one of: "
                        f"{', '.join(names) or '(none)'}"
                    )
    return out


def check_names(config: dict[str, Any]) -> None:
    """The name rules alone (build, also_on, compare, reserved names); ConfigError names the key."""
    _raise(_name_rules(config))


def check_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Check the whole config without changing it: see :func:`prepare`."""
    prepare(copy.deepcopy(config), schema)


def prepare(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check ``config`` and fill the schema's defaults into it, in place; return it.

    In order, stopping at the first group with errors: the schema and finite numbers; the names
    that refer to other entries; every dataset's and model variant's merged sections; the rules
    between keys. Raises ConfigError naming each wrong key.
    """
    node = schema or _schema()
    _raise(_non_finite(config, []) or _errors(config, node, ""))
    _fill_defaults(config, node)
    _raise(_name_rules(config))
    lines: list[str] = []
    for ds in config["datasets"]:
        for model in config["models"] or {}:
            for section in SECTIONS:
                merged = resolve_section(config, section, ds, model)
                where = f" (as merged for dataset {ds}, model {model})"
                lines += _non_finite(merged, [section], where) or _errors(
                    merged, node["properties"][section], section, where
                )
    _raise(lines)
    broken: dict[tuple[str, str], list[str]] = {}
    for ds in config["datasets"]:
        for model in config["models"] or {}:
            for key, what in _cross_key_rules(config, ds, model):
                broken.setdefault((key, what), []).append(f"dataset {ds}, model {model}")
    _raise(
        [
            f"{key} ({where[0]}{f'; and {len(where) - 1} more' if len(where) > 1 else ''}): {what}"
            for (key, what), where in broken.items()
        ]
    )
    return config


# --------------------------------------------------------------------------------------------
# Resolving


def resolve_section(
    config: dict[str, Any], section: str, dataset: str, model: str | None = None
) -> dict[str, Any]:
    """One section as it applies to ``dataset`` (and model variant ``model``)."""
    merged = merge(config.get(section, {}), config["datasets"][dataset].get(section))
    if model is not None and section in MODEL_SECTIONS:
        variant = (config.get("models") or {}).get(model) or {}
        merged = merge(merged, variant.get(section))
    return merged


def stage_settings(
    config: dict[str, Any], stage: str, dataset: str, model: str | None = None
) -> dict[str, Any]:
    """What stage ``stage`` reads, resolved for ``dataset`` (and ``model``): ``{section: ...}``.

    Training also gets ``window_length`` (the windows it expects to be given).
    """
    out = {s: resolve_section(config, s, dataset, model) for s in STAGE_SECTIONS[stage]}
    for section, keys in TARGET_KEYS.items():
        for key in keys if section in out else ():
            out[section].pop(key, None)
    if stage == "train":
        out["window_length"] = resolve_section(config, "windows", dataset)["length"]
    return out


def stage_defaults(stage: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stage's settings run by hand: ``given`` over the schema's defaults, checked.

    ``given`` holds some of the stage's sections (``--settings`` JSON); others are refused.
    """
    given = given or {}
    if not isinstance(given, dict):
        raise ConfigError(f"settings: expected a mapping, got {given!r}")
    known = STAGE_SECTIONS[stage] + (("window_length",) if stage == "train" else ())
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a setting (known: {', '.join(known)})")
    out: dict[str, Any] = {s: check_section(s, given.get(s)) for s in STAGE_SECTIONS[stage]}
    rules = [rule for s, values in out.items() for rule in _section_rules(s, values)]
    if "runtime" in out:
        rules += _runtime_rules(out["runtime"])
    if "training" in out and "model" in out:
        rules += _training_rules(out["model"], out["training"])
    _raise([f"{key}: {what}" for key, what in rules])
    if stage == "train":
        out["window_length"] = given.get("window_length")
    return out


def raw_parts(config: dict[str, Any], dataset: str) -> list[str]:
    """Names of a dataset's raw CSV files: shards of a simulated set, else one ``tracks``."""
    ds = config["datasets"][dataset]
    if ds["source"] == "simulate":
        return [f"shard{i:03d}" for i in range(int(ds["simulate"]["shards"]))]
    return ["tracks"]
