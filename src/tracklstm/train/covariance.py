"""The second stage of a residual propagator with a covariance head (``model.covariance``).

After the body is trained (``train.fit``), the body's best weights are loaded and held fixed,
and the covariance head (``models.covariance_head.CovarianceHead``) learns the distribution of
the body's errors: Adam at 1e-3 with cosine decay over ``training.covariance_epochs`` epochs, by
the negative log-likelihood of a Student t of ``training.covariance_dof`` degrees of freedom
(10; null: a Gaussian's). A Gaussian head learns the second moment window by window, and the
errors' rare hard collisions (a thin plane now and then takes 1-40 MeV/c, a thousand times its
usual loss) then inflate its spread at the few training states where they happened and nowhere
else: on 360,000 new windows its pz pulls had width 2.7-3.1 and its chi2/ndf was 2.7-3.3
(2026-12-07, the demo's one-state model). The t's tails leave those windows little pull on the
head, which learns the bulk; the calibration then gives the covariance its second moment
(``train.covariance_calibration``). ``training.covariance_split`` says where the head learns:

- ``train`` (the default): on the training windows (at most ``training.covariance_windows``
  of them, 100,000: a fixed random subset of a larger split, which the head's 1,700 parameters
  do not need and which would cost a full-size run minutes); it keeps its last epoch (the
  validation split's negative log-likelihood, logged each epoch, cannot choose one: its mean is
  set by the few windows with the largest Landau losses). A body errs a little less on its own
  training windows than on new ones, so a head fit there could promise too little; for the
  demo's MLP bodies the data it gains matter far more (fit on half of the validation split
  instead, the head, 1,700 parameters on 2,300 windows, could not learn how the spread falls
  with |p| on short steps: pull widths 1.08-1.45, 2026-12-06).
- ``validation``: on the validation split only, which the body never trained on (for a body
  that overfits: a small LSTM body's head fit on its 90 training epochs' windows gave chi2/ndf
  2.6 on new windows); its even batches fit the head, the odd ones choose the epoch with the
  best negative log-likelihood.

Then ``train.covariance_calibration.calibrate`` sets the spread per feature and |p|, the
whitening transform, the energy-loss term and the scale mixture of the errors' shape, on the
validation windows and (with ``train``) the training windows too: every window whose error is
known, since the hard collisions that set the second moment are rare.

The prediction of the state is untouched (the body's weights do not move), so a model with a
covariance head predicts exactly what it would without one.

It takes seconds on the demo and two minutes at full size (2 cores); it is not checkpointed
(a killed run redoes it on resume).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tracklstm.train.checkpoints import cpu_state
from tracklstm.train.config import DEFAULT_TRAINING
from tracklstm.train.covariance_calibration import (
    CALIBRATION_BATCH,
    CALIBRATION_BUFFERS,
    Batch,
    calibrate,
)
from tracklstm.train.data import WindowSource, subset_batches
from tracklstm.train.runtime import Dist

log = logging.getLogger("tracklstm.train")

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
    batches: list[Batch],
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
    work.eval()  # the body predicts as exported (no dropout); the head has no such layer
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
    sources = (val_src, train_src) if split == "train" else (val_src,)

    def windows() -> Iterator[Batch]:
        for source in sources:
            yield from source.eval_batches(CALIBRATION_BATCH, Dist())

    log.info(
        "covariance calibration on %d windows (%s)",
        sum(source.n for source in sources),
        " and ".join(("validation", "train")[: len(sources)]),
    )
    calibrate(work, windows, int(cfg["covariance_components"]), cfg["covariance_loss_tail"])
    for name in CALIBRATION_BUFFERS:
        getattr(model, name).copy_(getattr(work, name))
    model.cov_head.load_state_dict(best[1])
    return cpu_state(work.state_dict())
