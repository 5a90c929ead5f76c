"""The reference network: stacked recurrent layers, the last one read at its last step, then a
linear map.

Default = the reference: LSTM 6->128 -> LSTM 128->64 -> LSTM 64->32 (last step) -> Linear 32->6,
tanh, no dropout; 132,038 parameters in PyTorch (its LSTMs carry two bias vectors).
Departures (config ``model:``): other sizes and numbers of layers, GRU cells, dropout after each
recurrent layer. The model works in normalized units; ``PhysicalModel`` wraps it for cm, GeV/c.
"""

from __future__ import annotations

from collections.abc import Sequence

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
