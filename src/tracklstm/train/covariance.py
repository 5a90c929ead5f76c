"""The second stage of a residual propagator with a covariance head (``model.covariance``).

After the body is trained (``train.fit``), the body's best weights are loaded and held fixed,
and the covariance head (``models.residual.CovarianceHead``) learns the distribution of the
body's errors by Gaussian negative log-likelihood: Adam at 1e-3 with cosine decay over
``training.covariance_epochs`` epochs. ``training.covariance_split`` says where it learns:

- ``train`` (the default): on the training windows (at most ``training.covariance_windows``
  of them, 100,000: a fixed random subset of a larger split, which the head's 1,700 parameters
  do not need and which would cost a full-size run minutes); it keeps its last epoch (the
  validation split's negative log-likelihood, logged each epoch, cannot choose one: its mean is
  set by the few windows with the largest Landau losses, thousands of sigma out; at full size
  it rose by 6 nats from epoch 4 on while the fit's kept falling, and the head it chose was
  half-trained, pull widths 1.10-1.12). A body errs a little less on its own training windows
  than on new ones, so a head fit there could promise too little; for the demo's MLP bodies
  the data it gains matter far more.
  Measured on the demo's test windows (2026-12-06): pull widths 1.00-1.05 (pz 0.95-1.15),
  chi2/ndf 1.00-1.15, the one-state walk's chi2/ndf at plane 24 0.94; fit on half of the
  validation split instead, the head (1,700 parameters on 2,300 windows) could not learn how
  the spread falls with |p| on short steps (a near-constant 9 um in x where the simulator's
  exact spread goes from 11 to 3 um): widths 1.08-1.45, chi2/ndf 1.24-1.43.
- ``validation``: on the validation split only, which the body never trained on (for a body
  that overfits: a small LSTM body's head fit on its 90 training epochs' windows gave chi2/ndf
  2.6 on new windows); its even batches fit the head, the odd ones choose the epoch with the
  best negative log-likelihood.

Then its spread per feature is calibrated on windows it did not learn on (the validation
split, or the odd batches): ``calibrate_scale`` sets ``cov_scale`` so that their pulls have
width 1, for each feature whose scale they pin down (x, y, px, py; not pz). Last, the shape of
the errors under that covariance: a scale mixture sum_k w_k N(0, s_k C) with at most
``training.covariance_components`` components fitted to the same windows' chi2
(``models.scale_mixture``), stored as ``cov_mixture_weight`` and ``cov_mixture_scale``.

The prediction of the state is untouched (the body's weights do not move), so a model with a
covariance head predicts exactly what it would without one.

It takes seconds on the demo; it is not checkpointed (a killed run redoes it on resume).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from tracklstm.models.residual import CORRECTED, COV_SCALE_KNOTS, cov_scale_table
from tracklstm.models.scale_mixture import fit_scale_mixture, padded
from tracklstm.train.checkpoints import cpu_state
from tracklstm.train.config import DEFAULT_TRAINING
from tracklstm.train.data import WindowSource, subset_batches
from tracklstm.train.runtime import Dist

log = logging.getLogger("tracklstm.train")

#: The largest standard error of a feature's mean error^2 / variance (over the mean) on the
#: held-out windows for which ``calibrate_scale`` scales its spread: 0.03, 1.5 % in the spread,
#: below the few % the head is off by. Measured 2026-12-07: 0.05-0.065 for x, y, px, py on the
#: demo's 4,600 held-out windows (scaled by 0.1 there, the test windows' widths moved by as much
#: noise as bias: chi2/ndf 0.99 -> 0.95), 0.007 at full size (447,603: widths 1.10 -> 0.99);
#: pz 0.52 and 0.21, never pinned down.
MAX_SCALE_ERROR: float = 0.03

#: The share of the choosing windows whose NLL is left out when the head's epoch is chosen: the
#: largest errors are single hard collisions (one plane can take 40 MeV/c of a track's momentum,
#: 1000 times its usual loss), and one such window in the choice would keep the untrained head.
CHOICE_TRIM: float = 0.01
#: Adam's learning rate for the head.
LEARNING_RATE: float = 1e-3


def has_covariance(model: nn.Module) -> bool:
    """Whether the model has a covariance head to train."""
    return bool(getattr(model, "has_covariance", False))


def trimmed_mean(values: torch.Tensor, trim: float) -> torch.Tensor:
    """The mean of ``values`` without the ``round(trim * len)`` largest."""
    keep = len(values) - round(trim * len(values))
    if keep >= len(values):
        return values.mean()
    return torch.topk(values, max(keep, 1), largest=False).values.mean()


def split_nll(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    trim: float = 0.0,
    dof: float | None = None,
) -> float:
    """Mean negative log-likelihood of the windows of ``batches`` (a Student t's with ``dof``),
    leaving out the share ``trim`` of them with the largest (``CHOICE_TRIM`` when a head is
    chosen)."""
    with torch.no_grad():
        nll = torch.cat([model.covariance_nll(x, y, mean=False, dof=dof) for x, y in batches])
    return float(trimmed_mean(nll, trim)) if len(nll) else 0.0


def fit_covariance(
    model: nn.Module,
    best_weights: dict[str, torch.Tensor],
    train_src: WindowSource,
    val_src: WindowSource,
    cfg: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """Train the head on the body of ``best_weights`` (on the split of
    ``cfg["covariance_split"]``); return those weights with the trained head, and put the head
    into ``model`` too (its body stays the last epoch's)."""
    work = copy.deepcopy(model)
    work.load_state_dict(best_weights)
    work.train()
    for p in work.parameters():
        p.requires_grad_(False)
    head = work.cov_head
    for p in head.parameters():
        p.requires_grad_(True)
    cfg = {**DEFAULT_TRAINING, **cfg}
    epochs, batch = int(cfg["covariance_epochs"]), min(int(cfg["batch_size"]), 256)
    dof = None if cfg["covariance_dof"] is None else float(cfg["covariance_dof"])
    batches = list(val_src.eval_batches(batch, Dist()))
    split = cfg["covariance_split"]
    keep_last = split == "train"
    if split == "train":
        cap = int(cfg["covariance_windows"])
        fit_part, choose_part = subset_batches(train_src, batch, cap, int(cfg["seed"])), batches
    elif split == "validation":
        fit_part, choose_part = batches[0::2], batches[1::2] or batches[:1]
    else:
        raise ValueError(f"training.covariance_split: {split!r} is not train or validation")
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-5)
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    best = (split_nll(work, choose_part, CHOICE_TRIM, dof), copy.deepcopy(head.state_dict()), 0)
    for epoch in range(1, epochs + 1):
        started, total, count = time.perf_counter(), 0.0, 0
        for i in torch.randperm(len(fit_part), generator=gen).tolist():
            x, y = fit_part[i]
            loss = work.covariance_nll(x, y, dof=dof)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        schedule.step()
        chosen = split_nll(work, choose_part, CHOICE_TRIM, dof)
        log.info(
            "covariance epoch %d/%d: NLL fit %.4f | check %.4f | %.1fs",
            epoch,
            epochs,
            total / max(count, 1),
            chosen,
            time.perf_counter() - started,
        )
        if keep_last or chosen < best[0]:
            best = (chosen, copy.deepcopy(head.state_dict()), epoch)
    head.load_state_dict(best[1])
    log.info(
        "covariance head: epoch %d kept (%s; validation NLL %.4f); %d %s windows fit it",
        best[2],
        "the last" if keep_last else "the best on validation",
        best[0],
        sum(len(x) for x, _ in fit_part),
        split,
    )
    calibration = fit_part + choose_part
    log.info(
        "covariance scale of x, y, px, py and energy-loss term from %d windows",
        sum(len(x) for x, _ in calibration),
    )
    knots, scale = calibrate_scale(work, calibration)
    for target in (work, model):
        target.cov_scale_momentum.copy_(knots)
        target.cov_scale.copy_(scale)
    variance = loss_variance(work, calibration)
    for target in (work, model):
        target.cov_loss_variance.fill_(variance)
    weight, spread = padded(
        *fit_scale_mixture(held_out_chi2(work, choose_part), int(cfg["covariance_components"]))
    )
    for target in (work, model):
        target.cov_mixture_weight.copy_(torch.from_numpy(weight))
        target.cov_mixture_scale.copy_(torch.from_numpy(spread))
    model.cov_head.load_state_dict(best[1])
    return cpu_state(work.state_dict())


def _scales(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(mean) of each column of ``ratio`` (n, 5: error_i^2 / C_ii), and each mean's
    standard error over the mean (infinite for fewer than 2 rows)."""
    mean = ratio.mean(0)
    if len(ratio) < 2:
        return torch.sqrt(mean), torch.full_like(mean, torch.inf)
    return torch.sqrt(mean), ratio.std(0) / len(ratio) ** 0.5 / mean


@torch.no_grad()
def held_out_chi2(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """chi2 = e^T C^-1 e of the windows of ``batches`` under the model's calibrated covariance
    (``covariance_errors``): what the mixture of its shape is fitted to
    (``models.scale_mixture.fit_scale_mixture``)."""
    values = []
    for x, y in batches:
        error, cov = model.covariance_errors(x, y)
        factor = torch.linalg.cholesky(cov)
        white = torch.linalg.solve_triangular(factor, error.unsqueeze(2), upper=False)
        values.append((white.squeeze(2) ** 2).sum(1).cpu())
    return torch.cat(values).numpy() if values else np.zeros(0)


@torch.no_grad()
def loss_variance(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The variance (GeV/c)^2 of the energy-loss term (``cov_loss_variance``): the second moment
    of the momentum's error along its direction u over the windows of ``batches``, less what the
    scaled head already gives there (mean u^T C u), never below 0.

    Straggling moves the momentum along u. Its rare hard collisions (one thin plane now and
    then takes 1-40 MeV/c, a thousand times its usual loss) carry most of that second moment;
    the head, fit to the bulk, leaves them out, and a scale of pz's spread would not put their
    spread where it belongs: along u, correlated in px, py and pz (a chi2 of thousands for each
    such window). The term is one number for every step: its rate is a thin plane's,
    whatever the state; it is pinned down only by many windows (the demo's 41,400: to about
    30 %)."""
    model.cov_loss_variance.zero_()
    along_sum, core_sum, n = 0.0, 0.0, 0
    for x, y in batches:
        error, cov = model.covariance_errors(x, y)
        momentum = x[:, -1, 3:6].to(torch.float64)
        u = momentum / torch.linalg.vector_norm(momentum, dim=1, keepdim=True)
        along_sum += float(((error[:, 2:] * u).sum(1) ** 2).sum())
        core_sum += float(torch.einsum("bi,bij,bj->b", u, cov[:, 2:, 2:], u).sum())
        n += len(x)
    if not n:
        return 0.0
    variance = max(0.0, (along_sum - core_sum) / n)
    log.info(
        "energy-loss term: the momentum error along p %.4f MeV/c rms, the head %.4f: sigma %.4f",
        1e3 * (along_sum / n) ** 0.5,
        1e3 * (core_sum / n) ** 0.5,
        1e3 * variance**0.5,
    )
    return variance


@torch.no_grad()
def calibrate_scale(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariance's spread per feature, as a function of |p|, that gives the pulls of
    ``batches`` a width of 1 in x, y, px and py: (knots in |p| (K,), scales (K, 5)) with
    K = ``COV_SCALE_KNOTS`` for the model's ``cov_scale_momentum`` and ``cov_scale``,
    interpolated linearly between the knots.

    The windows are cut into |p| bins of equal counts, as many (8, 4, 2 or 1) as pin every
    bin's mean error_i^2 / C_ii down to ``MAX_SCALE_ERROR`` (its standard error over the mean)
    for each of x, y, px, py whose mean over all of them is; a knot is a bin's median |p|, its
    scale sqrt(mean(error_i^2 / C_ii)) over the bin. A feature not pinned down takes its scale
    over all the windows at every |p|. pz keeps a scale of 1: its spread beyond the head's is
    the energy-loss term's (``loss_variance``).

    The head's fit of the bulk leaves the second moment of heavy-tailed errors off, by an amount
    that changes with |p| (a Student t head's scale matrix is narrower than the covariance by
    design: 1.15-1.25 in spread at 10 degrees of freedom). At full size (2026-12-07) the
    Gaussian head promised 15-19 % too little spread in x, y, px, py at 0.85 GeV/c and 5 % too
    much at 3.2 GeV/c. One scale for all |p| left the test windows' pull widths at 1.05-1.06 in
    the lowest |p| quartile and 0.88-0.89 in the highest; the 8 knots brought every quartile to
    0.97-1.00. A variance calibration, it keeps the head's shape and correlations."""
    n = len(CORRECTED)
    ratios, momenta = [], []
    for x, y in batches:
        error, factor = model.head_error(x, y)
        ratios.append((error * error / (factor * factor).sum(2)).cpu())  # e_i^2 / (L L^T)_ii
        momenta.append(torch.linalg.vector_norm(x[:, -1, 3:6].double(), dim=1).cpu())
    ratio = torch.cat(ratios) if ratios else torch.zeros(0, n, dtype=torch.float64)
    momentum = torch.cat(momenta) if momenta else torch.zeros(0, dtype=torch.float64)
    scale, relative = _scales(ratio)
    scaled = torch.arange(n) != n - 1  # x, y, px, py; not pz
    if not len(ratio):
        scale = torch.ones(n, dtype=torch.float64)
    scale = torch.where(scaled, scale, torch.ones_like(scale))
    pinned = scaled & (relative < MAX_SCALE_ERROR)
    if len(ratio) > 1:
        log.info(
            "covariance scale: relative error of each mean %s (per |p| below %g)",
            ", ".join(f"{v:.3f}" for v in relative.tolist()),
            MAX_SCALE_ERROR,
        )
    knots = momentum.median().reshape(1) if len(momentum) else torch.zeros(1, dtype=torch.float64)
    table = scale.unsqueeze(0)
    order = torch.argsort(momentum)
    for bins in (COV_SCALE_KNOTS, 4, 2):
        if not pinned.any() or len(ratio) < 2 * bins:
            break
        parts = [order[i] for i in torch.tensor_split(torch.arange(len(order)), bins)]
        fits = [_scales(ratio[i]) for i in parts]
        medians = torch.stack([momentum[i].median() for i in parts])
        pinned_in_each = all(bool((rel[pinned] < MAX_SCALE_ERROR).all()) for _, rel in fits)
        if pinned_in_each and bool((medians.diff() > 0).all()):
            knots, table = medians, torch.stack([s for s, _ in fits])
            break
    table = torch.where(pinned, table, scale.unsqueeze(0))  # the others: one scale for all |p|
    log.info(
        "covariance scale of x, y, px, py, pz at %d |p| knot(s) (%s GeV/c): %s",
        len(knots),
        ", ".join(f"{v:.2f}" for v in knots.tolist()),
        "; ".join(", ".join(f"{v:.3f}" for v in row) for row in table.tolist()),
    )
    knots, table = cov_scale_table(knots, table)
    device = model.cov_scale.device
    return knots.to(device), table.to(device)
