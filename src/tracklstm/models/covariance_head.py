"""The covariance head of the residual propagator and its calibration's buffers.

``CovarianceHead`` predicts a Cholesky factor L of the covariance of x, y, px, py, pz at the next
plane; the training (``train.covariance``) fits it, then calibrates it on the windows whose
errors it knows. The calibrated covariance (``calibrated_covariance``) is

    C = (S L T)(S L T)^T + v u u^T

with S the spread per feature at knots in |p| (``cov_scale``), T a lower-triangular transform
that sets the second moments of the whitened errors, their correlations included
(``cov_transform``), and v u u^T the energy-loss term: the straggling tail's variance v along the
momentum's direction u (``cov_loss_variance``). The scale mixture of C (``cov_mixture_weight``,
``cov_mixture_scale``; ``models.scale_mixture``) describes the errors' tails. Every number is a
buffer: it travels in the state dict and in every exported file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tracklstm.constants import ANSWER_FEATURES
from tracklstm.models.scale_mixture import padded

#: The corrected features x, y, px, py, pz.
N_CORRECTED: int = len(ANSWER_FEATURES)

#: Entries of a 5x5 lower-triangular Cholesky factor: 5 on the diagonal, then 10 below it.
N_CHOLESKY: int = N_CORRECTED * (N_CORRECTED + 1) // 2
#: Smallest diagonal entry of the factor, in units of the correction's spread: keeps every
#: predicted covariance positive definite, however far out of range the input.
MIN_CHOLESKY_DIAGONAL: float = 1e-3
#: Largest entry below the diagonal of the factor's unit-triangular part (correlations up to
#: about 0.995).
MAX_UNIT_ENTRY: float = 10.0


class CovarianceHead(nn.Module):
    """The covariance of the corrected features at the next plane, as a Cholesky factor.

    A small MLP on the same inputs as the body gives 15 numbers; the factor is L = D U: D the
    diagonal of spreads (softplus, plus ``MIN_CHOLESKY_DIAGONAL``), U unit lower-triangular
    with its 10 entries below the diagonal bounded by ``MAX_UNIT_ENTRY`` (tanh). L L^T is then
    positive definite by construction and, whatever the input, the correlations it implies are
    never so close to +-1 that float64 arithmetic loses them. L is in units of the correction's
    spread (``corr_std``); ``ResidualPropagator.forward_with_covariance`` scales it to cm and
    GeV/c.
    """

    def __init__(self, n_static: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = [n_static, *hidden_sizes]
        layers: list[nn.Module] = []
        for i in range(len(hidden_sizes)):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.SiLU()]
        layers.append(nn.Linear(sizes[-1], N_CHOLESKY))
        self.net = nn.Sequential(*layers)
        self.n = N_CORRECTED
        self.max_unit = MAX_UNIT_ENTRY
        self.min_diagonal = MIN_CHOLESKY_DIAGONAL
        rows, cols = torch.tril_indices(N_CORRECTED, N_CORRECTED, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, static: torch.Tensor) -> torch.Tensor:
        """``static`` (B, F): the last state and the step to the target plane (the noise of a
        step does not depend on the earlier states) -> lower-triangular L (B, 5, 5), float64."""
        raw = self.net(static)
        raw = raw.to(torch.float64)
        n = self.n
        unit = torch.eye(n, dtype=torch.float64, device=raw.device).repeat(raw.shape[0], 1, 1)
        unit[:, self.rows, self.cols] = self.max_unit * torch.tanh(raw[:, n:] / self.max_unit)
        spread = nn.functional.softplus(raw[:, :n]) + self.min_diagonal
        return spread.unsqueeze(2) * unit


#: Knots in |p| of the covariance's calibrated scale (``cov_scale_momentum``): the scale is
#: interpolated linearly between them, constant beyond the outer ones
#: (``train.covariance_calibration.calibrate_scale`` uses as many as its windows pin down).
COV_SCALE_KNOTS: int = 8


def cov_scale_table(knots: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's ``cov_scale_momentum`` (``COV_SCALE_KNOTS``,) and ``cov_scale`` (the same,
    5) from K increasing knots (K,) and their scales (K, 5): beyond the last knot, knots 1 GeV/c
    apart with its scale (which keeps the scale constant there)."""
    extra = COV_SCALE_KNOTS - len(knots)
    knots = knots.to(torch.float64)
    scales = scales.to(torch.float64)
    return (
        torch.cat([knots, knots[-1] + torch.arange(1, extra + 1, dtype=torch.float64)]),
        torch.cat([scales, scales[-1:].expand(extra, -1)]),
    )


