"""Stage 6: evaluate an exported model on held-out test tracks: numbers, plots and baselines.

The model is loaded the way its users load it (``torch.jit.load``) and fed physical units, so any
exported model file can be evaluated on any dataset's ``windows.h5``; only the test split (tracks
never used for training or model selection) is read. Besides the network's one-step residuals it
computes the same numbers for two propagations without a network (``tracklstm.baselines``), walks
test tracks plane by plane on the model's own predictions, scores the challenge-format test file
and writes everything to ``metrics.json``, a table (``summary.html``) and PNG plots.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm

from tracklstm.baselines import NOMINAL_FIELD, Propagator, baselines, check_field
from tracklstm.constants import FEATURES, N_PLANES, PLANE_Z, UNITS
from tracklstm.io import atomic_path, setup_logging, write_json

log = logging.getLogger(__name__)

#: The methods compared in every plot and table, in this order, with fixed colours.
METHODS: tuple[str, ...] = ("network", "straight", "helix")
LABELS: dict[str, str] = {
    "network": "network",
    "straight": "straight line",
    "helix": "helix, nominal field",
}
COLORS: dict[str, str] = {"network": "#1f77b4", "straight": "#7f7f7f", "helix": "#ff7f0e"}
STYLES: dict[str, dict[str, Any]] = {
    "network": {"marker": "o", "ls": "-", "ms": 4, "lw": 1.8, "zorder": 4},
    "straight": {"marker": "s", "ls": "--", "ms": 3.5, "lw": 1.3, "zorder": 3},
    "helix": {"marker": "^", "ls": "-", "ms": 4, "lw": 1.5, "zorder": 2},
}
#: The variables of the challenge score (z is given, not predicted).
SCORE_FEATURES: tuple[str, ...] = ("x", "y", "px", "py", "pz")
SCORE_INDEX: list[int] = [FEATURES.index(f) for f in SCORE_FEATURES]
#: Plane groups (first, last plane index) shaded in the per-plane plots.
PLANE_GROUPS: tuple[tuple[int, int], ...] = ((1, 6), (7, 12), (13, 18), (19, 24))
DPI = 110


class EvaluationInputError(ValueError):
    """An input file that cannot be evaluated; the message names the file."""


# --------------------------------------------------------------------------------------------
# Data and model


@dataclass
class TestSet:
    """The test split of a windows file, in physical units."""

    inputs: np.ndarray  # (N, L, 6) float32
    targets: np.ndarray  # (N, 6) float32
    target_plane: np.ndarray  # (N,) int
    track: np.ndarray  # (N,) track row in the dataset
    tracks: np.ndarray  # (T, 25, 6) float32, the test tracks' states, NaN where unknown
    track_ids: np.ndarray  # (T,) track row of each entry of ``tracks``
    attrs: dict[str, Any]


def reconstruct_tracks(
    inputs: np.ndarray, targets: np.ndarray, track: np.ndarray, target_plane: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The states of each track that its windows hold: ``(track_ids, tracks (T, 25, 6))``."""
    ids, inv = np.unique(track, return_inverse=True)
    tracks = np.full((len(ids), N_PLANES, inputs.shape[-1]), np.nan, dtype=np.float32)
    length = inputs.shape[1]
    plane = target_plane.astype(np.int64)
    for j in range(length):
        tracks[inv, plane - length + j] = inputs[:, j]
    tracks[inv, plane] = targets
    return ids, tracks


def load_test_set(windows: str | Path, length: int | None = None) -> TestSet:
    """Read the test split of ``windows``; with ``length`` (the model's window length) different
    from the file's, the test windows are rebuilt from the test tracks with that length."""
    windows = Path(windows)
    if not windows.is_file():
        raise EvaluationInputError(f"{windows}: no such file")
    try:
        with h5py.File(windows, "r") as h5:
            if "test" not in h5:
                raise EvaluationInputError(f"{windows}: no test split")
            g = h5["test"]
            inputs = g["inputs"][...]
            targets = g["targets"][...]
            track = g["track"][...]
            target_plane = g["target_plane"][...].astype(np.int64)
            attrs = {k: h5.attrs[k] for k in h5.attrs}
    except (OSError, KeyError) as err:
        raise EvaluationInputError(f"{windows}: not a readable windows file ({err})") from err
    if len(inputs) == 0:
        raise EvaluationInputError(f"{windows}: the test split is empty")
    if not (np.isfinite(inputs).all() and np.isfinite(targets).all()):
        raise EvaluationInputError(f"{windows}: the test split holds NaN or infinite values")
    ids, tracks = reconstruct_tracks(inputs, targets, track, target_plane)
    if length is not None and length != inputs.shape[1]:
        from tracklstm.windows import make_windows

        last = int(attrs.get("last_target_plane", N_PLANES - 1))
        log.info("rebuilding test windows of length %d (the file has %d)", length, inputs.shape[1])
        try:
            inputs, targets, idx, target_plane = make_windows(tracks, length, 1, last)
        except ValueError as err:
            raise EvaluationInputError(f"{windows}: {err}") from err
        if len(inputs) == 0:
            raise EvaluationInputError(f"{windows}: no test window of length {length}")
        track, target_plane = ids[idx], target_plane.astype(np.int64)
    return TestSet(inputs, targets, target_plane, track, tracks, ids, attrs)


