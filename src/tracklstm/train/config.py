"""Training settings: the defaults (the reference), their resolution and checks, their hash.

Every setting of ``model:`` and ``training:`` is known here; ``resolve_settings`` fills the
defaults in and raises ``TrainingInputError`` naming the key of the first value that makes no
sense, before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch

from tracklstm.model import build_model
from tracklstm.settings import merge
from tracklstm.train.errors import TrainingInputError

#: The reference hyperparameters (reference notebook and its PyTorch port), plus the options.
DEFAULT_TRAINING: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 1256,
    "learning_rate": 1.0e-4,
    "grad_clip_value": 1.0,
    "scheduler": {
        "kind": "plateau",
        "factor": 0.85,
        "patience": 5,
        "threshold": 1.0e-5,
        "min_lr": 1.0e-6,
    },
    "early_stopping": {"patience": 20, "min_delta": 0.0, "restore_best": True},
    "seed": 0,
    "init_from": None,
    "device": "auto",
    "precision": "fp32",
    "tf32": False,
    "cuda_graphs": False,
    "data_on_device": "auto",
    "stream_chunk": 262144,
    "eval_batch_size": 16384,
}
DEFAULT_MODEL: dict[str, Any] = {"cell": "lstm", "hidden_sizes": [128, 64, 32], "dropout": 0.0}
#: Training settings that change how a run is executed, not what it computes: a checkpoint
#: written under other values of these is still resumed (e.g. a retry on another machine).
RUNTIME_KEYS: tuple[str, ...] = ("device", "data_on_device", "stream_chunk", "eval_batch_size")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(section: dict[str, Any], defaults: dict[str, Any], prefix: str) -> None:
    for key, value in section.items():
        if key not in defaults:
            known = ", ".join(defaults)
            raise TrainingInputError(f"{prefix}.{key}: not a setting (known: {known})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise TrainingInputError(f"{prefix}.{key}: expected a mapping, got {value!r}")
            _check_keys(value, defaults[key], f"{prefix}.{key}")


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill ``{"model": ..., "training": ..., "window_length": ...}`` with the defaults; check it.

    ``window_length`` (optional) is the window length the caller expects; it must match the data.
    Raises ``TrainingInputError`` naming the key of the first setting that makes no sense.
    """
    if not isinstance(settings, dict):
        raise TrainingInputError(f"settings: expected a mapping, got {settings!r}")
    unknown = sorted(set(settings) - {"model", "training", "window_length"})
    if unknown:
        raise TrainingInputError(
            f"{unknown[0]}: not a setting (known: model, training, window_length)"
        )
    for name in ("model", "training"):
        if not isinstance(settings.get(name, {}), dict):
            raise TrainingInputError(f"{name}: expected a mapping, got {settings[name]!r}")
    _check_keys(settings.get("model", {}), DEFAULT_MODEL, "model")
    _check_keys(settings.get("training", {}), DEFAULT_TRAINING, "training")
    model = merge(DEFAULT_MODEL, settings.get("model", {}))
    training = merge(DEFAULT_TRAINING, settings.get("training", {}))
    t, sch, es = training, training["scheduler"], training["early_stopping"]

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise TrainingInputError(f"{key}: expected {what}, got {value!r}")

    need(
        _is_int(t["epochs"]) and t["epochs"] >= 1, "training.epochs", "an integer >= 1", t["epochs"]
    )
    for key in ("batch_size", "eval_batch_size", "stream_chunk"):
        need(_is_int(t[key]) and t[key] >= 1, f"training.{key}", "an integer >= 1", t[key])
    lr = t["learning_rate"]
    need(_is_number(lr) and lr > 0, "training.learning_rate", "a number > 0", lr)
    clip = t["grad_clip_value"]
    need(
        clip is None or (_is_number(clip) and clip > 0),
        "training.grad_clip_value",
        "a number > 0 or null (no clipping)",
        clip,
    )
    need(
        sch["kind"] in ("plateau", "cosine", "constant"),
        "training.scheduler.kind",
        "plateau, cosine or constant",
        sch["kind"],
    )
    f = sch["factor"]
    need(_is_number(f) and 0 < f < 1, "training.scheduler.factor", "a number in (0, 1)", f)
    need(
        _is_int(sch["patience"]) and sch["patience"] >= 0,
        "training.scheduler.patience",
        "an integer >= 0",
        sch["patience"],
    )
    for key in ("threshold", "min_lr"):
        need(
            _is_number(sch[key]) and sch[key] >= 0,
            f"training.scheduler.{key}",
            "a number >= 0",
            sch[key],
        )
    need(
        es["patience"] is None or (_is_int(es["patience"]) and es["patience"] >= 1),
        "training.early_stopping.patience",
        "an integer >= 1 or null (never stop early)",
        es["patience"],
    )
    need(
        _is_number(es["min_delta"]) and es["min_delta"] >= 0,
        "training.early_stopping.min_delta",
        "a number >= 0",
        es["min_delta"],
    )
    need(
        isinstance(es["restore_best"], bool),
        "training.early_stopping.restore_best",
        "true or false",
        es["restore_best"],
    )
    need(_is_int(t["seed"]) and t["seed"] >= 0, "training.seed", "an integer >= 0", t["seed"])
    need(
        t["init_from"] is None or isinstance(t["init_from"], str),
        "training.init_from",
        "a path or null",
        t["init_from"],
    )
    need(isinstance(t["device"], str), "training.device", "auto, cpu, cuda or cuda:N", t["device"])
    if t["device"] != "auto":
        try:
            torch.device(t["device"])
        except (RuntimeError, ValueError):
            need(False, "training.device", "auto, cpu, cuda or cuda:N", t["device"])
    need(
        t["precision"] in ("fp32", "bf16", "fp16"),
        "training.precision",
        "fp32, bf16 or fp16",
        t["precision"],
    )
    for key in ("tf32", "cuda_graphs"):
        need(isinstance(t[key], bool), f"training.{key}", "true or false", t[key])
    need(
        t["data_on_device"] in ("auto", True, False),
        "training.data_on_device",
        "auto, true or false",
        t["data_on_device"],
    )
    if t["cuda_graphs"] and t["precision"] == "fp16":
        raise TrainingInputError(
            "training.cuda_graphs: not with precision fp16 (its loss scaler cannot be captured); "
            "use bf16"
        )
    try:
        build_model(model)
    except ValueError as err:
        raise TrainingInputError(str(err)) from None
    length = settings.get("window_length")
    need(
        length is None or (_is_int(length) and length >= 1),
        "window_length",
        "an integer >= 1 or null",
        length,
    )
    return {"model": model, "training": training, "window_length": length}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of resolved settings (decides whether a checkpoint may be resumed)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
