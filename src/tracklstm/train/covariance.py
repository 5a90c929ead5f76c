"""The second stage of a residual propagator with a covariance head (``model.covariance``).

After the body is trained (``train.fit``), the body's best weights are loaded and held fixed,
and the covariance head (``models.residual.CovarianceHead``) learns the distribution of the
body's errors by Gaussian negative log-likelihood: Adam at 1e-3 with cosine decay over
``training.covariance_epochs`` epochs. It learns them on the validation split, which the body
never trained on: on its own training windows a body errs less than on new ones, and a head fit
there promises too little (measured: chi2/ndf 2.6 on new windows after a small body's 90
epochs). The validation batches alternate: the even ones fit the head, the odd ones choose the
epoch with the best negative log-likelihood. The prediction of the state is untouched (the
body's weights do not move), so a model with a covariance head predicts exactly what it would
without one.

It takes seconds on the demo; it is not checkpointed (a killed run redoes it on resume).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from tracklstm.train.checkpoints import cpu_state
from tracklstm.train.data import WindowSource
from tracklstm.train.runtime import Dist

log = logging.getLogger("tracklstm.train")

#: Adam's learning rate for the head.
LEARNING_RATE: float = 1e-3


def has_covariance(model: nn.Module) -> bool:
    """Whether the model has a covariance head to train."""
    return bool(getattr(model, "has_covariance", False))


def split_nll(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean negative log-likelihood of the windows of ``batches``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(model.covariance_nll(x, y)) * len(x)
            count += len(x)
    return total / max(count, 1)


def fit_covariance(
    model: nn.Module,
    best_weights: dict[str, torch.Tensor],
    val_src: WindowSource,
    cfg: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """Train the head on the body of ``best_weights``; return those weights with the trained
    head, and put the head into ``model`` too (its body stays the last epoch's)."""
    work = copy.deepcopy(model)
    work.load_state_dict(best_weights)
    work.train()
    for p in work.parameters():
        p.requires_grad_(False)
    head = work.cov_head
    for p in head.parameters():
        p.requires_grad_(True)
    epochs, batch = int(cfg["covariance_epochs"]), min(int(cfg["batch_size"]), 256)
    batches = list(val_src.eval_batches(batch, Dist()))
    fit_part, choose_part = batches[0::2], batches[1::2] or batches[:1]
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-5)
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    best = (split_nll(work, choose_part), copy.deepcopy(head.state_dict()), 0)
    for epoch in range(1, epochs + 1):
        started, total, count = time.perf_counter(), 0.0, 0
        for i in torch.randperm(len(fit_part), generator=gen).tolist():
            x, y = fit_part[i]
            loss = work.covariance_nll(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        schedule.step()
        chosen = split_nll(work, choose_part)
        log.info(
            "covariance epoch %d/%d: NLL fit %.4f | check %.4f | %.1fs",
            epoch,
            epochs,
            total / max(count, 1),
            chosen,
            time.perf_counter() - started,
        )
        if chosen < best[0]:
            best = (chosen, copy.deepcopy(head.state_dict()), epoch)
    head.load_state_dict(best[1])
    log.info(
        "covariance head: best NLL %.4f (epoch %d; %d validation windows fit it, %d chose)",
        best[0],
        best[2],
        sum(len(x) for x, _ in fit_part),
        sum(len(x) for x, _ in choose_part),
    )
    model.cov_head.load_state_dict(best[1])
    return cpu_state(work.state_dict())
