"""Stage 6: evaluate an exported model on held-out test windows: numbers and plots.

The model is loaded the way its users load it (``torch.jit.load``) and fed physical units.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tracklstm.constants import FEATURES, UNITS  # noqa: E402
from tracklstm.io import atomic_path, setup_logging, write_json  # noqa: E402

log = logging.getLogger(__name__)


def predict_windows(model: torch.jit.ScriptModule, inputs: np.ndarray, batch: int = 16384) -> np.ndarray:
    """Run ``model`` on (N, L, 6) physical inputs in batches; returns (N, 6)."""
    out = np.empty((len(inputs), inputs.shape[-1]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch]))
            out[start : start + batch] = model(x).numpy()
    return out


def residual_stats(residuals: np.ndarray) -> dict[str, dict[str, float]]:
    """Per feature: mean, RMS, MAE and the central 68% interval of truth - prediction."""
    stats = {}
    for i, f in enumerate(FEATURES):
        r = residuals[:, i].astype(np.float64)
        q16, q84 = np.percentile(r, [16, 84])
        stats[f] = {
            "mean": float(r.mean()),
            "rms": float(np.sqrt(np.mean(r**2))),
            "mae": float(np.mean(np.abs(r))),
            "q16": float(q16),
            "q84": float(q84),
            "width68": float(q84 - q16),
            "unit": UNITS[f],
        }
    return stats


def plot_residuals(residuals: np.ndarray, stats: dict, path: str | Path, bins: int = 100) -> None:
    """2x3 histograms of truth - prediction for x, y, z, px, py, pz in physical units."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    for i, (ax, f) in enumerate(zip(axes.flat, FEATURES, strict=True)):
        r = residuals[:, i]
        s = stats[f]
        lo, hi = np.percentile(r, [0.5, 99.5])
        pad = 0.1 * (hi - lo) if hi > lo else 1e-6
        ax.hist(r, bins=bins, range=(lo - pad, hi + pad), color="tab:blue", alpha=0.8)
        ax.axvspan(s["q16"], s["q84"], color="tab:orange", alpha=0.2, label="central 68%")
        ax.set_xlabel(f"{f} truth − prediction [{UNITS[f]}]")
        ax.set_ylabel("windows")
        ax.set_title(f"{f}: RMS {s['rms']:.3g}, 68% width {s['width68']:.3g} {UNITS[f]}")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    axes.flat[0].legend(loc="upper right")
    fig.suptitle(f"Residuals on {len(residuals):,} held-out test windows")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """The per-epoch training metrics as columns."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def plot_loss_curves(metrics: dict[str, np.ndarray], path: str | Path) -> None:
    """Train and validation MAE and MSE per epoch (log scale), with the learning rate."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    ep = metrics["epoch"]
    for ax, key, label in ((axes[0], "mae", "MAE (L1 loss)"), (axes[1], "mse", "MSE")):
        ax.plot(ep, metrics[f"train_{key}"], label="train", color="tab:blue")
        ax.plot(ep, metrics[f"val_{key}"], label="validation", color="tab:red")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label}, normalized units")
        ax.grid(alpha=0.3, which="both")
        lr_ax = ax.twinx()
        lr_ax.plot(ep, metrics["lr"], color="gray", ls="--", label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="gray")
        lines = ax.get_lines() + lr_ax.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    fig.suptitle("Training history")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def evaluate(
    model_path: str | Path,
    windows: str | Path,
    out_dir: str | Path,
    *,
    metrics_csv: str | Path | None = None,
    bins: int = 100,
) -> dict[str, Any]:
    """Evaluate ``model_path`` on the test split of ``windows``; write plots and metrics.json."""
    out_dir = Path(out_dir)
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    with h5py.File(windows, "r") as h5:
        inputs = h5["test"]["inputs"][...]
        targets = h5["test"]["targets"][...]
        lo = np.asarray(h5.attrs["norm_min"], dtype=np.float64)
        hi = np.asarray(h5.attrs["norm_max"], dtype=np.float64)
    if len(inputs) == 0:
        raise ValueError(f"{windows}: the test split is empty")
    pred = predict_windows(model, inputs)
    residuals = targets.astype(np.float64) - pred.astype(np.float64)
    stats = residual_stats(residuals)
    norm_err = residuals / (hi - lo)
    result: dict[str, Any] = {
        "model": str(model_path),
        "windows": str(windows),
        "n_test_windows": len(inputs),
        "normalized": {
            "mae": float(np.mean(np.abs(norm_err))),
            "mse": float(np.mean(norm_err**2)),
        },
        "residuals": stats,
    }
    plot_residuals(residuals, stats, out_dir / "residuals.png", bins=bins)
    if metrics_csv is not None:
        history = read_metrics_csv(metrics_csv)
        if history:
            plot_loss_curves(history, out_dir / "loss_curves.png")
            result["training"] = {
                "epochs": int(history["epoch"][-1]),
                "final_val_mae": float(history["val_mae"][-1]),
                "best_val_mae": float(history["val_mae"].min()),
            }
    write_json(out_dir / "metrics.json", result)
    log.info(
        "test MAE %.5f (normalized) on %d windows; RMS x %.3g cm, px %.3g GeV/c",
        result["normalized"]["mae"], len(inputs), stats["x"]["rms"], stats["px"]["rms"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracklstm evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported TorchScript model (model.ts)")
    parser.add_argument("--windows", required=True, help="windows.h5 whose test split is used")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the plots")
    parser.add_argument("--metrics-csv", help="metrics.csv of the training run (loss curves)")
    parser.add_argument("--bins", type=int, default=100)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        evaluate(args.model, args.windows, args.out, metrics_csv=args.metrics_csv, bins=args.bins)
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
