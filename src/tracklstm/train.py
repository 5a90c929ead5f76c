"""Stage 4: train the track model on ``windows.h5``.

Faithful by default: the reference model, L1 loss, MSE metric, Adam (1e-4), gradient clipping by
value (1.0), ReduceLROnPlateau (0.85, 5, 1e-5, 1e-6), batch 1256, 100 epochs and early stopping
(patience 20). Every departure is a setting (``model:`` and ``training:`` in config.yaml).

Data path. When the train and validation tensors fit in the device's memory they are normalized
once and kept there; each epoch draws a permutation with ``randperm`` on the device and slices
batches from it (no per-sample DataLoader). Otherwise the windows are streamed from the HDF5 file
in chunks (chunk order and order within a chunk shuffled). Running sums of the metrics stay on
the device, so no step waits for the device; one sync per epoch reads them.

Resumable. After every epoch a checkpoint (model, optimizer, scheduler, early-stopping state,
RNG states, metrics so far) is written atomically beside the outputs (``checkpoint.pt``, not a
declared output, so Snakemake leaves it when a job fails). A restarted run with the same
settings and data continues from it. On SIGTERM (Slurm's time limit) or Ctrl-C the current step
is finished, the state in the middle of the epoch is saved (the epoch's permutation is rebuilt
from its seed, so the resumed run is the same run) and the process exits with code 143. A lock
beside the checkpoint refuses a second process on the same run.

Several GPUs: under ``torchrun`` (WORLD_SIZE > 1) training is data-parallel (DDP; NCCL on GPUs,
gloo on CPUs). ``batch_size`` stays the global batch: each rank takes its share of every batch
and the loss is scaled so that the averaged gradient is that of the whole batch.

Outputs in the run folder: ``weights_best.pt`` and ``weights_last.pt`` (state dicts of the
normalized-units ``TrackRNN``), ``metrics.csv`` (one row per epoch, rewritten after each epoch)
and ``training.json`` (resolved settings, normalization, window length, data fingerprint,
library versions, device).

Exit codes of the command: 0 done, 1 bad input or settings (one log line names the problem),
143 stopped by a signal after saving the checkpoint (rerun to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import platform
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch
from torch import nn

import tracklstm
from tracklstm.io import atomic_path, setup_logging, sha256_file, show_progress, write_json
from tracklstm.model import TrackRNN, build_model, count_parameters

log = logging.getLogger("tracklstm.train")  # the same name under `python -m`

#: The reference hyperparameters (reference notebook and its PyTorch port), plus the options.
DEFAULT_TRAINING: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 1256,
    "learning_rate": 1.0e-4,
    "grad_clip_value": 1.0,
    "scheduler": {
        "kind": "plateau",
        "factor": 0.85,
        "patience": 5,
        "threshold": 1.0e-5,
        "min_lr": 1.0e-6,
    },
    "early_stopping": {"patience": 20, "min_delta": 0.0, "restore_best": True},
    "seed": 0,
    "init_from": None,
    "device": "auto",
    "precision": "fp32",
    "tf32": False,
    "cuda_graphs": False,
    "data_on_device": "auto",
    "stream_chunk": 262144,
    "eval_batch_size": 16384,
}
DEFAULT_MODEL: dict[str, Any] = {"cell": "lstm", "hidden_sizes": [128, 64, 32], "dropout": 0.0}
#: Training settings that change how a run is executed, not what it computes: a checkpoint
#: written under other values of these is still resumed (e.g. a retry on another machine).
RUNTIME_KEYS: tuple[str, ...] = ("device", "data_on_device", "stream_chunk", "eval_batch_size")
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
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2
EXIT_BAD_INPUT = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: "stopped, rerun to continue"
#: Under DDP the ranks agree on a stop request every this many steps (one small all-reduce).
STOP_SYNC_STEPS = 16
#: Fraction of the free device memory the resident tensors may take (``data_on_device: auto``).
DEVICE_MEMORY_FRACTION = 0.5
N_FEATURES = 6


class TrainingInputError(ValueError):
    """Settings or data that make no sense; raised before any training starts."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (a signal) after its checkpoint was written."""

    def __init__(self, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__(
            f"stopped in epoch {epoch} after step {step}; the state is saved in {checkpoint}, "
            "run the same command again to continue"
        )
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step


# --------------------------------------------------------------------------------------------
# Settings


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(section: dict[str, Any], defaults: dict[str, Any], prefix: str) -> None:
    for key, value in section.items():
        if key not in defaults:
            known = ", ".join(defaults)
            raise TrainingInputError(f"{prefix}.{key}: not a setting (known: {known})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise TrainingInputError(f"{prefix}.{key}: expected a mapping, got {value!r}")
            _check_keys(value, defaults[key], f"{prefix}.{key}")


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill ``{"model": ..., "training": ..., "window_length": ...}`` with the defaults; check it.

    ``window_length`` (optional) is the window length the caller expects; it must match the data.
    Raises ``TrainingInputError`` naming the key of the first setting that makes no sense.
    """
    if not isinstance(settings, dict):
        raise TrainingInputError(f"settings: expected a mapping, got {settings!r}")
    unknown = sorted(set(settings) - {"model", "training", "window_length"})
    if unknown:
        raise TrainingInputError(
            f"{unknown[0]}: not a setting (known: model, training, window_length)"
        )
    for name in ("model", "training"):
        if not isinstance(settings.get(name, {}), dict):
            raise TrainingInputError(f"{name}: expected a mapping, got {settings[name]!r}")
    _check_keys(settings.get("model", {}), DEFAULT_MODEL, "model")
    _check_keys(settings.get("training", {}), DEFAULT_TRAINING, "training")
    model = _merge(DEFAULT_MODEL, settings.get("model", {}))
    training = _merge(DEFAULT_TRAINING, settings.get("training", {}))
    t, sch, es = training, training["scheduler"], training["early_stopping"]

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise TrainingInputError(f"{key}: expected {what}, got {value!r}")

    need(
        _is_int(t["epochs"]) and t["epochs"] >= 1, "training.epochs", "an integer >= 1", t["epochs"]
    )
    for key in ("batch_size", "eval_batch_size", "stream_chunk"):
        need(_is_int(t[key]) and t[key] >= 1, f"training.{key}", "an integer >= 1", t[key])
    lr = t["learning_rate"]
    need(_is_number(lr) and lr > 0, "training.learning_rate", "a number > 0", lr)
    clip = t["grad_clip_value"]
    need(
        clip is None or (_is_number(clip) and clip > 0),
        "training.grad_clip_value",
        "a number > 0 or null (no clipping)",
        clip,
    )
    need(
        sch["kind"] in ("plateau", "cosine", "constant"),
        "training.scheduler.kind",
        "plateau, cosine or constant",
        sch["kind"],
    )
    f = sch["factor"]
    need(_is_number(f) and 0 < f < 1, "training.scheduler.factor", "a number in (0, 1)", f)
    need(
        _is_int(sch["patience"]) and sch["patience"] >= 0,
        "training.scheduler.patience",
        "an integer >= 0",
        sch["patience"],
    )
    for key in ("threshold", "min_lr"):
        need(
            _is_number(sch[key]) and sch[key] >= 0,
            f"training.scheduler.{key}",
            "a number >= 0",
            sch[key],
        )
    need(
        es["patience"] is None or (_is_int(es["patience"]) and es["patience"] >= 1),
        "training.early_stopping.patience",
        "an integer >= 1 or null (never stop early)",
        es["patience"],
    )
    need(
        _is_number(es["min_delta"]) and es["min_delta"] >= 0,
        "training.early_stopping.min_delta",
        "a number >= 0",
        es["min_delta"],
    )
    need(
        isinstance(es["restore_best"], bool),
        "training.early_stopping.restore_best",
        "true or false",
        es["restore_best"],
    )
    need(_is_int(t["seed"]) and t["seed"] >= 0, "training.seed", "an integer >= 0", t["seed"])
    need(
        t["init_from"] is None or isinstance(t["init_from"], str),
        "training.init_from",
        "a path or null",
        t["init_from"],
    )
    need(isinstance(t["device"], str), "training.device", "auto, cpu, cuda or cuda:N", t["device"])
    if t["device"] != "auto":
        try:
            torch.device(t["device"])
        except (RuntimeError, ValueError):
            need(False, "training.device", "auto, cpu, cuda or cuda:N", t["device"])
    need(
        t["precision"] in ("fp32", "bf16", "fp16"),
        "training.precision",
        "fp32, bf16 or fp16",
        t["precision"],
    )
    for key in ("tf32", "cuda_graphs"):
        need(isinstance(t[key], bool), f"training.{key}", "true or false", t[key])
    need(
        t["data_on_device"] in ("auto", True, False),
        "training.data_on_device",
        "auto, true or false",
        t["data_on_device"],
    )
    if t["cuda_graphs"] and t["precision"] == "fp16":
        raise TrainingInputError(
            "training.cuda_graphs: not with precision fp16 (its loss scaler cannot be captured); "
            "use bf16"
        )
    try:
        build_model(model)
    except ValueError as err:
        raise TrainingInputError(str(err)) from None
    length = settings.get("window_length")
    need(
        length is None or (_is_int(length) and length >= 1),
        "window_length",
        "an integer >= 1 or null",
        length,
    )
    return {"model": model, "training": training, "window_length": length}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of resolved settings (decides whether a checkpoint may be resumed)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingInputError(f"training.device is {name!r} but no CUDA GPU is available")
    return device


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's shuffle: a resumed epoch draws the same permutation again."""
    digest = hashlib.sha256(f"tracklstm-shuffle:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# Stop requests (signals)

_STOP: dict[str, Any] = {"signum": 0, "countdown": None}


def request_stop(signum: int = signal.SIGTERM, after_steps: int = 0) -> None:
    """Ask ``train`` to stop: it finishes the step, saves and raises ``TrainingInterrupted``.

    This is what SIGTERM and SIGINT do. ``after_steps`` > 0 lets that many more steps run first
    (a request made before ``train`` starts counts its steps). The request ends with ``train``.
    """
    if after_steps > 0:
        _STOP["countdown"] = int(after_steps)
    else:
        _STOP["signum"] = int(signum)


def _clear_stop() -> None:
    _STOP.update(signum=0, countdown=None)


def _stop_requested(tick: bool = False) -> bool:
    """This process's stop request; ``tick``: one more step has run (counts ``after_steps``)."""
    if tick and _STOP["countdown"] is not None:
        _STOP["countdown"] -= 1
        if _STOP["countdown"] <= 0:
            _STOP.update(signum=int(signal.SIGTERM), countdown=None)
    return _STOP["signum"] != 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT request a stop; a second one acts as usual (kills, or KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("%s: finishing the current step, then saving the checkpoint", name)
        request_stop(signum)
        for s in signals:  # a second signal is not caught
            signal.signal(s, previous[s])

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])


# --------------------------------------------------------------------------------------------
# Several processes (torchrun)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a data-parallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TrainingInputError(
            f"the environment variable {name}={value!r} is not an integer"
        ) from None


def _init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """The device of this process; under torchrun also joins the process group."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(), pick_device(device_name)
    import torch.distributed as tdist

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    kind = pick_device(device_name).type
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise TrainingInputError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device(kind)
    tdist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local), device


def _all_reduce(tensor: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class WindowsInfo:
    """What ``inspect_windows`` learned about a windows file (nothing loaded yet)."""

    path: Path
    window_length: int
    sizes: dict[str, int]
    norm_min: np.ndarray
    norm_max: np.ndarray
    fingerprint: str
    identity: dict[str, Any]


def _attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def inspect_windows(path: str | Path) -> WindowsInfo:
    """Check a windows file's layout, shapes and normalization; raise ``TrainingInputError``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise TrainingInputError(f"{path}: not a readable HDF5 file ({err})") from None
    with h5:
        for split in ("train", "validation"):
            if split not in h5 or not isinstance(h5[split], h5py.Group):
                raise TrainingInputError(f"{path}: the split {split!r} is missing")
            for name in ("inputs", "targets"):
                if name not in h5[split] or not isinstance(h5[split][name], h5py.Dataset):
                    raise TrainingInputError(f"{path}: the dataset {split}/{name} is missing")
        for key in ("norm_min", "norm_max", "window_length"):
            if key not in h5.attrs:
                raise TrainingInputError(f"{path}: the attribute {key!r} is missing")
        attrs = {k: _attr(h5.attrs[k]) for k in h5.attrs}
        lo = np.asarray(attrs["norm_min"], dtype=np.float32).reshape(-1)
        hi = np.asarray(attrs["norm_max"], dtype=np.float32).reshape(-1)
        if lo.shape != (N_FEATURES,) or hi.shape != (N_FEATURES,):
            raise TrainingInputError(
                f"{path}: norm_min/norm_max have {lo.size}/{hi.size} values, expected {N_FEATURES}"
            )
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi > lo).all()):
            raise TrainingInputError(f"{path}: norm_min/norm_max are not finite with max > min")
        length = attrs["window_length"]
        if not _is_int(length) or length < 1:
            raise TrainingInputError(f"{path}: window_length attribute {length!r} is not >= 1")
        sizes = {}
        for split in ("train", "validation"):
            xs, ys = h5[split]["inputs"], h5[split]["targets"]
            if xs.ndim != 3 or xs.shape[1:] != (length, N_FEATURES):
                raise TrainingInputError(
                    f"{path}: {split}/inputs has shape {xs.shape}, expected "
                    f"(N, {length}, {N_FEATURES}) for windows of length {length}"
                )
            if ys.shape != (xs.shape[0], N_FEATURES):
                raise TrainingInputError(
                    f"{path}: {split}/targets has shape {ys.shape}, expected "
                    f"({xs.shape[0]}, {N_FEATURES})"
                )
            for ds in (xs, ys):
                if ds.dtype.kind != "f":
                    raise TrainingInputError(f"{path}: {ds.name} holds {ds.dtype}, not floats")
            if xs.shape[0] == 0:
                raise TrainingInputError(f"{path}: the split {split!r} holds no windows")
            sizes[split] = int(xs.shape[0])
    fingerprint = str(attrs.get("data_fingerprint", "")) or sha256_file(path)
    identity = {
        "data_fingerprint": fingerprint,
        "sizes": sizes,
        "norm_min": lo.tolist(),
        "norm_max": hi.tolist(),
        **{
            k: attrs.get(k)
            for k in (
                "window_length",
                "stride",
                "last_target_plane",
                "split_seed",
                "split_fractions",
            )
        },
    }
    return WindowsInfo(path, int(length), sizes, lo, hi, fingerprint, identity)