def load_model(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript model and the metadata stored in it (empty for a file without any)."""
    path = Path(path)
    extra = {"metadata.json": ""}
    try:
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as err:
        raise EvaluationInputError(f"{path}: not a TorchScript model ({err})") from err
    meta = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
    return model.eval(), meta


def predict_windows(
    model: torch.jit.ScriptModule, inputs: np.ndarray, batch: int = 16384
) -> np.ndarray:
    """Run ``model`` on (N, L, 6) physical inputs in batches; returns (N, 6)."""
    out = np.empty((len(inputs), inputs.shape[-1]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch], np.float32))
            out[start : start + batch] = model(x).numpy()
    return out


# --------------------------------------------------------------------------------------------
# Numbers


def residual_stats(residuals: np.ndarray) -> dict[str, dict[str, float]]:
    """Per feature: mean, RMS, MAE and the central 68% interval of truth - prediction."""
    stats = {}
    for i, f in enumerate(FEATURES):
        r = residuals[:, i].astype(np.float64)
        q16, q84 = np.percentile(r, [16, 84]) if len(r) else (np.nan, np.nan)
        stats[f] = {
            "mean": float(r.mean()) if len(r) else float("nan"),
            "rms": float(np.sqrt(np.mean(r**2))) if len(r) else float("nan"),
            "mae": float(np.mean(np.abs(r))) if len(r) else float("nan"),
            "q16": float(q16),
            "q84": float(q84),
            "width68": float(q84 - q16),
            "unit": UNITS[f],
        }
    return stats


def challenge_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """The challenge's score of (n, 5) x, y, px, py, pz predictions (``tracklstm.challenge``)."""
    from tracklstm.challenge import challenge_score as score

    return float(score(np.asarray(truth, np.float64), np.asarray(pred, np.float64)))


def window_score(truth6: np.ndarray, pred6: np.ndarray) -> float:
    """The challenge score of full (n, 6) states (z dropped)."""
    return challenge_score(truth6[:, SCORE_INDEX], pred6[:, SCORE_INDEX])


def grouped_stats(
    residuals: np.ndarray, groups: np.ndarray, order: Sequence[Any]
) -> dict[str, Any]:
    """RMS, 68% interval and count of the residuals of each group, as lists in ``order``."""
    out: dict[str, Any] = {"n": []}
    per = {f: {"rms": [], "q16": [], "q84": [], "width68": []} for f in FEATURES}
    for g in order:
        stats = residual_stats(residuals[groups == g])
        out["n"].append(int((groups == g).sum()))
        for f in FEATURES:
            for k in per[f]:
                per[f][k].append(stats[f][k])
    out.update(per)
    return out


def momentum_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges holding about equal numbers of values (fewer bins when values repeat)."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([values.min(), values.max() + 1e-9])
    return edges


def binned_by(
    residuals: Mapping[str, np.ndarray], values: np.ndarray, n_bins: int
) -> dict[str, Any]:
    """Residual statistics of every method in equal-population bins of ``values``."""
    edges = momentum_bins(values, n_bins)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    centers = [
        float(np.median(values[idx == b])) if (idx == b).any() else float("nan")
        for b in range(len(edges) - 1)
    ]
    out: dict[str, Any] = {"edges": edges.tolist(), "centers": centers}
    for method, r in residuals.items():
        out[method] = grouped_stats(r, idx, range(len(edges) - 1))
    return out


def complete_tracks(tracks: np.ndarray, last_plane: int) -> np.ndarray:
    """The tracks whose states at planes 0..last_plane are all known."""
    return tracks[np.isfinite(tracks[:, : last_plane + 1]).all(axis=(1, 2))]


def walk_network(
    model: torch.jit.ScriptModule,
    tracks: np.ndarray,
    length: int,
    last_plane: int = N_PLANES - 1,
    batch: int = 16384,
) -> np.ndarray:
    """Propagate each track from its first ``length`` states to ``last_plane`` on the model's
    own predictions: the prediction for plane k joins the window for plane k + 1.

    Returns (n, last_plane + 1, 6): the true first ``length`` states, then the predictions.
    """
    states = np.array(tracks[:, : last_plane + 1], dtype=np.float32)
    for plane in range(length, last_plane + 1):
        states[:, plane] = predict_windows(model, states[:, plane - length : plane], batch)
    return states


def walk_baseline(
    propagate: Propagator, tracks: np.ndarray, start: int, last_plane: int = N_PLANES - 1
) -> np.ndarray:
    """Step a baseline from plane ``start - 1`` to ``last_plane`` one plane at a time, each step
    from the previous prediction to the true z of the next plane."""
    states = np.array(tracks[:, : last_plane + 1], dtype=np.float64)
    for plane in range(start, last_plane + 1):
        states[:, plane] = propagate(states[:, plane - 1], tracks[:, plane, 2])
    return states


def walk_stats(
    walks: Mapping[str, np.ndarray], tracks: np.ndarray, start: int, last_plane: int
) -> dict[str, Any]:
    """RMS and 68% width per variable and the challenge score at every step of each walk."""
    planes = list(range(start, last_plane + 1))
    out: dict[str, Any] = {
        "n_tracks": len(tracks),
        "start_planes": [0, start - 1],
        "planes": planes,
        "z": [float(PLANE_Z[p]) for p in planes],
    }
    for method, states in walks.items():
        per: dict[str, Any] = {f: {"rms": [], "width68": []} for f in FEATURES}
        scores = []
        for p in planes:
            r = tracks[:, p].astype(np.float64) - states[:, p].astype(np.float64)
            stats = residual_stats(r)
            for f in FEATURES:
                per[f]["rms"].append(stats[f]["rms"])
                per[f]["width68"].append(stats[f]["width68"])
            scores.append(window_score(tracks[:, p], states[:, p]))
        per["score"] = scores
        out[method] = per
    return out


def score_challenge_file(
    inputs_csv: str | Path,
    answers_csv: str | Path,
    predictions_csv: str | Path,
    propagators: Mapping[str, Propagator],
) -> dict[str, Any]:
    """Challenge score and RMS per variable of the network's predictions and of each baseline
    on the challenge-format test file."""
    from tracklstm.challenge import read_challenge_answers, read_challenge_inputs

    states, z_target = read_challenge_inputs(inputs_csv)
    last = np.stack([s[-1] for s in states])
    n_states = np.array([len(s) for s in states])
    truth = read_challenge_answers(answers_csv)
    preds = {"network": read_challenge_answers(predictions_csv)}
    for name, path in (("answers", answers_csv), ("predictions", predictions_csv)):
        rows = len(truth) if name == "answers" else len(preds["network"])
        if rows != len(last):
            raise EvaluationInputError(
                f"{path}: {rows} {name} for {len(last)} tracks in {inputs_csv}"
            )
    for method, propagate in propagators.items():
        preds[method] = propagate(last, z_target)[:, SCORE_INDEX]
    out: dict[str, Any] = {
        "n_tracks": len(last),
        "n_states": {"min": int(n_states.min()), "max": int(n_states.max())},
    }
    for method, pred in preds.items():
        r = truth - pred
        out[method] = {
            "score": challenge_score(truth, pred),
            "rms": {f: float(np.sqrt(np.mean(r[:, i] ** 2))) for i, f in enumerate(SCORE_FEATURES)},
        }
    return out


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """The per-epoch training metrics as columns."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def ratio(baseline: float, network: float) -> float:
    """How many times larger the baseline's number is than the network's."""
    return float(baseline / network) if network > 0 else float("inf")


# --------------------------------------------------------------------------------------------
# Plots


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)


def plane_axis(ax: plt.Axes, planes: np.ndarray) -> None:
    """Integer plane ticks (major at the first plane of each group), the second and fourth
    plane groups shaded."""
    for i, (a, b) in enumerate(PLANE_GROUPS):
        if i % 2 == 1:
            ax.axvspan(a - 0.5, b + 0.5, color="0.93", zorder=0, lw=0)
    ax.set_xlim(planes.min() - 0.6, planes.max() + 0.6)
    major = [p for p in (1, 7, 13, 19, 24) if planes.min() <= p <= planes.max()]
    ax.set_xticks(major)
    ax.set_xticks(planes, minor=True)


def _line(ax: plt.Axes, x: Any, y: Any, method: str, label: str, **kw: Any) -> None:
    """One method's curve in its colour, marker and line style."""
    style = {**STYLES[method], **kw}
    ax.plot(x, y, color=COLORS[method], label=label, **style)


def log_axis(ax: plt.Axes, f: str, ylabel: str) -> None:
    """Log y axis with the variable as title; an axis with nothing above 0 stays linear."""
    positive = any(
        np.any(np.asarray(line.get_ydata(), dtype=float) > 0)
        for line in ax.get_lines()
        if not line.get_label().startswith("_")  # skip unlabelled guides (axvline)
    )
    if positive:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.75, "all zero", transform=ax.transAxes, ha="center", color="0.4")
    ax.set_title(f, fontweight="bold")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="major", axis="y")
    ax.grid(alpha=0.12, which="minor", axis="y")


