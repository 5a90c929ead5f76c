"""Stage 4: train the track model on ``windows.h5``.

The training tensors live on the device (GPU when there is one) and batches are drawn with a
shuffled permutation, so no per-sample DataLoader stands between the data and the model. After
every epoch a checkpoint is written atomically; a restarted run with the same settings and data
continues from it.

Outputs in the run folder: ``weights_best.pt`` and ``weights_last.pt`` (state dicts of the
normalized-units model), ``metrics.csv`` (one row per epoch) and ``training.json`` (resolved
settings, normalization, library versions, device, data fingerprint).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

import tracklstm
from tracklstm.io import atomic_path, setup_logging, show_progress, write_json
from tracklstm.model import build_model, count_parameters

log = logging.getLogger(__name__)

#: The reference hyperparameters (reference notebook and its PyTorch port).
DEFAULT_TRAINING: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 1256,
    "learning_rate": 1.0e-4,
    "grad_clip_value": 1.0,
    "scheduler": {"factor": 0.85, "patience": 5, "threshold": 1.0e-5, "min_lr": 1.0e-6},
    "early_stopping": {"patience": 20, "restore_best": True},
    "seed": 0,
    "device": "auto",
    "eval_batch_size": 16384,
}
DEFAULT_MODEL: dict[str, Any] = {"cell": "lstm", "hidden_sizes": [128, 64, 32], "dropout": 0.0}
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


class TrainingInputError(ValueError):
    """Settings or data that make no sense; raised before any training starts."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill ``{"model": ..., "training": ...}`` with the reference defaults and check it."""
    model = _merge(DEFAULT_MODEL, settings.get("model", {}))
    training = _merge(DEFAULT_TRAINING, settings.get("training", {}))
    checks = [
        (int(training["epochs"]) >= 1, "training.epochs must be at least 1"),
        (int(training["batch_size"]) >= 1, "training.batch_size must be at least 1"),
        (float(training["learning_rate"]) > 0, "training.learning_rate must be positive"),
        (float(training["grad_clip_value"]) > 0, "training.grad_clip_value must be positive"),
        (all(int(h) >= 1 for h in model["hidden_sizes"]), "model.hidden_sizes must be >= 1"),
        (0 <= float(model["dropout"]) < 1, "model.dropout must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainingInputError(message)
    return {**settings, "model": model, "training": training}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of resolved settings (decides whether a checkpoint may be resumed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class WindowData:
    """Normalized train and validation tensors plus the file's metadata."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    norm_min: np.ndarray
    norm_max: np.ndarray
    attrs: dict[str, Any]


def load_windows(path: str | Path, device: torch.device) -> WindowData:
    """Read, check and normalize the train and validation splits onto ``device``."""
    path = Path(path)
    with h5py.File(path, "r") as h5:
        for split in ("train", "validation"):
            if split not in h5:
                raise TrainingInputError(f"{path}: the split {split!r} is missing")
        attrs = {k: h5.attrs[k] for k in h5.attrs}
        arrays = {
            f"{s}_{n}": h5[s][n][...] for s in ("train", "validation") for n in ("inputs", "targets")
        }
    lo = np.asarray(attrs["norm_min"], dtype=np.float32)
    hi = np.asarray(attrs["norm_max"], dtype=np.float32)
    length = int(attrs["window_length"])
    for name, arr in arrays.items():
        want = (length, lo.size) if name.endswith("inputs") else (lo.size,)
        if arr.shape[1:] != want:
            raise TrainingInputError(f"{path}: {name} has shape {arr.shape}, expected (N, {want})")
        if len(arr) == 0:
            raise TrainingInputError(f"{path}: {name} is empty")
        if not np.isfinite(arr).all():
            raise TrainingInputError(f"{path}: {name} holds NaN or infinite values")

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - lo) / (hi - lo)).to(device)

    return WindowData(
        norm(arrays["train_inputs"]),
        norm(arrays["train_targets"]),
        norm(arrays["validation_inputs"]),
        norm(arrays["validation_targets"]),
        lo,
        hi,
        attrs,
    )


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean absolute and mean squared error of ``model`` on (x, y), in normalized units."""
    model.eval()
    abs_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    sq_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        err = model(x[start : start + batch_size]) - y[start : start + batch_size]
        abs_sum += err.abs().sum()
        sq_sum += err.square().sum()
    n = y.numel()
    return (abs_sum / n).item(), (sq_sum / n).item()


def _versions() -> dict[str, str]:
    return {
        "tracklstm": tracklstm.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def train(windows: str | Path, out_dir: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Train as ``settings`` say, writing the run folder ``out_dir``; return a summary."""
    settings = resolve_settings(settings)
    cfg = settings["training"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg["device"])
    data = load_windows(windows, device)
    if "window_length" in cfg and int(cfg["window_length"]) != int(data.attrs["window_length"]):
        raise TrainingInputError(
            f"training.window_length is {cfg['window_length']} but {windows} holds windows of "
            f"{int(data.attrs['window_length'])}"
        )
    fingerprint = str(data.attrs.get("data_fingerprint", ""))
    run_hash = settings_hash({"settings": settings, "data": fingerprint})

    torch.manual_seed(int(cfg["seed"]))
    model = build_model(settings["model"]).to(device)
    if settings.get("init_from"):
        state = torch.load(settings["init_from"], map_location=device, weights_only=True)
        model.load_state_dict(state)
        log.info("initialised the weights from %s", settings["init_from"])
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["learning_rate"]))
    sched_cfg = cfg["scheduler"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=float(sched_cfg["factor"]),
        patience=int(sched_cfg["patience"]),
        threshold=float(sched_cfg["threshold"]),
        threshold_mode="abs",  # Keras' min_delta is absolute
        min_lr=float(sched_cfg["min_lr"]),
    )
    loss_fn = nn.L1Loss()
    shuffle = torch.Generator().manual_seed(int(cfg["seed"]))
    state: dict[str, Any] = {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "rows": [],
    }
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    ckpt_path = out_dir / CHECKPOINT_NAME
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("run_hash") == run_hash:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            shuffle.set_state(ckpt["shuffle_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
            best_state = ckpt["best_model"]
            state = ckpt["state"]
            log.info("resuming from %s after epoch %d", ckpt_path, state["epoch"])
        else:
            log.warning("%s belongs to other settings or data; starting afresh", ckpt_path)

    n_train = len(data.x_train)
    batch = int(cfg["batch_size"])
    clip = float(cfg["grad_clip_value"])
    es_cfg = cfg["early_stopping"]
    log.info(
        "training %d parameters on %s: %d train and %d validation windows, batch %d",
        count_parameters(model),
        device,
        n_train,
        len(data.x_val),
        batch,
    )
    epochs = int(cfg["epochs"])
    progress = show_progress()
    for epoch in range(state["epoch"] + 1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n_train, generator=shuffle).to(device)
        abs_sum = torch.zeros((), device=device, dtype=torch.float64)
        sq_sum = torch.zeros((), device=device, dtype=torch.float64)
        steps = range(0, n_train, batch)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")
        for start in steps:
            idx = perm[start : start + batch]
            x, y = data.x_train[idx], data.y_train[idx]
            pred = model(x)
            loss = loss_fn(pred, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_value_(model.parameters(), clip)
            optimizer.step()
            with torch.no_grad():
                err = pred.detach() - y
                abs_sum += err.abs().sum()
                sq_sum += err.square().sum()
        n_values = data.y_train.numel()
        train_mae, train_mse = (abs_sum / n_values).item(), (sq_sum / n_values).item()
        val_mae, val_mse = evaluate_loss(model, data.x_val, data.y_val, int(cfg["eval_batch_size"]))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_mae)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "train_mae": train_mae,
            "train_mse": train_mse,
            "val_mae": val_mae,
            "val_mse": val_mse,
            "lr": lr,
            "seconds": round(seconds, 4),
            "samples_per_s": round(n_train / seconds, 1),
        }
        state["rows"].append(row)
        state["epoch"] = epoch
        if val_mae < state["best_val"]:
            state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        log.info(
            "epoch %d/%d: train MAE %.5f MSE %.3e | val MAE %.5f MSE %.3e | lr %.2e | %.1fs",
            epoch, epochs, train_mae, train_mse, val_mae, val_mse, lr, seconds,
        )
        stop = state["bad_epochs"] >= int(es_cfg["patience"])
        ckpt = {
            "run_hash": run_hash,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_rng": shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best_model": best_state,
            "state": state,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(ckpt, tmp)
        if stop:
            log.info("early stop after epoch %d: best was epoch %d", epoch, state["best_epoch"])
            break

    last_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "weights_last.pt") as tmp:
        torch.save(last_state, tmp)
    with atomic_path(out_dir / "weights_best.pt") as tmp:
        torch.save({k: v.cpu() for k, v in best_state.items()}, tmp)
    _write_metrics(out_dir / "metrics.csv", state["rows"])
    summary = {
        "settings": settings,
        "norm_min": data.norm_min.tolist(),
        "norm_max": data.norm_max.tolist(),
        "window_length": int(data.attrs["window_length"]),
        "data_fingerprint": fingerprint,
        "windows_file": str(windows),
        "n_train": n_train,
        "n_validation": len(data.x_val),
        "parameters": count_parameters(model),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": _versions(),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_mae": state["best_val"],
    }
    write_json(out_dir / "training.json", summary)
    ckpt_path.unlink(missing_ok=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracklstm train", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", required=True, help="windows.h5 from the windows stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON with "model" and "training" sections (defaults: the reference)',
    )
    parser.add_argument("--settings-file", help="JSON or YAML file with the same content")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = json.loads(args.settings)
    if args.settings_file:
        import yaml

        settings = _merge(settings, yaml.safe_load(Path(args.settings_file).read_text()) or {})
    try:
        train(args.windows, args.out, settings)
    except TrainingInputError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
