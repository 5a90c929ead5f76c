"""The track model: stacked recurrent layers, the last one read at its last step, then a linear map.

Default = the reference: LSTM 6->128 -> LSTM 128->64 -> LSTM 64->32 (last step) -> Linear 32->6,
tanh, no dropout; 132,038 parameters in PyTorch (its LSTMs carry two bias vectors).
Departures (config ``model:``): other sizes and numbers of layers, GRU cells, dropout after each
recurrent layer. The model works in normalized units; ``PhysicalModel`` wraps it for cm, GeV/c.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tracklstm.constants import N_FEATURES

REFERENCE_HIDDEN: tuple[int, ...] = (128, 64, 32)


class TrackRNN(nn.Module):
    """Predicts the normalized state at the next plane from a window of normalized states."""

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden_sizes: Sequence[int] = REFERENCE_HIDDEN,
        cell: str = "lstm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("model.hidden_sizes: at least one recurrent layer is needed")
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell)
        if rnn is None:
            raise ValueError(f"model.cell: {cell!r} is not one of 'lstm', 'gru'")
        sizes = [n_features, *hidden_sizes]
        self.layers = nn.ModuleList(
            rnn(sizes[i], sizes[i + 1], batch_first=True) for i in range(len(hidden_sizes))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, window, features) -> (batch, features)."""
        for layer in self.layers:
            x, _ = layer(x)
            x = self.dropout(x)
        return self.head(x[:, -1])


class PhysicalModel(nn.Module):
    """Wraps a normalized-units model so that it takes and returns physical units."""

    def __init__(self, core: nn.Module, norm_min: torch.Tensor, norm_max: torch.Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("norm_min", norm_min.detach().clone().float())
        self.register_buffer("norm_scale", (norm_max - norm_min).detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, window, 6) in cm and GeV/c -> (batch, 6) in cm and GeV/c."""
        y = self.core((x - self.norm_min) / self.norm_scale)
        return y * self.norm_scale + self.norm_min


#: The kinds of model: the reference network, and a helix step plus a learned correction.
KINDS: tuple[str, ...] = ("reference", "residual")
#: Settings of the reference kind, and of the residual kind (``tracklstm.residual``).
REFERENCE_KEYS: tuple[str, ...] = ("cell", "hidden_sizes", "dropout")
RESIDUAL_ONLY_KEYS: tuple[str, ...] = ("body", "head_sizes", "history", "field")
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


def build_model(settings: dict[str, Any]) -> nn.Module:
    """The model described by a config's ``model`` section (missing keys: the reference).

    ``kind: reference`` (the default) builds ``TrackRNN`` from ``cell``, ``hidden_sizes`` and
    ``dropout``; ``kind: residual`` builds ``tracklstm.residual.ResidualPropagator`` from
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
        from tracklstm.residual import RESIDUAL_KEYS, build_residual

        try:
            return build_residual({k: settings[k] for k in RESIDUAL_KEYS if k in settings})
        except ValueError as err:
            raise ValueError(str(err).replace("residual.", "model.", 1)) from None
    hidden = settings.get("hidden_sizes", REFERENCE_HIDDEN)
    if isinstance(hidden, int | str) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
    ):
        raise ValueError(f"model.hidden_sizes: expected a list of integers >= 1, got {hidden!r}")
    dropout = settings.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"model.dropout: expected a number in [0, 1), got {dropout!r}")
    return TrackRNN(
        hidden_sizes=tuple(hidden),
        cell=settings.get("cell", "lstm"),
        dropout=float(dropout),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