def _figure_legend(fig: plt.Figure, ax: plt.Axes, ncol: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def placeholder_figure(path: str | Path, text: str) -> None:
    """A small PNG that says why a plot has nothing to show."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    save_figure(fig, path)


def residual_histograms(residuals: np.ndarray, bins: int = 100) -> dict[str, dict[str, Any]]:
    """Histogram of each variable's residuals over its central 99% (padded by 10%), with the
    windows outside that range counted as underflow and overflow."""
    out = {}
    for i, f in enumerate(FEATURES):
        r = residuals[:, i]
        lo, hi = np.percentile(r, [0.5, 99.5])
        pad = 0.1 * (hi - lo) if hi > lo else max(abs(lo), 1e-6)
        counts, edges = np.histogram(r, bins=bins, range=(lo - pad, hi + pad))
        out[f] = {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "underflow": int((r < edges[0]).sum()),
            "overflow": int((r > edges[-1]).sum()),
            "unit": UNITS[f],
        }
    return out


def plot_residuals(
    histograms: dict[str, dict[str, Any]], stats: dict, path: str | Path, title: str = ""
) -> None:
    """2x3 histograms of truth - prediction for x, y, z, px, py, pz in physical units, with the
    RMS and the central 68% interval written on each."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), layout="constrained")
    for ax, f in zip(axes.flat, FEATURES, strict=True):
        h = histograms[f]
        s = stats[f]
        ax.axvspan(s["q16"], s["q84"], color="0.85", zorder=0, lw=0, label="central 68%")
        ax.stairs(
            h["counts"], h["edges"], fill=True, color=COLORS["network"], alpha=0.9, zorder=2,
            label="network",
        )  # fmt: skip
        ax.axvline(0, color="k", lw=0.8, alpha=0.6)
        unit = UNITS[f]
        outside = h["underflow"] + h["overflow"]
        ax.text(
            0.03,
            0.96,
            f"RMS {s['rms']:.3g} {unit}\n68% in [{s['q16']:.3g}, {s['q84']:.3g}] {unit}\n"
            f"mean {s['mean']:.2g} {unit}" + (f"\n{outside:,} outside the axis" if outside else ""),
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9},
        )
        ax.set_xlim(h["edges"][0], h["edges"][-1])
        ax.set_xlabel(f"{f} truth − prediction [{unit}]")
        ax.set_ylabel("test windows")
        ax.set_title(f, fontweight="bold")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    axes.flat[2].legend(loc="upper right", fontsize=9)
    hx = histograms[FEATURES[0]]
    n = sum(hx["counts"]) + hx["underflow"] + hx["overflow"]
    fig.suptitle(title or f"Residuals on {n:,} held-out test windows")
    save_figure(fig, path)


