"""Training settings: resolved from the config schema's defaults, checked, and hashed.

The schema (``tracklstm/config.schema.yaml``) is the one place a default lives, and
``tracklstm.settings`` owns every check of it; a training run by hand (``tracklstm train
--settings``, or ``train()`` from Python) goes through the same checks as the workflow, with
errors raised as ``TrainingInputError`` naming the key, before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from tracklstm.models.build import build_model
from tracklstm.settings import ConfigError, defaults, stage_defaults
from tracklstm.train.errors import TrainingInputError

#: The reference hyperparameters (reference notebook and its PyTorch port), plus the options.
DEFAULT_TRAINING: dict[str, Any] = defaults("training")
#: The reference model.
DEFAULT_MODEL: dict[str, Any] = defaults("model")
#: How a run executes (device, precision, CUDA graphs, data placement).
DEFAULT_RUNTIME: dict[str, Any] = defaults("runtime")
#: Runtime settings that change how a run is executed, not what it computes: a checkpoint
#: written under other values of these is still resumed (e.g. a retry on another machine).
RUNTIME_KEYS: tuple[str, ...] = ("device", "data_on_device", "stream_chunk", "eval_batch_size")


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"model", "training", "runtime", "window_length"}`` over the defaults, checked.

    ``window_length`` (optional) is the window length the caller expects; it must match the data.
    Raises ``TrainingInputError`` naming the key of every setting that makes no sense.
    """
    try:
        resolved = stage_defaults("train", settings)
        build_model(resolved["model"], resolved["window_length"] or 7)
    except (ConfigError, ValueError) as err:
        raise TrainingInputError(str(err).replace("invalid configuration:\n  ", "")) from None
    length = resolved["window_length"]
    if length is not None and (
        isinstance(length, bool) or not isinstance(length, int) or length < 1
    ):
        raise TrainingInputError(f"window_length: expected an integer >= 1 or null, got {length!r}")
    return resolved


def budget_epochs(cfg: dict[str, Any], n_train: int) -> int:
    """``training.epochs``, cut to the most whole epochs of ``n_train`` windows (one optimizer
    step per ``batch_size`` of them) whose steps stay within ``training.max_steps``, if it is set
    (at least one)."""
    epochs, budget = int(cfg["epochs"]), cfg.get("max_steps")
    if budget is None:
        return epochs
    steps = max(math.ceil(n_train / int(cfg["batch_size"])), 1)
    return max(1, min(epochs, int(budget) // steps))


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of resolved settings (decides whether a checkpoint may be resumed)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
