"""A short, self-contained training loop for the residual propagator (experiments and tests).

The pipeline's trainer (``train.py``) will drive the residual model through
``ResidualPropagator.loss_pair``; this loop exists so that the model can be measured and tested
without it. Because the network's inputs have no learned part, the split is encoded once
(``ResidualPropagator.encode``) and only the body is run per step: much faster than recomputing
the float64 helix prior for every batch. The learning rate follows a cosine from ``lr`` down to
``lr * final_lr_ratio`` over the budget (wall time or epochs, whichever ends first): with a
fixed budget of a minute, the decay is worth more than any plateau schedule.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn

from tracklstm.residual import ResidualPropagator

log = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("l1", "mse")


def loss_function(name: str) -> nn.Module:
    """The loss on scaled corrections by name: ``l1`` or ``mse``."""
    if name == "l1":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    raise ValueError(f"residual.loss: {name!r} is not one of {', '.join(LOSSES)}")


def train_residual(
    model: ResidualPropagator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    seconds: float = 60.0,
    max_epochs: int | None = None,
    lr: float = 3e-3,
    final_lr_ratio: float = 0.01,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    loss: str = "mse",
    seed: int = 0,
    fit_statistics: bool = True,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """Train ``model`` on (inputs (n, 7, 6), targets (n, 6)) physical float32 with Adam(W).

    Fits the model's statistics first unless ``fit_statistics`` is False. Stops after
    ``seconds`` of wall time or ``max_epochs`` epochs, whichever comes first; the learning rate
    decays on a cosine over that budget. With ``validation`` (inputs, targets), the mean squared
    scaled correction error on it is measured after every epoch and the body's best weights are
    restored at the end: the correction is small next to the scattering noise in the targets,
    and a long run fits that noise. Leaves the model in eval mode. Returns a summary: epochs,
    steps, seconds (wall), cpu_seconds (this process's CPU time: on a shared machine, the share
    of the wall time it got), the last epoch's mean loss, and with validation the best epoch
    and its validation MSE.
    """
    if seconds <= 0 and max_epochs is None:
        raise ValueError("train_residual: give a positive time budget or max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"train_residual: max_epochs must be at least 1, got {max_epochs}")
    criterion = loss_function(loss)
    if fit_statistics:
        model.fit_statistics(inputs, targets)
    with torch.no_grad():
        steps_in, static_in, prior = model.encode(inputs)
        target = model.scaled_target(targets, prior)
        val = None
        if validation is not None:
            v_steps, v_static, v_prior = model.encode(validation[0])
            val = (v_steps, v_static, model.scaled_target(validation[1], v_prior))
    n = inputs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.body.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    start = time.perf_counter()
    cpu_start = time.process_time()
    last_log = start
    epoch = step = 0
    epoch_loss = float("nan")
    best: dict[str, Any] = {"epoch": 0, "mse": math.inf, "state": None}
    done = False
    while not done:
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            elapsed = time.perf_counter() - start
            progress = elapsed / seconds if seconds > 0 else 0.0
            if max_epochs is not None:
                progress = max(progress, (epoch + i / steps_per_epoch) / max_epochs)
            if progress >= 1.0:
                done = True
                break
            scale = final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            idx = order[i * batch_size : (i + 1) * batch_size]
            pred = model.body(steps_in[idx], static_in[idx])
            value = criterion(pred, target[idx])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach())
            step += 1
        else:
            epoch += 1
            epoch_loss = total / steps_per_epoch
            if val is not None:
                mse = _validation_mse(model, val)
                if mse < best["mse"]:
                    best = {"epoch": epoch, "mse": mse, "state": _copy_state(model.body)}
            now = time.perf_counter()
            if now - last_log >= log_every_s:
                log.info(
                    "epoch %d: %s loss %.4g, best validation mse %.4g at epoch %d (%.0f s)",
                    epoch,
                    loss,
                    epoch_loss,
                    best["mse"],
                    best["epoch"],
                    now - start,
                )
                last_log = now
    if best["state"] is not None:
        model.body.load_state_dict(best["state"])
    model.eval()
    seconds_used = time.perf_counter() - start
    log.info(
        "trained %d epochs, %d steps in %.1f s; last loss %.4g; best validation mse %.4g "
        "at epoch %d",
        epoch,
        step,
        seconds_used,
        epoch_loss,
        best["mse"],
        best["epoch"],
    )
    summary: dict[str, Any] = {
        "epochs": epoch,
        "steps": step,
        "seconds": seconds_used,
        "cpu_seconds": time.process_time() - cpu_start,
        "final_loss": epoch_loss,
    }
    if val is not None:
        summary.update(best_epoch=best["epoch"], best_validation_mse=best["mse"])
    return summary


@torch.no_grad()
def _validation_mse(model: ResidualPropagator, val: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    pred = torch.cat(
        [
            model.body(val[0][i : i + 8192], val[1][i : i + 8192])
            for i in range(0, len(val[0]), 8192)
        ]
    )
    model.train()
    return float(torch.mean((pred - val[2]) ** 2))


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """``model`` over ``inputs`` (n, 7, 6) in batches, in eval mode: (n, 6) float32."""
    model.eval()
    parts = [model(inputs[i : i + batch_size]) for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, inputs.shape[2])