def plot_truth_vs_prediction(
    truth: np.ndarray, pred: np.ndarray, path: str | Path, bins: int = 100, title: str = ""
) -> None:
    """2x3 two-dimensional densities of prediction against truth, log colour scale."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 8), layout="constrained")
    for i, (ax, f) in enumerate(zip(axes.flat, FEATURES, strict=True)):
        t, p = truth[:, i], pred[:, i]
        # one square range holding (nearly) all true and predicted values
        qt, qp = np.percentile(t, [0.1, 99.9]), np.percentile(p, [0.1, 99.9])
        lo, hi = min(qt[0], qp[0]), max(qt[1], qp[1])
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.01, 1e-3)
        rng = (lo - pad, hi + pad)
        counts, xe, ye = np.histogram2d(t, p, bins=bins, range=(rng, rng))
        counts = np.ma.masked_equal(counts, 0)
        im = ax.pcolormesh(
            xe, ye, counts.T, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(2.0, counts.max()))
        )
        ax.plot(rng, rng, color="tab:red", lw=0.8, ls="--", label="prediction = truth")
        ax.set_xlim(rng)
        ax.set_ylim(rng)
        ax.set_xlabel(f"true {f} [{UNITS[f]}]")
        ax.set_ylabel(f"predicted {f} [{UNITS[f]}]")
        ax.set_title(f, fontweight="bold")
        ax.set_aspect("equal")
        fig.colorbar(im, ax=ax, label="test windows", shrink=0.8)
    axes.flat[0].legend(loc="best", fontsize=9)
    fig.suptitle(title or f"Prediction versus truth on {len(truth):,} test windows")
    save_figure(fig, path)


def plot_per_plane(per_plane: dict[str, Any], path: str | Path, title: str = "") -> None:
    """RMS (markers) and half the central 68% width (dotted) of the residuals per target plane,
    for the network and the baselines."""
    planes = np.asarray(per_plane["planes"])
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2), layout="constrained", sharex=True)
    for ax, f in zip(axes.flat, FEATURES, strict=True):
        plane_axis(ax, planes)
        for m in METHODS:
            if m in per_plane:
                s = per_plane[m][f]
                _line(ax, planes, s["rms"], m, f"{LABELS[m]}: RMS")
                _line(
                    ax,
                    planes,
                    np.asarray(s["width68"]) / 2,
                    m,
                    f"{LABELS[m]}: half the central 68% width",
                    marker="",
                    ls=":",
                    lw=1.2,
                )
        log_axis(ax, f, f"{f} truth − prediction [{UNITS[f]}]")
    for ax in axes[1]:
        ax.set_xlabel("target plane (grey: planes 7–12 and 19–24)")
    _figure_legend(fig, axes.flat[0])
    fig.suptitle(title or "Residual width per target plane")
    save_figure(fig, path)


def plot_vs_momentum(binned: dict[str, Any], path: str | Path, xlabel: str, title: str) -> None:
    """RMS (markers) and 68% half-width (dotted) of the residuals in bins of momentum."""
    x = np.asarray(binned["centers"])
    edges = np.asarray(binned["edges"])
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2), layout="constrained", sharex=True)
    for ax, f in zip(axes.flat, FEATURES, strict=True):
        for e in edges[1:-1]:
            ax.axvline(e, color="0.88", lw=0.7, zorder=0)
        for m in METHODS:
            if m in binned:
                s = binned[m][f]
                _line(ax, x, s["rms"], m, f"{LABELS[m]}: RMS")
                _line(
                    ax,
                    x,
                    np.asarray(s["width68"]) / 2,
                    m,
                    f"{LABELS[m]}: half the central 68% width",
                    marker="",
                    ls=":",
                    lw=1.2,
                )
        log_axis(ax, f, f"{f} truth − prediction [{UNITS[f]}]")
        ax.set_xlim(edges[0], edges[-1])
    for ax in axes[1]:
        ax.set_xlabel(xlabel + " (grey lines: bin edges)")
    _figure_legend(fig, axes.flat[0])
    fig.suptitle(title)
    save_figure(fig, path)


def plot_walk(
    walk: dict[str, Any], one_step: dict[str, Any] | None, path: str | Path, name: str = ""
) -> None:
    """RMS of each variable after each step of the walk, network against the baselines."""
    planes = np.asarray(walk["planes"])
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2), layout="constrained", sharex=True)
    for ax, f in zip(axes.flat, FEATURES, strict=True):
        plane_axis(ax, planes)
        for m in METHODS:
            if m in walk:
                _line(ax, planes, walk[m][f]["rms"], m, f"{LABELS[m]}, walked")
        if one_step is not None:
            sel = [i for i, p in enumerate(one_step["planes"]) if p in set(planes.tolist())]
            _line(
                ax,
                [one_step["planes"][i] for i in sel],
                [one_step["network"][f]["rms"][i] for i in sel],
                "network",
                "network, one step from true states",
                marker="",
                ls=":",
                lw=1.5,
            )
        log_axis(ax, f, f"RMS of {f} truth − prediction [{UNITS[f]}]")
    for ax in axes[1]:
        ax.set_xlabel("plane reached (grey: planes 7–12 and 19–24)")
    _figure_legend(fig, axes.flat[0], ncol=4)
    a, b = walk["start_planes"]
    fig.suptitle(
        f"{name + ': ' if name else ''}walking {walk['n_tracks']:,} test tracks from their true "
        f"states at planes {a}–{b} to plane {planes.max()} on their own predictions"
    )
    save_figure(fig, path)


def plot_loss_curves(metrics: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    """Train and validation MAE and MSE per epoch (log scale), and the learning rate."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained", sharex=True)
    ep = metrics["epoch"]
    best = int(ep[int(np.argmin(metrics["val_mae"]))])
    marker = "." if len(ep) <= 40 else ""
    for ax, key, label in ((axes[0], "mae", "MAE (the L1 loss)"), (axes[1], "mse", "MSE")):
        ax.plot(ep, metrics[f"train_{key}"], marker=marker, label="train", color="tab:blue")
        ax.plot(ep, metrics[f"val_{key}"], marker=marker, label="validation", color="tab:red")
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}, normalized units")
        ax.set_title(label, fontweight="bold")
    axes[2].plot(ep, metrics["lr"], marker=marker, color="0.3", label="learning rate")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("learning rate", fontweight="bold")
    for ax in axes:
        ax.axvline(
            best, color="tab:green", lw=1, ls=":", label=f"best validation MAE (epoch {best})"
        )
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.12, which="minor")
        ax.legend(loc="best", fontsize=9)
    fig.suptitle(title or "Training history")
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# The metrics table


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain HTML table; floats with 4 significant digits."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


