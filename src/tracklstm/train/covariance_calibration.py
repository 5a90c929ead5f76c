"""Calibrating the covariance head on the windows whose errors are known.

After ``train.covariance`` has fit the head's factor L, ``calibrate`` sets the buffers of
``models.covariance_head``, C = (S L T)(S L T)^T + v u u^T, in four passes over the calibration
windows (the validation split, and with ``training.covariance_split: train`` the training split
too: at full size 4 million windows, seconds per pass):

1. ``calibrate_scale``: S, the spread of x, y, px and py per |p| knot, so that their pulls have
   width 1 (pz keeps 1: its spread beyond the head's is the energy-loss term's);
2. ``whitening_transform``: T, the Cholesky factor of the second moment of the whitened errors
   (S L)^-1 e, which then have the identity as second moment: it sets the correlations as well
   as the spreads. The head fits the bulk, and x and px (y and py) are correlated by 0.992 at
   full size (scattering turns the direction and moves the position on the way): the head's
   0.988-0.989 put twice as much spread into px given x as there is, and left the mean
   chi2/ndf at 0.83-0.86 where every pull width was 0.99-1.00 (2026-12-07);
3. ``loss_variance``: v, the energy-loss term: straggling moves the momentum along its own
   direction u = (0, 0, p / |p|), and its rare hard collisions (one thin plane now and then
   takes 1-40 MeV/c, a thousand times its usual loss) carry most of the second moment along u.
   With ``training.covariance_loss_tail`` ``sample``, v is the windows' own second moment;
   with ``simulator`` or ``t_max``, the losses beyond ``TAIL_START`` are Landau's tail, whose
   rate the windows give and whose end the physics does (``landau_tail``);
4. the scale mixture sum_k w_k N(0, s_k C) of the errors' shape, fitted to their chi2
   (``models.scale_mixture``).

Passes 1 and 2 see each error with its part along u clipped at ``CLIP_SIGMAS`` of the spread
there (the hard collisions' excess): one such error, thousands of sigma out in the whitened
space, would otherwise set T alone. Pass 3 gives the excess to v.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from tracklstm.models.covariance_head import (
    COV_SCALE_KNOTS,
    N_CORRECTED,
    cov_scale_table,
    scale_at,
)
from tracklstm.models.scale_mixture import fit_scale_mixture, padded
from tracklstm.physics.delta_rays import largest_momentum_loss

log = logging.getLogger("tracklstm.train")

#: A batch of windows and their targets.
Batch = tuple[torch.Tensor, torch.Tensor]
#: The buffers ``calibrate`` sets.
CALIBRATION_BUFFERS: tuple[str, ...] = (
    "cov_scale_momentum",
    "cov_scale",
    "cov_transform",
    "cov_loss_variance",
    "cov_mixture_weight",
    "cov_mixture_scale",
)
#: Windows per batch of the calibration's passes (forward only).
CALIBRATION_BATCH: int = 8192
#: Where an error's part along the momentum's direction is clipped for passes 1 and 2: this
#: many of the spread along u (the head's, then the scaled head's).
CLIP_SIGMAS: float = 5.0
#: The largest standard error of a feature's mean error^2 / variance (over the mean) in every
#: |p| bin for which ``calibrate_scale`` gives the feature a scale per bin: 0.045, 2.2 % in the
#: spread, below the 5 % by which the head's spread drifts with |p|. Measured 2026-12-07 on the
#: demo's 41,400 windows (its train and validation splits): 0.014-0.015 for x, y, px, py over
#: all of them, so 4 knots (8 since the errors are clipped along u); on 327,600 test windows and
#: 360,000 more simulated ones, every |p| quartile's pull widths then lay within 0.975-1.035
#: (with 2 knots, at the bound 0.03, 1.034-1.055 in the second quartile).
MAX_SCALE_ERROR: float = 0.045
#: At most this many fixed-point steps of ``fitted_knots`` (a handful reach 1e-6).
FIT_STEPS: int = 50
#: Cells of neighbouring |p| per bin in which ``fitted_knots`` takes the scale as constant.
CELLS_PER_BIN: int = 1024
#: How the energy-loss term's tail is estimated (``training.covariance_loss_tail``): the windows'
#: own second moment (``sample``), or Landau's tail beyond ``TAIL_START`` up to the simulator's
#: cut with every larger loss piled there (``simulator``), or up to T_max (``t_max``, matter).
LOSS_TAILS: tuple[str, ...] = ("sample", "simulator", "t_max")
#: Where Landau's tail starts (GeV/c lost beyond the prediction): 20 times the spread along u
#: of the calibrated head (0.026 MeV/c). Measured 2026-12-07 on 2 million windows at full size:
#: t N(loss > t) / n, the tail's amplitude, is 1.11e-3 to 1.14e-3 MeV/c for every t from 0.5 to
#: 20 MeV/c (Landau's P(loss > t) = xi / t; xi of an FDC plane is 1.1 keV).
TAIL_START: float = 0.5e-3


def clipped(error: torch.Tensor, factor: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``error`` (B, 5) with its part along ``u`` (B, 5) clipped at ``CLIP_SIGMAS`` times the
    spread along u of the covariance ``factor`` (B, 5, 5) @ its transpose."""
    along = (error * u).sum(1)
    spread = torch.linalg.vector_norm(factor.transpose(1, 2) @ u.unsqueeze(2), dim=(1, 2))
    limit = CLIP_SIGMAS * spread
    excess = along - torch.minimum(torch.maximum(along, -limit), limit)
    return error - excess.unsqueeze(1) * u


