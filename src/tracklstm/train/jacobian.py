"""Training on derivatives: a residual propagator also learns the field map's transport Jacobian.

A Kalman filter steps its covariance with the propagator's Jacobian J = d(next x, y, px, py,
pz) / d(current ones), so a propagator for a track fit must get J right, not only the next
state. Fit on states alone, the demo's one-state model's J is off the field map's by a median
0.03 (``physics.transport.relative_difference``); the track fit wants 0.01. With
``training.jacobian_weight`` lambda > 0, training steps add to the loss

    lambda * mean_B ||(J_model - J_field) * scale||^2 / mean ||(J_field - I) * scale||^2

(``scale``: momenta in units of 10 MeV/c, as the evaluation compares them), a Sobolev term. The
windows are ``training.jacobian_windows`` training windows (a fixed random subset, the covariance
head's), whose field-map Jacobian is computed once at the start by central differences
(``physics.transport.field_jacobian``); each epoch passes once over them in an order drawn per
epoch, ``JACOBIAN_BATCH`` at a time, on steps spread evenly over the epoch (``JacobianTerm.rows``;
a resumed epoch takes the same ones).

How it is cheap: the model is prior + correction; the prior (the helix step) and the scaling
of the inputs have no learned part, so their derivatives with respect to the current state are
computed once, at the start, for those windows. A step then needs only the body's Jacobian
along those five directions: forward-mode AD through the body (five tangents per window, no
double backward); the loss's gradient is ordinary reverse mode through that (the same
gradients as double backward, 4 ms a step where that took 13 ms; a step without the term:
1.6 ms, on the 2-core development machine).

Measured on the demo through this trainer (``benchmarks/jacobian_training.py``, 2026-12-07,
2-core CPU): lambda 1000 brings the median on 400 test states from 0.027 to 0.0060 (95th
percentile 0.078 to 0.020) and the RMS of x, y over the floor's from 1.091, 1.051 to 1.037,
1.003: the derivatives also teach the state. Training took 32 s instead of 15. For MLP bodies
only (forward mode through the LSTM and GRU kernels is not there).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
from torch import nn

from tracklstm.physics.transport import INDEX, comparison_scale, field_jacobian
from tracklstm.train.data import WindowSource, subset_batches
from tracklstm.train.runtime import Dist, epoch_seed

log = logging.getLogger("tracklstm.train")

#: Windows per step whose Jacobian enters the loss (over all processes together).
JACOBIAN_BATCH: int = 64


@dataclass
class JacobianTerm:
    """The Jacobian term's fixed data (on the device) and weight."""

    weight: float
    steps: torch.Tensor  # (N, S, 6) the body's scaled step inputs
    static: torch.Tensor  # (N, F) its scaled window features
    d_steps: torch.Tensor  # (N * 5, S, 6) their derivatives along x, y, px, py, pz
    d_static: torch.Tensor  # (N * 5, F)
    target: torch.Tensor  # (N, 5, 5) (J_field - J_prior) * scale: what the correction's J should be
    out_scale: torch.Tensor  # (5, 5) corr_std_i * scale_ij: the body's J to the compared units
    ref_sq: torch.Tensor  # (N,) ||(J_field - I) * scale||^2 per window
    norm: float  # its mean

    @property
    def n(self) -> int:
        return len(self.static)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's order of the windows (the same on every rank and on resume)."""
        gen = torch.Generator(device=self.static.device).manual_seed(epoch_seed(seed + 5, epoch))
        return torch.randperm(self.n, generator=gen, device=self.static.device)

    def rows(self, order: torch.Tensor, step: int, steps: int, dist: Dist) -> torch.Tensor | None:
        """This rank's windows at step ``step`` of an epoch of ``steps``, or None.

        An epoch passes once over the term's windows, ``JACOBIAN_BATCH`` at a time (over all
        processes together, each taking its share, as the batches do), on steps spread evenly
        over it (every step when there are more batches of them than steps; 125 of the demo's
        144 steps; every 112th step of a full-size epoch). Which windows a step takes depends
        on the step only, as a resume needs.
        """
        uses = max(1, -(-self.n // JACOBIAN_BATCH))
        if uses >= steps:
            use = step
        else:
            use = step * uses // steps
            if step > 0 and (step - 1) * uses // steps == use:  # this use began a step ago
                return None
        start = use * JACOBIAN_BATCH
        take = torch.arange(start, start + JACOBIAN_BATCH, device=order.device) % self.n
        return order[take[dist.rank :: dist.world]]

    def body_jacobian(self, body: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """(B, 5, 5) the correction's Jacobian in the compared units, differentiable."""
        k = len(INDEX)
        wide = (rows.unsqueeze(1) * k + torch.arange(k, device=rows.device)).flatten()
        with fwad.dual_level():
            steps = fwad.make_dual(self.steps[rows].repeat_interleave(k, 0), self.d_steps[wide])
            static = fwad.make_dual(self.static[rows].repeat_interleave(k, 0), self.d_static[wide])
            tangent = fwad.unpack_dual(body(steps, static)).tangent  # (B*5 along, 5 out)
        jac = tangent.reshape(len(rows), k, k).transpose(1, 2)  # (B, out, along)
        return jac.to(torch.float64) * self.out_scale

    def loss(self, body: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """The weighted term on ``rows`` (a float32 scalar)."""
        diff = self.body_jacobian(body, rows) - self.target[rows]
        return (self.weight * diff.square().sum((1, 2)).mean() / self.norm).to(torch.float32)

    @torch.no_grad()
    def relative(self, body: nn.Module) -> torch.Tensor:
        """(N,) ``relative_difference`` of the model's J and the field map's on the term's
        windows (the model: its prior and ``body``)."""
        was = body.training
        body.eval()
        parts = []
        for rows in torch.arange(self.n, device=self.static.device).split(4096):
            diff = self.body_jacobian(body, rows) - self.target[rows]
            parts.append(diff.square().sum((1, 2)))
        body.train(was)
        return torch.sqrt(torch.cat(parts) / self.ref_sq)

    def summary(self, body: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """For ``training.json``: the term's settings and how far the model of ``weights`` (a
        state dict of the whole model) is from the field map's J on its windows."""
        work = copy.deepcopy(body)
        work.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("body.")})
        relative = self.relative(work)
        out = {
            "weight": self.weight,
            "windows": self.n,
            "median_relative_difference": round(float(relative.median()), 5),
            "p95_relative_difference": round(float(torch.quantile(relative, 0.95)), 5),
        }
        log.info(
            "Jacobian against the field map's on the term's %d training windows: median %.4f, "
            "95th percentile %.4f",
            self.n,
            out["median_relative_difference"],
            out["p95_relative_difference"],
        )
        return out


def _encoded(
    model: nn.Module, windows: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The model's scaled inputs and prior for ``windows`` with ``last`` as their last state."""
    return model.encode(torch.cat([windows[:, :-1], last.unsqueeze(1)], dim=1))


def build_term(model: nn.Module, source: WindowSource, cfg: dict[str, Any]) -> JacobianTerm | None:
    """The term for ``cfg["jacobian_weight"]`` > 0 (None for 0), from ``source``'s windows."""
    weight = float(cfg.get("jacobian_weight") or 0.0)
    if weight <= 0:
        return None
    cap, seed = int(cfg["jacobian_windows"]), int(cfg["seed"])
    batches = subset_batches(source, 8192, cap, seed)
    windows = torch.cat([x for x, _ in batches]).to(torch.float64)
    z_target = torch.cat([y[:, 2] for _, y in batches]).to(torch.float64)
    device = windows.device
    last = windows[:, -1]
    reference = field_jacobian(last.cpu().numpy(), z_target.cpu().numpy())
    k = len(INDEX)
    d_steps, d_static, d_prior = [], [], []
    with torch.no_grad():
        for col in INDEX:
            direction = torch.zeros_like(last)
            direction[:, col] = 1.0
            primal, tangent = torch.func.jvp(
                lambda s: _encoded(model, windows, s), (last,), (direction,)
            )
            d_steps.append(tangent[0])
            d_static.append(tangent[1])
            d_prior.append(tangent[2][:, INDEX])
    steps, static, _ = primal
    scale = torch.from_numpy(comparison_scale()).to(device)
    j_field = torch.from_numpy(reference).to(device)
    j_prior = torch.stack(d_prior, dim=2)  # (N, out, along)
    ref_sq = ((j_field - torch.eye(k, dtype=torch.float64, device=device)) * scale).square()
    ref_sq = ref_sq.sum((1, 2))
    term = JacobianTerm(
        weight=weight,
        steps=steps.to(torch.float32),
        static=static.to(torch.float32),
        d_steps=torch.stack(d_steps, 1).flatten(0, 1).to(torch.float32),
        d_static=torch.stack(d_static, 1).flatten(0, 1).to(torch.float32),
        target=(j_field - j_prior) * scale,
        out_scale=model.corr_std.to(device).unsqueeze(1) * scale,
        ref_sq=ref_sq,
        norm=float(ref_sq.mean()),
    )
    helix = float(
        torch.sqrt((((j_prior - j_field) * scale).square().sum((1, 2))) / ref_sq).median()
    )
    log.info(
        "Jacobian term: weight %g on %d training windows (%d at a time, each once per "
        "epoch); the helix prior's Jacobian is off the field map's by a median %.4f there",
        weight,
        term.n,
        JACOBIAN_BATCH,
        helix,
    )
    return term