HTML_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:0.3em 0.7em;text-align:right}"
    "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
    "h2{font-size:1.1em;margin-top:1.2em}p{max-width:60em}"
)


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained HTML page."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def verdicts(result: dict[str, Any]) -> list[str]:
    """One sentence per baseline: how many times better or worse the network scores.

    Uses the challenge test file when it was scored, else the one-step test windows.
    """
    ch = result.get("challenge")
    where = "on the challenge test file" if ch else "on the one-step test windows"
    net = ch["network"]["score"] if ch else result["score_windows"]
    out = []
    for m in METHODS[1:]:
        if m not in result["baselines"]:
            continue
        base = ch[m]["score"] if ch else result["baselines"][m]["score_windows"]
        if net <= 0 or base <= 0:
            continue
        if base >= net:
            how = f"{base / net:.3g} times lower (better) than"
        else:
            how = f"{net / base:.3g} times higher (worse) than"
        out.append(
            f"{where[0].upper()}{where[1:]}, the network's challenge score ({net:.4g}) is {how} "
            f"the {LABELS[m]} baseline's ({base:.4g})."
        )
    return out


def summary_html(result: dict[str, Any]) -> str:
    """The metrics table of one evaluation."""
    methods = [m for m in METHODS if m == "network" or m in result["baselines"]]
    parts = [
        f"<p>Model <b>{html.escape(result['model']['name'])}</b> on the test split of "
        f"<b>{html.escape(result['data']['name'])}</b>: {result['data']['n_test_tracks']:,} "
        f"tracks, {result['n_test_windows']:,} windows. Normalized test MAE "
        f"{result['normalized']['mae']:.4g}, MSE {result['normalized']['mse']:.3g}.</p>"
    ]
    parts += [f"<p><b>{html.escape(v)}</b></p>" for v in result.get("verdict", [])]
    ch = result.get("challenge")
    walk = result.get("walk")
    rows = []
    for m in methods:
        ws = result["score_windows"] if m == "network" else result["baselines"][m]["score_windows"]
        row = [LABELS[m], ch[m]["score"] if ch else None, ws]
        row.append(walk[m]["score"][-1] if walk and walk.get("n_tracks") else None)
        if m == "network":
            row.append(1.0)
        else:
            ref = ch["network"]["score"] if ch else result["score_windows"]
            row.append((ch[m]["score"] if ch else ws) / ref if ref > 0 else None)
        rows.append(row)
    last = walk["planes"][-1] if walk and walk.get("planes") else "last"
    parts.append("<h2>Challenge score (lower is better)</h2>")
    parts.append(
        html_table(
            [
                "method",
                "challenge test file",
                "test windows, one step",
                f"walked to plane {last}",
                "score ÷ network's (above 1: the network is better)",
            ],
            rows,
        )
    )
    parts.append("<h2>Residual RMS on the test windows</h2>")
    rows = []
    for m in methods:
        stats = result["residuals"] if m == "network" else result["baselines"][m]["residuals"]
        rows.append([LABELS[m], *[stats[f]["rms"] for f in FEATURES]])
    parts.append(html_table(["method", *[f"{f} [{UNITS[f]}]" for f in FEATURES]], rows))
    parts.append("<h2>Central 68% width of the residuals on the test windows</h2>")
    rows = []
    for m in methods:
        stats = result["residuals"] if m == "network" else result["baselines"][m]["residuals"]
        rows.append([LABELS[m], *[stats[f]["width68"] for f in FEATURES]])
    parts.append(html_table(["method", *[f"{f} [{UNITS[f]}]" for f in FEATURES]], rows))
    if ch:
        parts.append(f"<h2>Challenge test file ({ch['n_tracks']:,} tracks): RMS</h2>")
        rows = [[LABELS[m], *[ch[m]["rms"][f] for f in SCORE_FEATURES]] for m in methods]
        parts.append(html_table(["method", *[f"{f} [{UNITS[f]}]" for f in SCORE_FEATURES]], rows))
    tr = result.get("training")
    if tr:
        parts.append("<h2>Training</h2>")
        parts.append(
            html_table(
                ["epochs", "best epoch", "best validation MAE", "final validation MAE"],
                [[tr["epochs"], tr["best_epoch"], tr["best_val_mae"], tr["final_val_mae"]]],
            )
        )
    return html_page(f"{result['model']['name']} on {result['data']['name']}: test metrics", parts)