def uniform_cov_scale(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(knots, scales) of a scale (5,) that does not depend on |p|: the knots 0, 1, ... (any
    increasing ones), the same scale at each."""
    return cov_scale_table(torch.zeros(1), scale.reshape(1, -1))


def single_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    """``cov_mixture_weight`` and ``cov_mixture_scale`` of one component of scale 1 (the errors
    a single Gaussian of the covariance C): a model's before its mixture is fitted."""
    weight, scale = padded(np.ones(1), np.ones(1))
    return torch.from_numpy(weight), torch.from_numpy(scale)


def defaults_for_older_weights(state: dict[str, Any], prefix: str, *_: Any) -> None:
    """A ``load_state_dict`` pre-hook for weights saved before the calibration was complete:
    before the covariance had its calibrated scale (a scale of 1), or before the scale depended
    on |p| (one scale per feature): the same scale at every |p|; saved before the mixture of its
    shape: one component of scale 1 (a single Gaussian); saved before its transform and its
    energy-loss term: the identity and none."""
    if prefix + "cov_head.net.0.weight" not in state:
        return
    key, knots = prefix + "cov_scale", prefix + "cov_scale_momentum"
    if knots not in state:
        scale = state.get(key, torch.ones(N_CORRECTED, dtype=torch.float64))
        state[knots], state[key] = uniform_cov_scale(scale.reshape(-1)[:N_CORRECTED])
    if prefix + "cov_mixture_weight" not in state:
        state[prefix + "cov_mixture_weight"], state[prefix + "cov_mixture_scale"] = (
            single_gaussian()
        )
    if prefix + "cov_transform" not in state:
        state[prefix + "cov_transform"] = torch.eye(N_CORRECTED, dtype=torch.float64)
    if prefix + "cov_loss_variance" not in state:
        state[prefix + "cov_loss_variance"] = torch.zeros((), dtype=torch.float64)


def register_calibration(module: nn.Module) -> None:
    """The buffers of the head's calibration (``train.covariance_calibration.calibrate``) on
    ``module``, at their values before it: a scale of 1 at every |p| (``cov_scale_momentum``,
    ``cov_scale``), the identity transform (``cov_transform``), no energy-loss term
    (``cov_loss_variance``) and a single Gaussian (``cov_mixture_weight``,
    ``cov_mixture_scale``); and the hook that gives older weights those values."""
    f64 = torch.float64
    knots, scale = uniform_cov_scale(torch.ones(N_CORRECTED, dtype=f64))
    module.register_buffer("cov_scale_momentum", knots)
    module.register_buffer("cov_scale", scale)
    module.register_buffer("cov_transform", torch.eye(N_CORRECTED, dtype=f64))
    module.register_buffer("cov_loss_variance", torch.zeros((), dtype=f64))
    weight, spread = single_gaussian()
    module.register_buffer("cov_mixture_weight", weight)
    module.register_buffer("cov_mixture_scale", spread)
    module._register_load_state_dict_pre_hook(defaults_for_older_weights)


def scale_at(knots: torch.Tensor, scale: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    """The calibrated scale (B, 5) at |p| ``momentum`` (B,): ``scale`` (K, 5) interpolated
    linearly between its ``knots`` (K,), constant beyond them (a sum of clamped ramps, which
    every export form runs)."""
    out = scale[0].unsqueeze(0).expand(momentum.shape[0], -1)
    for k in range(knots.shape[0] - 1):
        ramp = ((momentum - knots[k]) / (knots[k + 1] - knots[k])).clamp(0.0, 1.0)
        out = out + ramp.unsqueeze(1) * (scale[k + 1] - scale[k]).unsqueeze(0)
    return out


def momentum_direction(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = (0, 0, p / |p|) (B, 5) of the last state of ``states`` (B, W, 6), in the space of
    x, y, px, py, pz, and |p| (B,), float64: where energy loss moves the momentum."""
    momentum = states[:, -1, 3:6].to(torch.float64)
    size = torch.linalg.vector_norm(momentum, dim=1)
    u = torch.cat([torch.zeros_like(momentum[:, :2]), momentum / size.unsqueeze(1)], dim=1)
    return u, size


def calibrated_covariance(
    factor: torch.Tensor,
    u: torch.Tensor,
    size: torch.Tensor,
    knots: torch.Tensor,
    scale: torch.Tensor,
    transform: torch.Tensor,
    loss_variance: torch.Tensor,
) -> torch.Tensor:
    """C = (S L T)(S L T)^T + v u u^T (B, 5, 5): the head's factor ``factor`` L (B, 5, 5) in cm
    and GeV/c, its rows scaled by S = ``scale`` at |p| ``size`` (between ``knots``), times the
    ``transform`` T, plus the energy-loss term v = ``loss_variance`` along ``u`` (B, 5)."""
    scaled = (scale_at(knots, scale, size).unsqueeze(2) * factor) @ transform
    loss = loss_variance * (u.unsqueeze(2) * u.unsqueeze(1))
    return scaled @ scaled.transpose(1, 2) + loss
