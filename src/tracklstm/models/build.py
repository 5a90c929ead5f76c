"""The kinds of model (config ``model.kind``) and how one is built from its settings.

``reference`` (the default) is the published network, ``tracklstm.models.reference.TrackRNN``,
in min-max-normalized units; ``residual`` is ``tracklstm.models.residual.ResidualPropagator``, a
helix step plus a learned correction, in physical units. The trainer and the export stage build
every model here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracklstm.models.reference import TrackRNN
from tracklstm.models.residual import RESIDUAL_KEYS, build_residual
from tracklstm.settings import defaults

#: The kinds of model: the reference network, and a helix step plus a learned correction.
KINDS: tuple[str, ...] = ("reference", "residual")
#: Settings of the reference kind, and of the residual kind (``tracklstm.models.residual``).
REFERENCE_KEYS: tuple[str, ...] = ("cell", "hidden_sizes", "dropout")
RESIDUAL_ONLY_KEYS: tuple[str, ...] = tuple(k for k in RESIDUAL_KEYS if k not in REFERENCE_KEYS)
MODEL_KEYS: tuple[str, ...] = ("kind", *REFERENCE_KEYS, *RESIDUAL_ONLY_KEYS)


def model_kind(settings: dict[str, Any]) -> str:
    """``reference`` or ``residual`` (a config's ``model.kind``; missing: the reference)."""
    kind = settings.get("kind", "reference")
    if kind not in KINDS:
        raise ValueError(f"model.kind: {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def physical_units(settings: dict[str, Any]) -> bool:
    """Whether the model takes and returns physical units (cm, GeV/c) itself; the reference
    works in min-max-normalized units (``PhysicalModel`` wraps it for export)."""
    return model_kind(settings) == "residual"


def one_state(settings: dict[str, Any]) -> bool:
    """Whether the model sees the last state only (the residual kind with ``history: 0``): a
    Kalman filter's step, which serves every plane-to-plane step of a track."""
    return model_kind(settings) == "residual" and settings.get("history") == 0


def build_model(settings: dict[str, Any], window_length: int = 7) -> nn.Module:
    """The model described by a config's ``model`` section (missing keys: the schema's
    defaults, i.e. the reference), for windows of ``window_length`` states.

    ``kind: reference`` (the default) builds ``TrackRNN`` from ``cell``, ``hidden_sizes`` and
    ``dropout``; ``kind: residual`` builds ``tracklstm.models.residual.ResidualPropagator`` from
    ``body``, ``hidden_sizes``, ``head_sizes``, ``history``, ``field`` and ``dropout``; the keys
    of the other kind are ignored. Raises ``ValueError`` naming the key for an unknown key or a
    value that makes no sense.
    """
    unknown = sorted(set(settings) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(
            f"model.{unknown[0]}: not a model setting (known: {', '.join(MODEL_KEYS)})"
        )
    if model_kind(settings) == "residual":
        try:
            residual = {k: settings[k] for k in RESIDUAL_KEYS if k in settings}
            return build_residual(residual, window=window_length)
        except ValueError as err:
            raise ValueError(str(err).replace("residual.", "model.", 1)) from None
    settings = {**defaults("model"), **settings}
    hidden = settings["hidden_sizes"]
    if isinstance(hidden, int | str) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
    ):
        raise ValueError(f"model.hidden_sizes: expected a list of integers >= 1, got {hidden!r}")
    dropout = settings["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"model.dropout: expected a number in [0, 1), got {dropout!r}")
    return TrackRNN(
        hidden_sizes=tuple(hidden),
        cell=settings["cell"],
        dropout=float(dropout),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class WeightsFileError(ValueError):
    """A weights file that cannot be read: empty, truncated, corrupt, or not a state dict."""


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict saved in ``path`` (``torch.save(model.state_dict())``), or
    WeightsFileError naming the file and saying it is corrupt or truncated."""
    path = Path(path)
    size = path.stat().st_size
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # zip, pickle or storage errors: one line, not a traceback
        lines = str(err).strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        what = "an empty file" if size == 0 else f"{size} bytes, corrupt or truncated"
        raise WeightsFileError(f"{path}: not a readable weights file ({what}: {reason})") from None
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: holds a {type(state).__name__}, not a model's weights")
    return state