def quality_table(
    quality_jsons: Sequence[str | Path], out: str | Path, dataset: str = ""
) -> dict[str, Any]:
    """One HTML page of the data-quality summaries (``quality/<part>.json``) of a dataset: rows
    per part (complete, with empty cells, skipped by reason), rows by number of incomplete
    planes, examples of skipped rows and the value range of each variable. Returns the totals.
    """
    parts_q = []
    for path in quality_jsons:
        try:
            q = json.loads(Path(path).read_text())
            for key in ("rows", "complete_rows", "rows_with_nulls"):
                int(q[key])
        except json.JSONDecodeError as err:
            raise EvaluationInputError(f"{path}: not valid JSON ({err})") from None
        except KeyError as err:
            raise EvaluationInputError(f"{path}: no key {err} (not a quality summary?)") from None
        skipped = q.get("skipped_rows") or {}
        if not isinstance(skipped, dict):
            skipped = {"skipped": int(skipped)}
        parts_q.append((Path(path).stem, q, skipped))
    if not parts_q:
        raise EvaluationInputError("no quality files given")
    reasons = sorted({r for _, _, sk in parts_q for r in sk})
    header = ["part", "rows", "complete rows", "rows with empty cells", "skipped rows"]
    header += [f"skipped: {r.replace('_', ' ')}" for r in reasons]
    rows = []
    for name, q, sk in parts_q:
        rows.append(
            [name, q["rows"], q["complete_rows"], q["rows_with_nulls"], sum(sk.values())]
            + [sk.get(r, 0) for r in reasons]
        )
    totals = [sum(r[i] for r in rows) for i in range(1, len(header))]
    if len(rows) > 1:
        rows.append(["all", *totals])
    ranges: dict[str, list[float]] = {f: [np.inf, -np.inf] for f in FEATURES}
    missing: dict[int, int] = {}
    examples = []
    for name, q, _ in parts_q:
        for f, r in (q.get("ranges") or {}).items():
            if f in ranges and r.get("min") is not None and r.get("max") is not None:
                ranges[f] = [min(ranges[f][0], r["min"]), max(ranges[f][1], r["max"])]
        for k, v in (q.get("rows_by_missing_planes") or {}).items():
            missing[int(k)] = missing.get(int(k), 0) + int(v)
        for ex in (q.get("skipped_examples") or [])[:5]:
            examples.append([name, ex.get("line"), ex.get("reason"), ex.get("message")])
    page = [
        "<h2>Rows</h2>",
        html_table(header, rows),
        "<h2>Value ranges over all planes</h2>",
        html_table(
            ["variable", "min", "max", "unit"],
            [
                [
                    f,
                    float(lo) if np.isfinite(lo) else None,
                    float(hi) if np.isfinite(hi) else None,
                    UNITS[f],
                ]
                for f, (lo, hi) in ranges.items()
            ],
        ),
    ]
    if missing:
        page += [
            "<h2>Rows by number of planes with an empty cell</h2>",
            html_table(
                ["planes with an empty cell", "rows"], [[k, missing[k]] for k in sorted(missing)]
            ),
        ]
    if examples:
        page += [
            "<h2>Examples of skipped rows</h2>",
            html_table(["part", "line", "reason", "message"], examples),
        ]
    title = f"Data quality{': ' + dataset if dataset else ''}"
    with atomic_path(out) as tmp:
        tmp.write_text(html_page(title, page))
    return dict(zip(header[1:], totals, strict=True))


# --------------------------------------------------------------------------------------------
# The evaluation


def write_plots(
    result: dict[str, Any],
    truth: np.ndarray,
    pred: np.ndarray,
    out_dir: Path,
    bins: int,
    history: dict[str, np.ndarray],
    metrics_csv: str | Path | None,
) -> None:
    """Every PNG of an evaluation, from its numbers and residuals."""
    title = f"{result['model']['name']} on {result['data']['name']}"
    plot_residuals(
        result["histograms"],
        result["residuals"],
        out_dir / "residuals.png",
        f"{title}: residuals on {len(truth):,} held-out test windows",
    )
    plot_truth_vs_prediction(
        truth,
        pred,
        out_dir / "truth_vs_prediction.png",
        bins,
        f"{title}: prediction versus truth on {len(truth):,} test windows",
    )
    plot_per_plane(
        result["per_plane"],
        out_dir / "resolution_per_plane.png",
        f"{title}: residual width per target plane",
    )
    for var, label, file in (
        ("p", "|p|", "resolution_vs_momentum.png"),
        ("pt", "pt", "resolution_vs_pt.png"),
    ):
        plot_vs_momentum(
            result["vs_momentum"][var],
            out_dir / file,
            f"{label} of the true state [GeV/c]",
            f"{title}: residual width in bins of {label} (equal numbers of windows per bin)",
        )
    if result["walk"].get("n_tracks"):
        plot_walk(result["walk"], result["per_plane"], out_dir / "walk.png", title)
    else:
        placeholder_figure(out_dir / "walk.png", "No test track is complete: nothing to walk.")
    if history:
        plot_loss_curves(
            history, out_dir / "loss_curves.png", f"Training history of {result['model']['name']}"
        )
    elif metrics_csv is not None:
        placeholder_figure(out_dir / "loss_curves.png", f"{metrics_csv} holds no epoch.")