def _scales(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(mean) of each column of ``ratio`` (n, 5: error_i^2 / C_ii), and each mean's
    standard error over the mean (infinite for fewer than 2 rows)."""
    mean = ratio.mean(0)
    if len(ratio) < 2:
        return torch.sqrt(mean), torch.full_like(mean, torch.inf)
    return torch.sqrt(mean), ratio.std(0) / len(ratio) ** 0.5 / mean


def fitted_knots(
    knots: torch.Tensor,
    table: torch.Tensor,
    ratio: torch.Tensor,
    momentum: torch.Tensor,
    parts: list[torch.Tensor],
) -> torch.Tensor:
    """The scales (K, 5) at ``knots`` (K,) under which every bin ``parts`` (K index sets) of
    the windows gets pulls of width 1, the scale interpolated between the knots as the model
    does (``scale_at``): from ``table``, each bin's own sqrt(mean(``ratio``)) at its median
    |p|, by fixed-point steps. The bins' own values sag between the knots where the spread
    peaks in |p|: on the demo (2026-12-07) its second |p| quartile's pulls then had widths
    1.03-1.04 on the calibration windows and 1.055-1.058 in y and py on the test windows."""
    # each bin cut into cells of neighbouring |p| (sorted in ``parts``), in which the scale
    # does not change: the steps then run over thousands of cells, not millions of windows
    cells = [c for i in parts for c in torch.tensor_split(i, min(CELLS_PER_BIN, len(i)))]
    cell_p = torch.stack([momentum[c].mean() for c in cells])
    cell_sum = torch.stack([ratio[c].sum(0) for c in cells])
    bin_of = torch.repeat_interleave(
        torch.arange(len(parts)), torch.tensor([min(CELLS_PER_BIN, len(i)) for i in parts])
    )
    counts = torch.tensor([len(i) for i in parts], dtype=ratio.dtype).unsqueeze(1)
    for _ in range(FIT_STEPS):
        sums = torch.zeros_like(table).index_add_(
            0, bin_of, cell_sum / scale_at(knots, table, cell_p) ** 2
        )
        step = torch.sqrt(sums / counts)
        table = table * step
        if float((step - 1).abs().max()) < 1e-6:
            break
    return table


@torch.no_grad()
def calibrate_scale(
    model: nn.Module, batches: Iterable[Batch]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariance's spread per feature, as a function of |p|, that gives the pulls of
    ``batches`` a width of 1 in x, y, px and py under the head's factor: (knots in |p| (K,),
    scales (K, 5)) with K = ``COV_SCALE_KNOTS`` for the model's ``cov_scale_momentum`` and
    ``cov_scale``, interpolated linearly between the knots.

    The windows are cut into |p| bins of equal counts, as many (8, 4, 2 or 1) as pin every
    bin's mean error_i^2 / C_ii down to ``MAX_SCALE_ERROR`` (its standard error over the mean)
    for each of x, y, px, py whose mean over all of them is; a knot is a bin's median |p|, its
    scales those under which each bin's pulls have width 1 with the scale interpolated between
    the knots (``fitted_knots``). A feature not pinned down takes its scale over all the
    windows at every |p|. pz keeps a scale of 1.

    The head's fit of the bulk leaves the second moment of heavy-tailed errors off, by an amount
    that changes with |p|: its Student t scale matrix is narrower than the covariance by design
    (by 1.2-1.4 in spread at 10 degrees of freedom, most at low |p|, 2026-12-07 at full size)."""
    ratios, momenta = [], []
    for x, y in batches:
        error, factor, u, size = model.calibration_parts(x, y)
        error = clipped(error, factor, u)
        ratios.append((error * error / (factor * factor).sum(2)).cpu())  # e_i^2 / (L L^T)_ii
        momenta.append(size.cpu())
    ratio = torch.cat(ratios) if ratios else torch.zeros(0, N_CORRECTED, dtype=torch.float64)
    momentum = torch.cat(momenta) if momenta else torch.zeros(0, dtype=torch.float64)
    scale, relative = _scales(ratio)
    scaled = torch.arange(N_CORRECTED) != N_CORRECTED - 1  # x, y, px, py; not pz
    if not len(ratio):
        scale = torch.ones(N_CORRECTED, dtype=torch.float64)
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
            knots = medians
            table = fitted_knots(medians, torch.stack([s for s, _ in fits]), ratio, momentum, parts)
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


@torch.no_grad()
def whitening_transform(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """T (5, 5), lower-triangular: the Cholesky factor of M = mean(w w^T), w = (S L)^-1 e the
    errors of ``batches`` whitened by the scaled head (``cov_scale`` set, the transform not
    used). Under S L T the whitened errors have the identity as second moment. The identity
    when there are no windows or M is not positive definite."""
    total = torch.zeros(N_CORRECTED, N_CORRECTED, dtype=torch.float64)
    n = 0
    for x, y in batches:
        error, factor, u, size = model.calibration_parts(x, y)
        factor = model.covariance_scale(size).unsqueeze(2) * factor
        error = clipped(error, factor, u)
        white = torch.linalg.solve_triangular(factor, error.unsqueeze(2), upper=False).squeeze(2)
        total += (white.T @ white).cpu()
        n += len(x)
    transform, info = torch.linalg.cholesky_ex(total / max(n, 1))
    if not n or int(info):
        return torch.eye(N_CORRECTED, dtype=torch.float64, device=model.cov_transform.device)
    log.info(
        "covariance transform: the whitened errors' second moment had diagonal %s",
        ", ".join(f"{v:.3f}" for v in torch.diagonal(total / n).tolist()),
    )
    return transform.to(model.cov_transform.device)


def landau_tail(lost: int, momentum: np.ndarray, tail: str) -> float:
    """The second moment (GeV/c)^2 per window of the losses beyond ``TAIL_START`` among windows
    of |p| ``momentum`` (n,), ``lost`` of them beyond it, from Landau's tail: the density
    A / t^2 of a loss t from ``TAIL_START`` (t0) to the largest loss c of the window's |p|
    (``physics.delta_rays.largest_momentum_loss``), A fitted to the count ``lost``.

    ``simulator``: every loss beyond c sits at c (P(loss > t) = A / t below it; second moment
    A (2 c - t0)); ``t_max``: c is T_max and nothing lies beyond (P(loss > t) = A (1/t - 1/c);
    second moment A (c - t0)). The loss's second moment is ruled by its largest values, which
    only millions of windows see: the demo's 41,400 hold none to three losses of 40 MeV/c, but
    about 100 beyond t0, which fix A to 10 %."""
    if tail not in LOSS_TAILS[1:]:
        raise ValueError(f"training.covariance_loss_tail: {tail!r} is not one of {LOSS_TAILS}")
    t0 = TAIL_START
    cut = largest_momentum_loss(momentum, capped=tail == "simulator")
    reach = cut > t0
    if tail == "simulator":
        rate, moment = np.where(reach, 1.0 / t0, 0.0), np.where(reach, 2.0 * cut - t0, 0.0)
    else:
        rate = np.where(reach, 1.0 / t0 - 1.0 / cut, 0.0)
        moment = np.where(reach, cut - t0, 0.0)
    if not len(momentum) or not rate.sum():
        return 0.0
    amplitude = lost / rate.sum()  # expected count beyond t0: A sum(rate)
    return float(amplitude * moment.sum() / len(momentum))


@torch.no_grad()
def loss_variance(model: nn.Module, batches: Iterable[Batch], tail: str = "sample") -> float:
    """The variance v (GeV/c)^2 of the energy-loss term: the second moment of the momentum's
    error along its direction u over ``batches``, less what (S L T)(S L T)^T already gives
    there (mean u^T C u), never below 0 (``cov_loss_variance`` is not used). With ``tail``
    ``simulator`` or ``t_max`` the losses beyond ``TAIL_START`` count by ``landau_tail``.

    A scale of pz's spread would not put the hard collisions' spread where it belongs: along
    u, in px, py and pz together (a chi2 of thousands for each such window). The term is one
    number for every step, as a thin plane's rate of hard collisions is. Its windows' own
    second moment needs millions of windows: one step in about 35,000 loses 40 MeV/c, and on
    two draws of the demo's 41,400 windows it gave sigma 0.17 and 0.38 MeV/c where 4 million
    windows at full size give 0.30; Landau's tail gave 0.30 on the first (2026-12-07)."""
    if tail not in LOSS_TAILS:
        raise ValueError(f"training.covariance_loss_tail: {tail!r} is not one of {LOSS_TAILS}")
    along_sum, kept_sum, core_sum, n, lost = 0.0, 0.0, 0.0, 0, 0
    momenta = []
    zero = torch.zeros((), dtype=torch.float64, device=model.cov_loss_variance.device)
    kept = model.cov_loss_variance.clone()
    model.cov_loss_variance.copy_(zero)
    try:
        for x, y in batches:
            error, factor, u, size = model.calibration_parts(x, y)
            cov = model.calibrated(factor, u, size)
            along = (error * u).sum(1)
            beyond = along < -TAIL_START  # a loss: the momentum fell short of the prediction
            along_sum += float((along**2).sum())
            kept_sum += float((along[~beyond] ** 2).sum())
            lost += int(beyond.sum())
            core_sum += float(torch.einsum("bi,bij,bj->b", u, cov, u).sum())
            n += len(x)
            if tail != "sample":  # Landau's tail needs each window's |p|
                momenta.append(size.cpu().numpy())
    finally:
        model.cov_loss_variance.copy_(kept)
    if not n:
        return 0.0
    second = along_sum / n
    if tail != "sample":
        second = kept_sum / n + landau_tail(lost, np.concatenate(momenta), tail)
        log.info(
            "energy-loss term: %d of %d windows lost over %.1f MeV/c beyond the prediction; "
            "Landau's tail to the %s's cut gives %.4f MeV/c rms along p (the windows' own %.4f)",
            lost,
            n,
            1e3 * TAIL_START,
            "simulator" if tail == "simulator" else "T_max",
            1e3 * second**0.5,
            1e3 * (along_sum / n) ** 0.5,
        )
    variance = max(0.0, second - core_sum / n)
    log.info(
        "energy-loss term: the momentum error along p %.4f MeV/c rms, the head %.4f: sigma %.4f",
        1e3 * second**0.5,
        1e3 * (core_sum / n) ** 0.5,
        1e3 * variance**0.5,
    )
    return variance


@torch.no_grad()
def window_chi2(model: nn.Module, batches: Iterable[Batch]) -> np.ndarray:
    """chi2 = e^T C^-1 e of the windows of ``batches`` under the model's calibrated covariance:
    what the mixture of its shape is fitted to (``models.scale_mixture.fit_scale_mixture``)."""
    values = []
    for x, y in batches:
        error, factor, u, size = model.calibration_parts(x, y)
        lower = torch.linalg.cholesky(model.calibrated(factor, u, size))
        white = torch.linalg.solve_triangular(lower, error.unsqueeze(2), upper=False)
        values.append((white.squeeze(2) ** 2).sum(1).cpu())
    return torch.cat(values).numpy() if values else np.zeros(0)


def calibrate(
    model: nn.Module,
    windows: Callable[[], Iterator[Batch]],
    components: int,
    loss_tail: str = "sample",
) -> None:
    """Set the calibration's buffers of ``model`` (``CALIBRATION_BUFFERS``) from the windows
    that ``windows()`` yields (called once per pass); ``components``: the most in the mixture;
    ``loss_tail``: how the energy-loss term's tail is estimated (``LOSS_TAILS``)."""
    knots, scale = calibrate_scale(model, windows())
    model.cov_scale_momentum.copy_(knots)
    model.cov_scale.copy_(scale)
    model.cov_transform.copy_(whitening_transform(model, windows()))
    model.cov_loss_variance.fill_(loss_variance(model, windows(), loss_tail))
    weight, spread = padded(*fit_scale_mixture(window_chi2(model, windows()), components))
    model.cov_mixture_weight.copy_(torch.from_numpy(weight))
    model.cov_mixture_scale.copy_(torch.from_numpy(spread))
