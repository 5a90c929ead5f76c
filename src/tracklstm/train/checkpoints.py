"""The files of a run besides the windows: initial weights from another run (``init_from``),
the checkpoint (its identity, save and load), the lock that keeps a second process off a run,
atomic ``torch.save``, ``metrics.csv``, and the facts of the machine (library versions, device
name) that go into ``training.json``.

The checkpoint (format ``CHECKPOINT_FORMAT``) is a dict of plain types and tensors, loadable
with ``torch.load(path, weights_only=True)``: ``format``, ``run_hash``, ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``best_model``, ``state`` (epoch, best validation
metrics, early-stopping count, resumes, metric rows), ``partial`` (where an interrupted epoch
stopped, or None) and ``rng`` (each rank's RNG states).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn

import tracklstm
from tracklstm.constants import N_FEATURES
from tracklstm.files import atomic_path, sha256_file
from tracklstm.models.build import WeightsFileError, read_weights
from tracklstm.train.config import RUNTIME_KEYS, settings_hash
from tracklstm.train.errors import TrainingInputError
from tracklstm.train.runtime import gather_rng, set_rng_state

if TYPE_CHECKING:
    from tracklstm.train.data import WindowsInfo
    from tracklstm.train.trainer import Trainer

log = logging.getLogger("tracklstm.train")

CHECKPOINT_NAME = "checkpoint.pt"
#: The epochs so far while a run is going on; renamed to metrics.csv when it completes, so a
#: killed run leaves no metrics.csv that looks like a finished run's.
PARTIAL_METRICS_NAME = "metrics.partial.csv"
#: The files a run writes in its folder (and ``CHECKPOINT_NAME`` while it goes on).
RUN_OUTPUTS: tuple[str, ...] = (
    "weights_best.pt",
    "weights_last.pt",
    "metrics.csv",
    PARTIAL_METRICS_NAME,
    "training.json",
)
CHECKPOINT_FORMAT = 2
METRIC_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_mae",
    "train_mse",
    "val_mae",
    "val_mse",
    "lr",
    "seconds",
    "samples_per_s",
)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state dict on the CPU (unaffected by later training steps)."""
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@contextlib.contextmanager
def run_lock(checkpoint: Path, enabled: bool = True) -> Iterator[None]:
    """Refuse a second training process on the same checkpoint (an advisory ``flock``)."""
    try:
        import fcntl
    except ImportError:  # not on this platform
        enabled = False
    if not enabled:
        yield
        return
    lock = checkpoint.with_name(checkpoint.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrainingInputError(
                f"{lock}: another training process is running on this checkpoint"
            ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_init_weights(init_from: str) -> tuple[Path, Path | None]:
    """``init_from``: a weights file, or a run folder (its ``weights_best.pt``); with the
    ``training.json`` beside it when there is one."""
    path = Path(init_from)
    if path.is_dir():
        path = path / "weights_best.pt"
    if not path.is_file():
        raise TrainingInputError(f"training.init_from: {init_from} is not a weights file or run")
    summary = path.parent / "training.json"
    return path, summary if summary.is_file() else None


def load_init_weights(
    model: nn.Module,
    weights: Path,
    summary: Path | None,
    device: torch.device,
    model_settings: dict[str, Any],
) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
    """Load ``weights`` into ``model``: their sha256, and the normalization of their run (from
    its ``summary``, ``training.json``) when known."""
    try:
        state = read_weights(weights, device)
    except WeightsFileError as err:
        raise TrainingInputError(f"training.init_from: {err}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise TrainingInputError(
            f"training.init_from: {weights} does not fit model {model_settings}: {first}"
        ) from None
    init_sha = sha256_file(weights)
    norm = None
    if summary is not None:
        try:
            source = json.loads(summary.read_text())
            lo = np.asarray(source["norm_min"], dtype=np.float32).reshape(N_FEATURES)
            hi = np.asarray(source["norm_max"], dtype=np.float32).reshape(N_FEATURES)
        except (ValueError, KeyError, TypeError) as err:
            raise TrainingInputError(
                f"training.init_from: {summary} holds no normalization ({err})"
            ) from None
        norm = (lo, hi)
        log.info("the normalization comes from %s", summary)
    log.info("initialised the weights from %s", weights)
    return init_sha, norm


def run_hash(settings: dict[str, Any], info: WindowsInfo, init_sha: str | None) -> str:
    """The identity of a run: a checkpoint is resumed only by a run with the same hash.

    It covers the settings (except the ``RUNTIME_KEYS`` of ``runtime``: a retry on another
    machine resumes), the data, the initial weights and the normalization.
    """
    rt = settings["runtime"]
    hashed = {**settings, "runtime": {k: v for k, v in rt.items() if k not in RUNTIME_KEYS}}
    return settings_hash(
        {
            "format": CHECKPOINT_FORMAT,
            "settings": hashed,
            "data": info.identity,
            "init": init_sha,
            "norm": [info.norm_min.tolist(), info.norm_max.tolist()],
        }
    )


def load_checkpoint(path: Path, run_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run (same settings and data), else None."""
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file must not stop the rerun
        log.warning("%s cannot be read (%s); starting afresh", path, err)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        log.warning("%s has another format; starting afresh", path)
        return None
    if ckpt.get("run_hash") != run_hash:
        log.warning("%s belongs to other settings or data; starting afresh", path)
        return None
    return ckpt


def save_checkpoint(path: Path, run_hash: str, trainer: Trainer, run: dict[str, Any]) -> None:
    """Write the checkpoint: the model and ``trainer``'s states, ``run`` (the keys
    ``best_model``, ``state`` and ``partial``) and every rank's RNG states.

    Every rank calls this (the RNG states are gathered); rank 0 writes the file.
    """
    rng = gather_rng(trainer.device, trainer.dist)
    if not trainer.dist.main:
        return
    save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "run_hash": run_hash,
            "model": cpu_state(trainer.model.state_dict()),
            **trainer.state_dict(),
            **run,
            "rng": rng,
        },
        path,
    )


def restore_checkpoint(ckpt: dict[str, Any], trainer: Trainer) -> None:
    """Load the model, optimizer, schedule, scaler and this rank's RNG states of ``ckpt``."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.load_state_dict(ckpt)
    rng, dist = ckpt["rng"], trainer.dist
    if len(rng) == dist.world:
        set_rng_state(rng[dist.rank], trainer.device)
    else:
        log.warning("the checkpoint comes from %d processes, not %d", len(rng), dist.world)


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """``metrics.csv``: one row per epoch (``METRIC_COLUMNS``), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def versions() -> dict[str, str | None]:
    """The versions of the libraries that decide a run's numbers."""
    return {
        "tracklstm": tracklstm.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "python": platform.python_version(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"