def evaluate(
    model_path: str | Path,
    windows: str | Path,
    out_dir: str | Path,
    *,
    metrics_csv: str | Path | None = None,
    bins: int = 100,
    n_momentum_bins: int = 8,
    helix_field: Sequence[Sequence[float]] = NOMINAL_FIELD,
    challenge_inputs: str | Path | None = None,
    challenge_answers: str | Path | None = None,
    challenge_predictions: str | Path | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
    batch: int = 16384,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_path`` on the test split of ``windows``; write plots and metrics.json.

    Writes ``metrics.json``, ``summary.html``, ``residuals.png``, ``truth_vs_prediction.png``,
    ``resolution_per_plane.png``, ``resolution_vs_momentum.png``, ``resolution_vs_pt.png``,
    ``walk.png`` and, with ``metrics_csv``, ``loss_curves.png``. With all three challenge files
    the challenge score of the network and the baselines goes into ``metrics.json`` too.
    ``plots=False`` writes the numbers only (``metrics.json``, ``summary.html``).
    """
    out_dir = Path(out_dir)
    model_path = Path(model_path)
    model, meta = load_model(model_path)
    length = int(meta["window_length"]) if "window_length" in meta else None
    test = load_test_set(windows, length)
    length = test.inputs.shape[1]
    model_name = model_name or model_path.parent.name or model_path.stem
    data_name = data_name or Path(windows).parent.name
    propagators = baselines(check_field(helix_field))
    log.info(
        "model %s (window %d) on %s: %d test windows of %d tracks",
        model_name,
        length,
        data_name,
        len(test.inputs),
        len(test.track_ids),
    )

    # One step from true states: the network and the baselines on the same windows.
    pred = predict_windows(model, test.inputs, batch)
    if not np.isfinite(pred).all():
        bad = int((~np.isfinite(pred)).any(axis=1).sum())
        raise EvaluationInputError(
            f"{model_path}: the model predicts NaN or infinite values for {bad} of "
            f"{len(pred)} test windows"
        )
    truth = test.targets.astype(np.float64)
    last_states = test.inputs[:, -1].astype(np.float64)
    preds = {"network": pred.astype(np.float64)}
    for name, propagate in propagators.items():
        preds[name] = propagate(last_states, truth[:, 2])
    res = {m: truth - p for m, p in preds.items()}
    if meta.get("norm_min") is not None:
        lo, hi, norm_from = np.asarray(meta["norm_min"]), np.asarray(meta["norm_max"]), "model"
    else:
        lo, hi = np.asarray(test.attrs["norm_min"]), np.asarray(test.attrs["norm_max"])
        norm_from = "data"
    norm_err = res["network"] / (hi - lo)
    stats = {m: residual_stats(r) for m, r in res.items()}
    planes = sorted(int(p) for p in np.unique(test.target_plane))
    per_plane: dict[str, Any] = {"planes": planes}
    for m, r in res.items():
        per_plane[m] = grouped_stats(r, test.target_plane, planes)
    p_abs = np.linalg.norm(truth[:, 3:6], axis=1)
    p_t = np.linalg.norm(truth[:, 3:5], axis=1)
    vs_p = binned_by(res, p_abs, n_momentum_bins)
    vs_pt = binned_by(res, p_t, n_momentum_bins)

    result: dict[str, Any] = {
        "model": {
            "name": model_name,
            "path": str(model_path),
            "window_length": length,
            "data_fingerprint": meta.get("data_fingerprint"),
            "settings": meta.get("model"),
            "normalization": {"min": lo.tolist(), "max": hi.tolist()},
        },
        "data": {
            "name": data_name,
            "windows": str(windows),
            "n_test_tracks": len(test.track_ids),
            "data_fingerprint": test.attrs.get("data_fingerprint"),
        },
        "n_test_windows": len(test.inputs),
        "normalized": {
            "mae": float(np.mean(np.abs(norm_err))),
            "mse": float(np.mean(norm_err**2)),
            "normalization_of": norm_from,
        },
        "residuals": stats["network"],
        "histograms": residual_histograms(res["network"], bins),
        "score_windows": window_score(truth, preds["network"]),
        "baselines": {
            "helix_field": [list(r) for r in check_field(helix_field)],
            **{
                m: {"residuals": stats[m], "score_windows": window_score(truth, preds[m])}
                for m in propagators
            },
        },
        "per_plane": per_plane,
        "vs_momentum": {"p": vs_p, "pt": vs_pt},
    }
    if meta.get("data_fingerprint") and test.attrs.get("data_fingerprint"):
        result["same_data_as_training"] = meta["data_fingerprint"] == test.attrs["data_fingerprint"]

    # Walking: from the first `length` true states of complete tracks to the last plane.
    last_plane = int(test.attrs.get("last_target_plane", N_PLANES - 1))
    full = complete_tracks(test.tracks, last_plane)
    if len(full) and last_plane >= length:
        walks = {"network": walk_network(model, full, length, last_plane, batch)}
        for name, propagate in propagators.items():
            walks[name] = walk_baseline(propagate, full, length, last_plane)
        result["walk"] = walk_stats(walks, full, length, last_plane)
    else:
        log.warning("no test track is complete to plane %d: no walk", last_plane)
        result["walk"] = {"n_tracks": 0}

    if challenge_inputs and challenge_answers and challenge_predictions:
        result["challenge"] = score_challenge_file(
            challenge_inputs, challenge_answers, challenge_predictions, propagators
        )

    # How much better the network is: baseline / network, > 1 means the network is better.
    comp: dict[str, Any] = {}
    for m in propagators:
        c: dict[str, Any] = {
            "score_windows": ratio(
                result["baselines"][m]["score_windows"], result["score_windows"]
            ),
            "rms": {
                f: ratio(stats[m][f]["rms"], stats["network"][f]["rms"]) for f in SCORE_FEATURES
            },
        }
        if result.get("challenge"):
            ch = result["challenge"]
            c["challenge_score"] = ratio(ch[m]["score"], ch["network"]["score"])
        if result["walk"].get("n_tracks"):
            c["walk_score_last_plane"] = ratio(
                result["walk"][m]["score"][-1], result["walk"]["network"]["score"][-1]
            )
        comp[m] = c
    result["baseline_over_network"] = comp
    result["verdict"] = verdicts(result)

    history = read_metrics_csv(metrics_csv) if metrics_csv is not None else {}
    if history:
        result["training"] = {
            "epochs": int(history["epoch"][-1]),
            "final_val_mae": float(history["val_mae"][-1]),
            "best_val_mae": float(history["val_mae"].min()),
            "best_epoch": int(history["epoch"][int(np.argmin(history["val_mae"]))]),
            "history": {k: v.tolist() for k, v in history.items()},
        }
    if plots:
        write_plots(result, truth, preds["network"], out_dir, bins, history, metrics_csv)
    write_json(out_dir / "metrics.json", result)
    with atomic_path(out_dir / "summary.html") as tmp:
        tmp.write_text(summary_html(result))
    log.info(
        "test MAE %.5f (normalized) on %d windows; RMS x %.3g cm, px %.3g GeV/c; window score "
        "network %.4g, straight %.4g, helix %.4g",
        result["normalized"]["mae"],
        len(test.inputs),
        stats["network"]["x"]["rms"],
        stats["network"]["px"]["rms"],
        result["score_windows"],
        result["baselines"]["straight"]["score_windows"],
        result["baselines"]["helix"]["score_windows"],
    )
    for line in result["verdict"]:
        log.info("%s", line)
    return result


def quality_main(argv: list[str] | None = None) -> int:
    """``tracklstm evaluate quality --out table.html [--dataset NAME] part.json ...``."""
    parser = argparse.ArgumentParser(
        prog="tracklstm evaluate quality",
        description="One HTML table of a dataset's data-quality summaries (quality/<part>.json).",
    )
    parser.add_argument("quality", nargs="+", help="quality JSON files written by to_parquet")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--dataset", default="", help="dataset name for the title")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        quality_table(args.quality, args.out, args.dataset)
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quality"]:
        return quality_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="tracklstm evaluate",
        description=__doc__.splitlines()[0],
        epilog="'tracklstm evaluate quality --help': the data-quality table instead.",
    )
    parser.add_argument("--model", required=True, help="exported TorchScript model (model.ts)")
    parser.add_argument("--windows", required=True, help="windows.h5 whose test split is used")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the plots")
    parser.add_argument("--metrics-csv", help="metrics.csv of the training run (loss curves)")
    parser.add_argument("--bins", type=int, default=100, help="histogram bins")
    parser.add_argument(
        "--momentum-bins", type=int, default=8, help="bins of |p| and pt (equal populations)"
    )
    parser.add_argument(
        "--helix-field",
        help="JSON list of [z_from_cm, qBz_T] regions for the helix baseline "
        f"(default {json.dumps([list(r) for r in NOMINAL_FIELD])})",
    )
    parser.add_argument("--challenge-inputs", help="challenge-format test inputs (CSV)")
    parser.add_argument("--challenge-answers", help="the true x,y,px,py,pz of those tracks")
    parser.add_argument("--challenge-predictions", help="the model's x,y,px,py,pz for them")
    parser.add_argument("--model-name", help="name of the model in titles (default: its folder)")
    parser.add_argument("--data-name", help="name of the data in titles (default: its folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-plots", action="store_true", help="numbers only, no PNG")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    challenge = [args.challenge_inputs, args.challenge_answers, args.challenge_predictions]
    if any(challenge) and not all(challenge):
        parser.error(
            "--challenge-inputs, --challenge-answers and --challenge-predictions go together"
        )
    try:
        field = json.loads(args.helix_field) if args.helix_field else NOMINAL_FIELD
        field = check_field(field)
    except (ValueError, TypeError) as err:
        log.error("--helix-field: %s", err)
        return 1
    try:
        evaluate(
            args.model,
            args.windows,
            args.out,
            metrics_csv=args.metrics_csv,
            bins=args.bins,
            n_momentum_bins=args.momentum_bins,
            helix_field=field,
            challenge_inputs=args.challenge_inputs,
            challenge_answers=args.challenge_answers,
            challenge_predictions=args.challenge_predictions,
            model_name=args.model_name,
            data_name=args.data_name,
            plots=not args.no_plots,
        )
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
