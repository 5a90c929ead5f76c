"""A training run from start to end: ``train`` checks the settings and data, prepares the model
and the data sources, resumes or starts the run state, fits epoch by epoch and writes the
run folder.

The state of a run that outlives an epoch is explicit: ``RunState`` (epochs done, metric rows,
best validation metrics and weights, early-stopping count, resumes, where an interrupted epoch
stopped) is what the checkpoint saves besides the model, optimizer and RNG states, and what a
resumed run starts from. ``EarlyStopping`` is the rule that updates its early-stopping part.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tracklstm.files import check_outputs, write_json
from tracklstm.models.build import build_model, count_parameters, one_state, physical_units
from tracklstm.stage_cli import show_progress
from tracklstm.train.checkpoints import (
    CHECKPOINT_NAME,
    PARTIAL_METRICS_NAME,
    RUN_OUTPUTS,
    cpu_state,
    device_name,
    find_init_weights,
    load_checkpoint,
    load_init_weights,
    restore_checkpoint,
    run_hash,
    run_lock,
    save_atomic,
    save_checkpoint,
    versions,
    write_metrics,
)
from tracklstm.train.config import budget_epochs, resolve_settings
from tracklstm.train.covariance import fit_covariance, has_covariance
from tracklstm.train.data import (
    WindowsInfo,
    WindowSource,
    inspect_windows,
    load_windows,
    read_split,
)
from tracklstm.train.errors import TrainingInputError, TrainingInterrupted
from tracklstm.train.jacobian import build_term
from tracklstm.train.runtime import (
    Dist,
    clear_stop,
    close_distributed,
    configure_backends,
    init_distributed,
    stop_on_signals,
    stop_requested,
)
from tracklstm.train.trainer import Trainer

log = logging.getLogger("tracklstm.train")


@dataclass(frozen=True)
class RunSetup:
    """What a run is fixed to before it starts: settings, data, files, processes, device."""

    settings: dict[str, Any]  # resolved
    info: WindowsInfo
    out_dir: Path
    checkpoint: Path
    init: tuple[Path, Path | None] | None  # initial weights and their run's training.json
    dist: Dist
    device: torch.device

    @property
    def cfg(self) -> dict[str, Any]:
        """The resolved ``training`` settings."""
        return self.settings["training"]


@dataclass
class PartialEpoch:
    """Where an interrupted epoch stopped: its step, metric sums and seconds so far."""

    epoch: int
    step: int
    abs_sum: float
    sq_sum: float
    seconds: float


@dataclass
class RunState:
    """Everything about a run that carries over from one epoch (or one process) to the next."""

    epoch: int = 0  # the last complete epoch
    best_val: float = math.inf  # validation MAE of the best epoch
    best_val_mse: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best (early stopping)
    stopped: bool = False  # stopped early
    resumes: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # on the CPU
    partial: PartialEpoch | None = None  # an epoch that was interrupted

    #: The fields saved under the checkpoint's ``state`` key (in this order).
    SAVED: ClassVar[tuple[str, ...]] = (
        "epoch",
        "best_val",
        "best_val_mse",
        "best_epoch",
        "bad_epochs",
        "stopped",
        "resumes",
        "rows",
    )

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``best_model``, ``state`` and ``partial`` entries."""
        return {
            "best_model": self.best_weights,
            "state": {name: getattr(self, name) for name in self.SAVED},
            "partial": asdict(self.partial) if self.partial is not None else None,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RunState:
        """The state that ``to_checkpoint`` saved in ``ckpt``."""
        partial = ckpt.get("partial")
        return cls(
            **{name: ckpt["state"][name] for name in cls.SAVED},
            best_weights=ckpt["best_model"],
            partial=PartialEpoch(**partial) if partial else None,
        )


@dataclass(frozen=True)
class EarlyStopping:
    """Keras' EarlyStopping on the validation MAE: stop after ``patience`` epochs without an
    improvement by more than ``min_delta`` (never when ``patience`` is None)."""

    patience: int | None
    min_delta: float
    restore_best: bool

    @classmethod
    def from_settings(cls, cfg: dict[str, Any]) -> EarlyStopping:
        """The rule of the resolved ``training`` settings (``cfg["early_stopping"]``)."""
        es = cfg["early_stopping"]
        patience = None if es["patience"] is None else int(es["patience"])
        return cls(patience, float(es["min_delta"]), bool(es["restore_best"]))

    def update(self, run: RunState, epoch: int, val_mae: float, val_mse: float) -> bool:
        """Count epoch ``epoch`` in ``run``; True when it is the new best."""
        improved = val_mae < run.best_val - self.min_delta
        if improved:
            run.best_val, run.best_val_mse, run.best_epoch = val_mae, val_mse, epoch
            run.bad_epochs = 0
        else:
            run.bad_epochs += 1
        run.stopped = self.should_stop(run)
        return improved

    def should_stop(self, run: RunState) -> bool:
        """Whether ``run`` has gone ``patience`` epochs without a new best."""
        return self.patience is not None and run.bad_epochs >= self.patience


# --------------------------------------------------------------------------------------------
# The run


def train(
    windows: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    *,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Train as ``settings`` say, writing the run folder ``out_dir``; return the summary.

    ``checkpoint`` (default ``out_dir/checkpoint.pt``) is resumed when it belongs to the same
    settings and data, written after every epoch and removed when the run completes. Raises
    ``TrainingInputError`` before training for bad settings or data, and ``TrainingInterrupted``
    after saving when a stop was requested (SIGTERM, SIGINT, ``request_stop``).
    """
    try:
        settings = resolve_settings(settings)
        cfg = settings["training"]
        out_dir = Path(out_dir)
        ckpt_path = Path(checkpoint) if checkpoint else out_dir / CHECKPOINT_NAME
        init = find_init_weights(cfg["init_from"]) if cfg["init_from"] else None
        try:
            check_outputs(
                {"--out": [out_dir / name for name in RUN_OUTPUTS], "--checkpoint": ckpt_path},
                {"--windows": windows, "training.init_from": init and [p for p in init if p]},
            )
        except ValueError as err:
            raise TrainingInputError(str(err)) from None
        info = inspect_windows(windows)
        if settings["window_length"] is not None and settings["window_length"] != (
            info.window_length
        ):
            raise TrainingInputError(
                f"window_length: the settings expect windows of {settings['window_length']} "
                f"states but {windows} holds windows of {info.window_length}"
            )
        dist, device = init_distributed(settings["runtime"]["device"])
        try:
            with stop_on_signals():
                setup = RunSetup(settings, info, out_dir, ckpt_path, init, dist, device)
                return run_training(setup)
        finally:
            close_distributed(dist)
    finally:
        clear_stop()


def run_training(setup: RunSetup) -> dict[str, Any]:
    """Prepare the model and the data, then, holding the run's lock, fit and write the outputs."""
    model, init_sha = prepare_model(setup)
    identity = run_hash(setup.settings, setup.info, init_sha)
    rt = setup.settings["runtime"]
    train_src, val_src, placement = load_windows(
        setup.info, setup.device, rt["data_on_device"], int(rt["stream_chunk"])
    )
    epochs = budget_epochs(setup.cfg, train_src.n)
    if epochs != int(setup.cfg["epochs"]):  # the run's settings say what it trained
        log.info(
            "training.max_steps %d: %d epochs of %d windows instead of %d",
            setup.cfg["max_steps"],
            epochs,
            train_src.n,
            setup.cfg["epochs"],
        )
        setup.cfg["epochs"] = epochs
    try:
        with run_lock(setup.checkpoint, setup.dist.main):
            term = build_term(model, train_src, setup.cfg)
            trainer = Trainer(model, setup.cfg, setup.device, setup.dist, rt, jacobian=term)
            run = start_or_resume(setup, trainer, identity)
            started = time.perf_counter()
            fit(setup, trainer, run, train_src, val_src, placement, identity)
            jacobian = term.summary(model.body, run.best_weights) if term is not None else None
            if has_covariance(model):
                run.best_weights = fit_covariance(
                    model, run.best_weights, train_src, val_src, setup.cfg
                )
            summary = summarize(setup, trainer, run, train_src, val_src, placement, started)
            summary["jacobian_term"] = jacobian
            write_outputs(setup, trainer, run, summary)
            return summary
    finally:
        train_src.close()
        val_src.close()


def prepare_model(setup: RunSetup) -> tuple[nn.Module, str | None]:
    """The seeded model on the device, with the initial weights if any (and their sha256).

    Initial weights from another run bring that run's normalization (``setup.info`` is updated).
    A model in physical units (the residual propagator) gets the windows as stored, and fits its
    scaling statistics on the training split (unless it starts from another run's weights,
    which bring theirs).
    """
    cfg, dist = setup.cfg, setup.dist
    seed = int(cfg["seed"])
    configure_backends(setup.settings["runtime"], setup.device)
    torch.manual_seed(seed)
    model = build_model(setup.settings["model"], setup.info.window_length)
    setup.info.inner_steps = one_state(setup.settings["model"])
    if physical_units(setup.settings["model"]):
        setup.info.normalized = False
        if setup.init is None:
            model.fit_statistics(*read_split(setup.info, "train"))
            log.info("fitted the input and correction statistics on the training split")
    model = model.to(setup.device)
    init_sha = None
    if setup.init is not None:
        init_sha, norm = load_init_weights(
            model, *setup.init, setup.device, setup.settings["model"]
        )
        if norm is not None:  # the weights expect the inputs normalized as in their own run
            setup.info.norm_min, setup.info.norm_max = norm
    if dist.rank > 0:  # dropout draws differ between ranks; rank 0 is the single-process run
        torch.manual_seed(seed + 7919 * dist.rank)
    return model, init_sha


def start_or_resume(setup: RunSetup, trainer: Trainer, identity: str) -> RunState:
    """The state of a new run, or of the run in the checkpoint if it has the same identity
    (then the model, optimizer and RNG states are restored from it as well)."""
    ckpt = load_checkpoint(setup.checkpoint, identity)
    if ckpt is None:
        return RunState(best_weights=cpu_state(trainer.model.state_dict()))
    restore_checkpoint(ckpt, trainer)
    run = RunState.from_checkpoint(ckpt)
    run.resumes += 1
    where = (
        f"in epoch {run.partial.epoch} after step {run.partial.step}"
        if run.partial
        else f"after epoch {run.epoch}"
    )
    log.info("resuming from %s %s", setup.checkpoint, where)
    return run


def fit(
    setup: RunSetup,
    trainer: Trainer,
    run: RunState,
    train_src: WindowSource,
    val_src: WindowSource,
    placement: str,
    identity: str,
) -> None:
    """Train the epochs after ``run.epoch`` until the last or an early stop, updating ``run``,
    saving the checkpoint and ``metrics.csv`` after each; ``TrainingInterrupted`` on a stop
    request (after saving)."""
    cfg, dist = setup.cfg, setup.dist
    epochs = int(cfg["epochs"])
    early = EarlyStopping.from_settings(cfg)
    log.info(
        "training %d parameters on %s%s (%s, data %s): %d train and %d validation windows, "
        "batch %d, epochs %d to %d",
        count_parameters(trainer.model),
        setup.device,
        f" x{dist.world} processes" if dist.world > 1 else "",
        trainer.precision,
        placement,
        train_src.n,
        val_src.n,
        trainer.batch,
        run.epoch + 1,
        epochs,
    )
    progress = show_progress() and dist.main
    for epoch in range(run.epoch + 1, epochs + 1):
        if run.stopped:
            break
        row, seconds = fit_epoch(setup, trainer, run, train_src, val_src, epoch, identity, progress)
        run.rows.append(row)
        run.epoch = epoch
        if early.update(run, epoch, row["val_mae"], row["val_mse"]):
            run.best_weights = cpu_state(trainer.model.state_dict())
        save_checkpoint(setup.checkpoint, identity, trainer, run.to_checkpoint())
        if dist.main:
            write_metrics(setup.out_dir / PARTIAL_METRICS_NAME, run.rows)
        elapsed = sum(r["seconds"] for r in run.rows)
        log.info(
            "epoch %d/%d: train MAE %.5f MSE %.3e | val MAE %.5f MSE %.3e | lr %.2e | "
            "%.1fs, %.0f samples/s | elapsed %s, ETA %s",
            epoch,
            epochs,
            row["train_mae"],
            row["train_mse"],
            row["val_mae"],
            row["val_mse"],
            row["lr"],
            seconds,
            row["samples_per_s"],
            clock(elapsed),
            clock(elapsed / len(run.rows) * (epochs - epoch)),
        )
        if run.stopped:
            log.info("early stop after epoch %d: best was epoch %d", epoch, run.best_epoch)
            break
        if epoch < epochs and trainer.stop_agreed(stop_requested()):
            raise TrainingInterrupted(
                setup.checkpoint, epoch, math.ceil(train_src.n / trainer.batch)
            )


def clock(seconds: float) -> str:
    """A duration as a person reads it: ``42s``, ``7m05s``, ``3h12m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fit_epoch(
    setup: RunSetup,
    trainer: Trainer,
    run: RunState,
    train_src: WindowSource,
    val_src: WindowSource,
    epoch: int,
    identity: str,
    progress: bool,
) -> tuple[dict[str, float], float]:
    """Train epoch ``epoch`` (from where ``run.partial`` stopped in it), validate and step the
    schedule: the epoch's ``metrics.csv`` row and its seconds.

    On a stop request in the epoch, ``run.partial`` records where it stopped, the checkpoint
    is saved and ``TrainingInterrupted`` raised.
    """
    skip, before = 0, 0.0
    trainer.set_sums()
    partial, run.partial = run.partial, None
    if partial is not None and partial.epoch == epoch:
        skip, before = int(partial.step), float(partial.seconds)
        if setup.dist.main:
            trainer.set_sums(float(partial.abs_sum), float(partial.sq_sum))
    t0 = time.perf_counter()
    seed = int(setup.cfg["seed"])
    stopped_at = trainer.train_epoch(train_src, epoch, seed=seed, skip=skip, progress=progress)
    if stopped_at is not None:
        abs_sum, sq_sum = trainer.global_sums()
        seconds = before + time.perf_counter() - t0
        run.partial = PartialEpoch(epoch, stopped_at, abs_sum, sq_sum, seconds)
        save_checkpoint(setup.checkpoint, identity, trainer, run.to_checkpoint())
        raise TrainingInterrupted(setup.checkpoint, epoch, stopped_at)
    abs_sum, sq_sum = trainer.global_sums()
    train_seconds = before + time.perf_counter() - t0
    n_values = train_src.n * trainer.n_features
    train_mae, train_mse = abs_sum / n_values, sq_sum / n_values
    val_mae, val_mse = trainer.evaluate(val_src)
    lr = trainer.lr()
    trainer.schedule(val_mae)
    seconds = before + time.perf_counter() - t0
    row = {
        "epoch": epoch,
        "train_mae": train_mae,
        "train_mse": train_mse,
        "val_mae": val_mae,
        "val_mse": val_mse,
        "lr": lr,
        "seconds": round(seconds, 4),
        "samples_per_s": round(train_src.n / max(train_seconds, 1e-9), 1),
    }
    return row, seconds


# --------------------------------------------------------------------------------------------
# Outputs


def summarize(
    setup: RunSetup,
    trainer: Trainer,
    run: RunState,
    train_src: WindowSource,
    val_src: WindowSource,
    placement: str,
    started: float,
) -> dict[str, Any]:
    """The run's summary (``training.json``): settings, data, machine and outcome."""
    info, init = setup.info, setup.init
    return {
        "settings": setup.settings,
        "norm_min": info.norm_min.tolist(),
        "norm_max": info.norm_max.tolist(),
        "window_length": info.window_length,
        "data_fingerprint": info.fingerprint,
        "data": info.identity,
        "windows_file": str(info.path),
        "n_train": train_src.n,
        "n_validation": val_src.n,
        "parameters": count_parameters(trainer.model),
        "device": device_name(setup.device),
        "processes": setup.dist.world,
        "data_placement": placement,
        "precision": trainer.precision,
        "cuda_graphs": trainer.graphs_used,
        "versions": versions(),
        "epochs_run": run.epoch,
        "stopped_early": run.stopped,
        "best_epoch": run.best_epoch,
        "best_val_mae": run.best_val,
        "best_val_mse": run.best_val_mse,
        "resumes": run.resumes,
        "init_from": str(init[0]) if init else None,
        "seconds_this_process": round(time.perf_counter() - started, 3),
    }


def write_outputs(
    setup: RunSetup, trainer: Trainer, run: RunState, summary: dict[str, Any]
) -> None:
    """Write the run folder (rank 0) and remove the checkpoint; after an early stop with
    ``restore_best`` the model gets the best weights back (for callers of ``train``)."""
    out_dir, model = setup.out_dir, trainer.model
    if setup.dist.main:
        save_atomic(cpu_state(model.state_dict()), out_dir / "weights_last.pt")
        save_atomic(run.best_weights, out_dir / "weights_best.pt")
        write_metrics(out_dir / "metrics.csv", run.rows)
        write_json(out_dir / "training.json", summary)
        setup.checkpoint.unlink(missing_ok=True)
        (out_dir / PARTIAL_METRICS_NAME).unlink(missing_ok=True)
    if run.stopped and EarlyStopping.from_settings(setup.cfg).restore_best:
        model.load_state_dict(run.best_weights)  # Keras' restore_best_weights