def _normalize(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return ((a - lo) / (hi - lo)).astype(np.float32, copy=False)


def _check_finite(a: np.ndarray, path: Path, name: str, first: int) -> None:
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        row = first + int(np.argmax(bad))
        raise TrainingInputError(
            f"{path}: {name} holds NaN or infinite values (first at window {row})"
        )


def _scan_chunks(ds: h5py.Dataset, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, ds.shape[0], chunk):
        yield start, ds[start : start + chunk]


def check_windows_finite(info: WindowsInfo, chunk: int = 262144) -> None:
    """Read the train and validation windows chunk by chunk; stop at the first NaN or inf."""
    with h5py.File(info.path, "r") as h5:
        for split in ("train", "validation"):
            for name in ("inputs", "targets"):
                for start, a in _scan_chunks(h5[split][name], chunk):
                    _check_finite(a, info.path, f"{split}/{name}", start)


@dataclass
class Batch:
    """One step's share of a batch: ``n_global`` windows in the whole batch over all ranks."""

    x: torch.Tensor
    y: torch.Tensor
    n_global: int
    live: bool = True  # False: a stand-in window for a rank whose share is empty (weight 0)


def _rank_share(idx: torch.Tensor, dist: Dist) -> tuple[torch.Tensor, bool]:
    if dist.world == 1:
        return idx, True
    share = idx[dist.rank :: dist.world]
    if len(share) == 0:
        return idx[:1], False
    return share, True


class WindowSource(Protocol):
    """Normalized windows of one split, on the device, in batches."""

    n: int

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]: ...

    def eval_batches(
        self, batch: int, dist: Dist
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def close(self) -> None: ...


class DeviceWindows:
    """A split held in device memory; batches are slices of a ``randperm`` drawn on the device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.n = x, y, len(x)

    @classmethod
    def load(
        cls, info: WindowsInfo, split: str, device: torch.device, chunk: int = 262144
    ) -> DeviceWindows:
        """Read, check and normalize a split chunk by chunk straight into device tensors."""
        n, length = info.sizes[split], info.window_length
        x = torch.empty((n, length, N_FEATURES), dtype=torch.float32, device=device)
        y = torch.empty((n, N_FEATURES), dtype=torch.float32, device=device)
        with h5py.File(info.path, "r") as h5:
            for name, dest in (("inputs", x), ("targets", y)):
                for start, a in _scan_chunks(h5[split][name], chunk):
                    _check_finite(a, info.path, f"{split}/{name}", start)
                    a = _normalize(a, info.norm_min, info.norm_max)
                    dest[start : start + len(a)].copy_(torch.from_numpy(a))
        return cls(x, y)

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=gen, device=gen.device)
        if perm.device != self.x.device:
            perm = perm.to(self.x.device)
        for start in range(skip * batch, self.n, batch):
            idx = perm[start : start + batch]
            share, live = _rank_share(idx, dist)
            yield Batch(self.x[share], self.y[share], len(idx), live)

    def eval_batches(self, batch: int, dist: Dist) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x[dist.rank :: dist.world], self.y[dist.rank :: dist.world]
        for start in range(0, len(x), batch):
            yield x[start : start + batch].contiguous(), y[start : start + batch].contiguous()

    def close(self) -> None:
        pass


class StreamedWindows:
    """A split read from the HDF5 file in chunks, for data larger than the device's memory.

    Each epoch visits the chunks in a shuffled order and shuffles the windows within each chunk
    (the remainder that does not fill a batch is carried over into the next chunk).
    """

    def __init__(self, info: WindowsInfo, split: str, device: torch.device, chunk: int) -> None:
        self.info, self.device, self.chunk = info, device, int(chunk)
        self._file = h5py.File(info.path, "r")
        self._x, self._y = self._file[split]["inputs"], self._file[split]["targets"]
        self.n = int(self._x.shape[0])

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.info.norm_min, self.info.norm_max
        x = _normalize(self._x[start:stop], lo, hi)
        y = _normalize(self._y[start:stop], lo, hi)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]:
        n_chunks = math.ceil(self.n / self.chunk)
        order = torch.randperm(n_chunks, generator=gen, device=gen.device).tolist()
        carry: tuple[torch.Tensor, torch.Tensor] | None = None
        step = 0
        for c in order:
            x, y = self._read(c * self.chunk, min(self.n, (c + 1) * self.chunk))
            if carry is not None:
                x, y = torch.cat([carry[0], x]), torch.cat([carry[1], y])
            perm = torch.randperm(len(x), generator=gen, device=gen.device).to(self.device)
            full = len(x) // batch * batch
            for start in range(0, full, batch):
                if step >= skip:
                    share, live = _rank_share(perm[start : start + batch], dist)
                    yield Batch(x[share], y[share], batch, live)
                step += 1
            rest = perm[full:]
            carry = (x[rest], y[rest]) if len(rest) else None
        if carry is not None and step >= skip:
            idx = torch.arange(len(carry[0]), device=self.device)
            share, live = _rank_share(idx, dist)
            yield Batch(carry[0][share], carry[1][share], len(idx), live)

    def eval_batches(self, batch: int, dist: Dist) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, start in enumerate(range(0, self.n, self.chunk)):
            if i % dist.world != dist.rank:
                continue
            x, y = self._read(start, min(self.n, start + self.chunk))
            for s in range(0, len(x), batch):
                yield x[s : s + batch], y[s : s + batch]

    def close(self) -> None:
        self._file.close()


def _available_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def data_bytes(info: WindowsInfo) -> int:
    """Bytes the normalized train and validation tensors take (float32)."""
    per_window = (info.window_length + 1) * N_FEATURES * 4
    return per_window * (info.sizes["train"] + info.sizes["validation"])


def load_windows(
    info: WindowsInfo, device: torch.device, on_device: bool | str = "auto", chunk: int = 262144
) -> tuple[WindowSource, WindowSource, str]:
    """Train and validation sources: device-resident when they fit (or when told), else streamed.

    Returns ``(train, validation, placement)`` with placement ``device`` or ``stream``.
    """
    if on_device == "auto":
        need, free = data_bytes(info), _available_memory(device)
        on_device = need <= DEVICE_MEMORY_FRACTION * free
        log.info(
            "data: %.2f GB, %.2f GB free on %s -> %s",
            need / 1e9,
            free / 1e9,
            device,
            "kept on the device" if on_device else "streamed from the file",
        )
    if on_device:
        train = DeviceWindows.load(info, "train", device, chunk)
        val = DeviceWindows.load(info, "validation", device, chunk)
        return train, val, "device"
    check_windows_finite(info, chunk)
    return (
        StreamedWindows(info, "train", device, chunk),
        StreamedWindows(info, "validation", device, chunk),
        "stream",
    )


# --------------------------------------------------------------------------------------------
# The training step and epoch


def make_optimizer(model: nn.Module, cfg: dict[str, Any], device: torch.device) -> torch.optim.Adam:
    """Adam as the settings say; fused on CUDA (no host sync with a loss scaler)."""
    lr = float(cfg["learning_rate"])
    if device.type != "cuda":
        return torch.optim.Adam(model.parameters(), lr=lr)
    graphs = bool(cfg["cuda_graphs"])
    # Under a CUDA graph the learning rate must be a device tensor that the scheduler updates
    # in place; a Python float would be frozen into the captured graph.
    return torch.optim.Adam(
        model.parameters(),
        lr=torch.tensor(lr, device=device) if graphs else lr,
        fused=True,
        capturable=graphs,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning-rate schedule: ``plateau`` (the reference), ``cosine`` or ``constant``."""
    sch = cfg["scheduler"]
    if sch["kind"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(sch["factor"]),
            patience=int(sch["patience"]),
            threshold=float(sch["threshold"]),
            threshold_mode="abs",  # Keras' min_delta is absolute
            min_lr=float(sch["min_lr"]),
        )
    if sch["kind"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(cfg["epochs"]), eta_min=float(sch["min_lr"])
        )
    return None


def configure_backends(cfg: dict[str, Any], device: torch.device) -> None:
    """Process-wide CUDA math settings of a run: TF32 only when ``cfg["tf32"]`` asks for it."""
    if device.type != "cuda":
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Off unless asked: cuDNN would otherwise run the fp32 LSTM in TF32 on Ampere and later.
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg["tf32"])
        torch.backends.cudnn.allow_tf32 = bool(cfg["tf32"])


class Trainer:
    """One model's training steps, epochs and evaluation on a device (one rank of DDP)."""

    def __init__(
        self,
        model: TrackRNN,
        cfg: dict[str, Any],
        device: torch.device,
        dist: Dist | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.dist = dist or Dist()
        cuda = device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
        if self.amp_dtype is not None and not cuda:
            log.warning("training.precision %s is for CUDA GPUs; using fp32", cfg["precision"])
            self.amp_dtype = None
        self.graphs = bool(cfg["cuda_graphs"]) and cuda
        if cfg["cuda_graphs"] and not cuda:
            log.warning("training.cuda_graphs is for CUDA GPUs; running without")
        if self.graphs and self.dist.world > 1:
            log.warning("training.cuda_graphs is not used with several processes (DDP)")
            self.graphs = False
        self.precision = cfg["precision"] if self.amp_dtype is not None else "fp32"
        self.net: nn.Module = model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        self.optimizer = make_optimizer(model, {**cfg, "cuda_graphs": self.graphs}, device)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = cfg["grad_clip_value"]
        self.batch = int(cfg["batch_size"])
        self.n_features = model.head.out_features
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_failed = False
        self._warmup_left = 3
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- one step -----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=not self.graphs)

    def _compute(self, x: torch.Tensor, y: torch.Tensor, scale: float, live: bool) -> None:
        """Forward, backward, clip, optimizer step and running sums; no host sync."""
        with self._autocast():
            pred = self.net(x)
        err = pred.float() - y
        abs_total = err.abs().sum()
        loss = abs_total * scale
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_value_(self.params, float(self.clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if live:
            with torch.no_grad():
                self.abs_sum += abs_total.detach()
                self.sq_sum += err.detach().square().sum()

    def step(self, batch: Batch) -> None:
        """One optimizer step on ``batch`` (the loss is the mean over the whole global batch)."""
        full = batch.live and batch.n_global == self.batch and len(batch.x) == self.batch
        if self.graphs and full and not self._graph_failed:
            self._graph_step(batch.x, batch.y)
            return
        scale = self.dist.world / (batch.n_global * self.n_features) if batch.live else 0.0
        self.optimizer.zero_grad(set_to_none=True)
        self._compute(batch.x, batch.y, scale, batch.live)

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The whole step as one CUDA graph: captured after 3 eager warm-up steps, then replayed."""
        if self._graph is None:
            scale = 1.0 / (self.batch * self.n_features)
            if self._warmup_left > 0:  # warm-up runs on a side stream, as capture requires
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._compute(x, y, scale, True)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self._warmup_left -= 1
                return
            self._static = (x.clone(), y.clone())
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._compute(*self._static, scale, True)
            except RuntimeError as err:
                log.warning("CUDA graph capture failed (%s); running without graphs", err)
                self._graph_failed = True
                self.optimizer.zero_grad(set_to_none=True)
                self._compute(x, y, scale, True)
                return
            self._graph = graph
            log.info("captured the training step as a CUDA graph")
        assert self._static is not None
        self._static[0].copy_(x)
        self._static[1].copy_(y)
        self._graph.replay()

    # -- epochs -------------------------------------------------------------------------------

    def set_sums(self, abs_sum: float = 0.0, sq_sum: float = 0.0) -> None:
        """Reset the running sums in place (a captured graph keeps adding into them)."""
        self.abs_sum.fill_(abs_sum)
        self.sq_sum.fill_(sq_sum)

    def global_sums(self) -> tuple[float, float]:
        """The running sums over all ranks (one host sync)."""
        both = torch.stack([self.abs_sum, self.sq_sum])
        return tuple(_all_reduce(both, self.dist).tolist())  # type: ignore[return-value]

    def stop_agreed(self, local: bool, step: int | None = None) -> bool:
        """Whether to stop: the ``local`` request, agreed over the ranks.

        Under DDP the ranks compare their requests at every ``STOP_SYNC_STEPS``-th ``step`` and
        at the end of an epoch (``step`` None), so that all of them stop at the same step.
        """
        if self.dist.world == 1:
            return local
        if step is not None and step % STOP_SYNC_STEPS:
            return False
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        return bool(_all_reduce(flag, self.dist, "max").item())

    def train_epoch(
        self,
        source: WindowSource,
        epoch: int,
        *,
        seed: int,
        skip: int = 0,
        progress: bool = False,
        check_stop: bool = True,
    ) -> int | None:
        """Run epoch ``epoch`` from step ``skip``; None when done, else the step it stopped at."""
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(_epoch_seed(seed, epoch))
        n_steps = math.ceil(source.n / self.batch)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=n_steps,
                initial=skip,
                desc=f"epoch {epoch}/{self.cfg['epochs']}",
                unit="batch",
                leave=False,
            )
        step = skip
        try:
            for batch in source.train_batches(self.batch, gen, self.dist, skip):
                self.step(batch)
                step += 1
                if bar is not None:
                    bar.update(1)
                local = _stop_requested(tick=True)
                if check_stop and step < n_steps and self.stop_agreed(local, step):
                    return step
        finally:
            if bar is not None:
                bar.close()
        return None

    @torch.no_grad()
    def evaluate(self, source: WindowSource) -> tuple[float, float]:
        """Mean absolute and squared error on ``source``, normalized units, fp32, all ranks."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y in source.eval_batches(int(self.cfg["eval_batch_size"]), self.dist):
            err = self.model(x) - y
            sums[0] += err.abs().sum()
            sums[1] += err.square().sum()
        n_values = source.n * self.n_features
        mae, mse = (_all_reduce(sums, self.dist) / n_values).tolist()
        return mae, mse

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def schedule(self, val_mae: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_mae)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # keep the lr's kind (tensor under graphs)
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.graphs else lr
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# --------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng(device: torch.device, dist: Dist) -> list[dict[str, Any]]:
    mine = _rng_state(device)
    if dist.world == 1:
        return [mine]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world
    tdist.all_gather_object(out, mine)
    return [{k: v.cpu() if v is not None else None for k, v in s.items()} for s in out]


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@contextlib.contextmanager
def _run_lock(checkpoint: Path, enabled: bool = True) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------
# The run


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _versions() -> dict[str, str | None]:
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _init_source(init_from: str) -> tuple[Path, Path | None]:
    """``init_from``: a weights file, or a run folder (its ``weights_best.pt``)."""
    path = Path(init_from)
    if path.is_dir():
        path = path / "weights_best.pt"
    if not path.is_file():
        raise TrainingInputError(f"training.init_from: {init_from} is not a weights file or run")
    summary = path.parent / "training.json"
    return path, summary if summary.is_file() else None


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
        info = inspect_windows(windows)
        if settings["window_length"] is not None and settings["window_length"] != (
            info.window_length
        ):
            raise TrainingInputError(
                f"window_length: the settings expect windows of {settings['window_length']} "
                f"states but {windows} holds windows of {info.window_length}"
            )
        init = _init_source(cfg["init_from"]) if cfg["init_from"] else None
        dist, device = _init_distributed(cfg["device"])
        try:
            with _stop_on_signals():
                return _train(info, out_dir, ckpt_path, settings, init, dist, device)
        finally:
            if dist.world > 1:
                import torch.distributed as tdist

                tdist.destroy_process_group()
    finally:
        _clear_stop()


def _train(
    info: WindowsInfo,
    out_dir: Path,
    ckpt_path: Path,
    settings: dict[str, Any],
    init: tuple[Path, Path | None] | None,
    dist: Dist,
    device: torch.device,
) -> dict[str, Any]:
    cfg = settings["training"]
    seed = int(cfg["seed"])
    configure_backends(cfg, device)
    torch.manual_seed(seed)
    model = build_model(settings["model"]).to(device)
    init_sha = None
    if init is not None:
        weights, summary_path = init
        try:
            state = torch.load(weights, map_location=device, weights_only=True)
        except Exception as err:  # not a weights file: say which file, not a traceback
            raise TrainingInputError(
                f"training.init_from: {weights} is not a weights file ({err})"
            ) from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            first = str(err).strip().splitlines()[-1].strip()
            raise TrainingInputError(
                f"training.init_from: {weights} does not fit model {settings['model']}: {first}"
            ) from None
        init_sha = sha256_file(weights)
        if summary_path is not None:
            # The weights expect the inputs normalized as in their own run.
            try:
                source = json.loads(summary_path.read_text())
                lo = np.asarray(source["norm_min"], dtype=np.float32).reshape(N_FEATURES)
                hi = np.asarray(source["norm_max"], dtype=np.float32).reshape(N_FEATURES)
            except (ValueError, KeyError, TypeError) as err:
                raise TrainingInputError(
                    f"training.init_from: {summary_path} holds no normalization ({err})"
                ) from None
            info.norm_min, info.norm_max = lo, hi
            log.info("the normalization comes from %s", summary_path)
        log.info("initialised the weights from %s", weights)
    if dist.rank > 0:  # dropout draws differ between ranks; rank 0 is the single-process run
        torch.manual_seed(seed + 7919 * dist.rank)

    hashed = {**settings, "training": {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}}
    run_hash = settings_hash(
        {
            "format": CHECKPOINT_FORMAT,
            "settings": hashed,
            "data": info.identity,
            "init": init_sha,
            "norm": [info.norm_min.tolist(), info.norm_max.tolist()],
        }
    )
    sources = load_windows(info, device, cfg["data_on_device"], int(cfg["stream_chunk"]))
    try:
        with _run_lock(ckpt_path, dist.main):
            return _train_locked(
                info, out_dir, ckpt_path, settings, init, dist, device, model, run_hash, sources
            )
    finally:
        sources[0].close()
        sources[1].close()


def _train_locked(
    info: WindowsInfo,
    out_dir: Path,
    ckpt_path: Path,
    settings: dict[str, Any],
    init: tuple[Path, Path | None] | None,
    dist: Dist,
    device: torch.device,
    model: TrackRNN,
    run_hash: str,
    sources: tuple[WindowSource, WindowSource, str],
) -> dict[str, Any]:
    cfg = settings["training"]
    seed = int(cfg["seed"])
    train_src, val_src, placement = sources
    trainer = Trainer(model, cfg, device, dist)

    state: dict[str, Any] = {
        "epoch": 0,
        "best_val": math.inf,
        "best_val_mse": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped": False,
        "resumes": 0,
        "rows": [],
    }
    best_state = _cpu_state(model.state_dict())
    partial: dict[str, Any] | None = None
    ckpt = load_checkpoint(ckpt_path, run_hash)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainer.load_state_dict(ckpt)
        best_state = ckpt["best_model"]
        state = ckpt["state"]
        state["resumes"] += 1
        partial = ckpt.get("partial")
        rng = ckpt["rng"]
        if len(rng) == dist.world:
            _set_rng_state(rng[dist.rank], device)
        else:
            log.warning("the checkpoint comes from %d processes, not %d", len(rng), dist.world)
        where = (
            f"in epoch {partial['epoch']} after step {partial['step']}"
            if partial
            else f"after epoch {state['epoch']}"
        )
        log.info("resuming from %s %s", ckpt_path, where)

    def save(partial_state: dict[str, Any] | None) -> None:
        rng = _gather_rng(device, dist)
        if not dist.main:
            return
        _save(
            {
                "format": CHECKPOINT_FORMAT,
                "run_hash": run_hash,
                "model": _cpu_state(model.state_dict()),
                **trainer.state_dict(),
                "best_model": best_state,
                "state": state,
                "partial": partial_state,
                "rng": rng,
            },
            ckpt_path,
        )

    n_train, n_val = train_src.n, val_src.n
    epochs = int(cfg["epochs"])
    es_cfg = cfg["early_stopping"]
    log.info(
        "training %d parameters on %s%s (%s, data %s): %d train and %d validation windows, "
        "batch %d, epochs %d to %d",
        count_parameters(model),
        device,
        f" x{dist.world} processes" if dist.world > 1 else "",
        trainer.precision,
        placement,
        n_train,
        n_val,
        trainer.batch,
        state["epoch"] + 1,
        epochs,
    )
    progress = show_progress() and dist.main
    started = time.perf_counter()
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["stopped"]:
            break
        skip, before = 0, 0.0
        trainer.set_sums()
        if partial is not None and partial["epoch"] == epoch:
            skip, before = int(partial["step"]), float(partial["seconds"])
            if dist.main:
                trainer.set_sums(float(partial["abs_sum"]), float(partial["sq_sum"]))
        partial = None
        t0 = time.perf_counter()
        stopped_at = trainer.train_epoch(train_src, epoch, seed=seed, skip=skip, progress=progress)
        if stopped_at is not None:
            abs_sum, sq_sum = trainer.global_sums()
            save(
                {
                    "epoch": epoch,
                    "step": stopped_at,
                    "abs_sum": abs_sum,
                    "sq_sum": sq_sum,
                    "seconds": before + time.perf_counter() - t0,
                }
            )
            raise TrainingInterrupted(ckpt_path, epoch, stopped_at)
        abs_sum, sq_sum = trainer.global_sums()
        train_seconds = before + time.perf_counter() - t0
        n_values = n_train * trainer.n_features
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
            "samples_per_s": round(n_train / max(train_seconds, 1e-9), 1),
        }
        state["rows"].append(row)
        state["epoch"] = epoch
        if val_mae < state["best_val"] - float(es_cfg["min_delta"]):
            state.update(best_val=val_mae, best_val_mse=val_mse, best_epoch=epoch)
            state["bad_epochs"] = 0
            best_state = _cpu_state(model.state_dict())
        else:
            state["bad_epochs"] += 1
        patience = es_cfg["patience"]
        state["stopped"] = patience is not None and state["bad_epochs"] >= int(patience)
        save(None)
        if dist.main:
            _write_metrics(out_dir / "metrics.csv", state["rows"])
        log.info(
            "epoch %d/%d: train MAE %.5f MSE %.3e | val MAE %.5f MSE %.3e | lr %.2e | "
            "%.1fs, %.0f samples/s",
            epoch,
            epochs,
            train_mae,
            train_mse,
            val_mae,
            val_mse,
            lr,
            seconds,
            row["samples_per_s"],
        )
        if state["stopped"]:
            log.info("early stop after epoch %d: best was epoch %d", epoch, state["best_epoch"])
            break
        if epoch < epochs and trainer.stop_agreed(_stop_requested()):
            raise TrainingInterrupted(ckpt_path, epoch, math.ceil(n_train / trainer.batch))

    summary = {
        "settings": settings,
        "norm_min": info.norm_min.tolist(),
        "norm_max": info.norm_max.tolist(),
        "window_length": info.window_length,
        "data_fingerprint": info.fingerprint,
        "data": info.identity,
        "windows_file": str(info.path),
        "n_train": n_train,
        "n_validation": n_val,
        "parameters": count_parameters(model),
        "device": _device_name(device),
        "processes": dist.world,
        "data_placement": placement,
        "precision": trainer.precision,
        "cuda_graphs": trainer.graphs and not trainer._graph_failed,
        "versions": _versions(),
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped"],
        "best_epoch": state["best_epoch"],
        "best_val_mae": state["best_val"],
        "best_val_mse": state["best_val_mse"],
        "resumes": state["resumes"],
        "init_from": str(init[0]) if init else None,
        "seconds_this_process": round(time.perf_counter() - started, 3),
    }
    if dist.main:
        last_state = _cpu_state(model.state_dict())
        _save(last_state, out_dir / "weights_last.pt")
        _save(best_state, out_dir / "weights_best.pt")
        _write_metrics(out_dir / "metrics.csv", state["rows"])
        write_json(out_dir / "training.json", summary)
        ckpt_path.unlink(missing_ok=True)
    if state["stopped"] and es_cfg["restore_best"]:
        model.load_state_dict(best_state)  # Keras' restore_best_weights, for callers of train()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracklstm train", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", required=True, help="windows.h5 from the windows stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON with "model", "training" and "window_length" (defaults: the reference)',
    )
    parser.add_argument("--settings-file", help="JSON or YAML file with the same content")
    parser.add_argument("--checkpoint", help="checkpoint file (default: OUT/checkpoint.pt)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)
    setup_logging()
    if _env_int("RANK", 0) > 0:  # one log per job under torchrun: the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import yaml

    try:
        settings = json.loads(args.settings)
    except ValueError as err:
        log.error("--settings is not valid JSON: %s", err)
        return EXIT_BAD_INPUT
    if args.settings_file:
        try:
            extra = yaml.safe_load(Path(args.settings_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            log.error("--settings-file %s: %s", args.settings_file, err)
            return EXIT_BAD_INPUT
        if not isinstance(settings, dict) or not isinstance(extra, dict):
            log.error("--settings and --settings-file must hold mappings")
            return EXIT_BAD_INPUT
        settings = _merge(settings, extra)
    try:
        train(args.windows, args.out, settings, checkpoint=args.checkpoint)
    except TrainingInputError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as err:
        if _env_int("RANK", 0) == 0:
            log.warning("%s", err)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
