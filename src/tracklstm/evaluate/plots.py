"""Every figure of an evaluation, drawn from its numbers (``metrics.json``) and residuals.

Six of them are the same 2x3 grid, one panel per state variable (x, y, z above px, py, pz):
``feature_grid`` builds it (``tracklstm.evaluate.compare`` uses it too). The network and the
baselines keep one colour, marker and line style in every plot (``COLORS``, ``STYLES``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from tracklstm.constants import FEATURES, UNITS
from tracklstm.evaluate.methods import LABELS, METHODS
from tracklstm.files import atomic_path

COLORS: dict[str, str] = {
    "network": "#1f77b4",
    "straight": "#7f7f7f",
    "helix": "#ff7f0e",
    "field_only": "#2ca02c",
}
STYLES: dict[str, dict[str, Any]] = {
    "network": {"marker": "o", "ls": "-", "ms": 4, "lw": 1.8, "zorder": 4},
    "straight": {"marker": "s", "ls": "--", "ms": 3.5, "lw": 1.3, "zorder": 3},
    "helix": {"marker": "^", "ls": "-", "ms": 4, "lw": 1.5, "zorder": 2},
    "field_only": {"marker": "v", "ls": ":", "ms": 3.5, "lw": 1.5, "zorder": 1},
}
#: Plane groups (first, last plane index) shaded in the per-plane plots.
PLANE_GROUPS: tuple[tuple[int, int], ...] = ((1, 6), (7, 12), (13, 18), (19, 24))
DPI = 110
#: Size of the grids of curves (per plane, per momentum bin, the walk).
CURVES_SIZE = (14, 8.2)


# --------------------------------------------------------------------------------------------
# Building blocks


#: The figures of an evaluation folder, by what they show.
PLOT_FILES: dict[str, str] = {
    "residuals": "residuals.png",
    "truth_vs_prediction": "truth_vs_prediction.png",
    "per_plane": "resolution_per_plane.png",
    "vs_momentum": "resolution_vs_momentum.png",
    "vs_pt": "resolution_vs_pt.png",
    "walk": "walk.png",
    "loss_curves": "loss_curves.png",
}


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)


def feature_grid(
    draw: Callable[[plt.Axes, str], None],
    figsize: tuple[float, float] = CURVES_SIZE,
    *,
    sharex: bool = False,
) -> tuple[plt.Figure, np.ndarray]:
    """A 2x3 figure, one panel per state variable in FEATURES order (x, y, z above px, py, pz),
    each filled by ``draw(ax, feature)``; returns the figure and its (2, 3) axes."""
    fig, axes = plt.subplots(2, 3, figsize=figsize, layout="constrained", sharex=sharex)
    for ax, f in zip(axes.flat, FEATURES, strict=True):
        draw(ax, f)
    return fig, axes


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


def _widths(ax: plt.Axes, x: Any, stats: dict[str, Any], f: str) -> None:
    """RMS (markers) and half the central 68% width (dotted) of variable ``f`` for every
    method in ``stats`` (grouped statistics: per plane or per bin)."""
    for m in METHODS:
        if m in stats:
            s = stats[m][f]
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


def _finish_curves(
    fig: plt.Figure, axes: np.ndarray, xlabel: str, title: str, path: str | Path, ncol: int = 3
) -> None:
    """The x label under the bottom row, one legend under the figure, the title; save."""
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.suptitle(title)
    save_figure(fig, path)


def placeholder_figure(path: str | Path, text: str) -> None:
    """A small PNG that says why a plot has nothing to show."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# The figures


def plot_residuals(
    histograms: dict[str, dict[str, Any]], stats: dict, path: str | Path, title: str = ""
) -> None:
    """2x3 histograms of truth - prediction for x, y, z, px, py, pz in physical units, with the
    RMS and the central 68% interval written on each."""

    def panel(ax: plt.Axes, f: str) -> None:
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

    fig, axes = feature_grid(panel, (13, 7.5))
    axes.flat[2].legend(loc="upper right", fontsize=9)
    hx = histograms[FEATURES[0]]
    n = sum(hx["counts"]) + hx["underflow"] + hx["overflow"]
    fig.suptitle(title or f"Residuals on {n:,} held-out test windows")
    save_figure(fig, path)


def plot_truth_vs_prediction(
    truth: np.ndarray, pred: np.ndarray, path: str | Path, bins: int = 100, title: str = ""
) -> None:
    """2x3 two-dimensional densities of prediction against truth, log colour scale."""

    def panel(ax: plt.Axes, f: str) -> None:
        i = FEATURES.index(f)
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
        ax.figure.colorbar(im, ax=ax, label="test windows", shrink=0.8)

    fig, axes = feature_grid(panel, (13, 8))
    axes.flat[0].legend(loc="best", fontsize=9)
    fig.suptitle(title or f"Prediction versus truth on {len(truth):,} test windows")
    save_figure(fig, path)


def plot_per_plane(per_plane: dict[str, Any], path: str | Path, title: str = "") -> None:
    """RMS (markers) and half the central 68% width (dotted) of the residuals per target plane,
    for the network and the baselines."""
    planes = np.asarray(per_plane["planes"])

    def panel(ax: plt.Axes, f: str) -> None:
        plane_axis(ax, planes)
        _widths(ax, planes, per_plane, f)
        log_axis(ax, f, f"{f} truth − prediction [{UNITS[f]}]")

    fig, axes = feature_grid(panel, sharex=True)
    xlabel = "target plane (grey: planes 7–12 and 19–24)"
    _finish_curves(fig, axes, xlabel, title or "Residual width per target plane", path)


def plot_vs_momentum(binned: dict[str, Any], path: str | Path, xlabel: str, title: str) -> None:
    """RMS (markers) and 68% half-width (dotted) of the residuals in bins of momentum."""
    x = np.asarray(binned["centers"])
    edges = np.asarray(binned["edges"])

    def panel(ax: plt.Axes, f: str) -> None:
        for e in edges[1:-1]:
            ax.axvline(e, color="0.88", lw=0.7, zorder=0)
        _widths(ax, x, binned, f)
        log_axis(ax, f, f"{f} truth − prediction [{UNITS[f]}]")
        ax.set_xlim(edges[0], edges[-1])

    fig, axes = feature_grid(panel, sharex=True)
    _finish_curves(fig, axes, xlabel + " (grey lines: bin edges)", title, path)


def plot_walk(
    walk: dict[str, Any], one_step: dict[str, Any] | None, path: str | Path, name: str = ""
) -> None:
    """RMS of each variable after each step of the walk, network against the baselines."""
    planes = np.asarray(walk["planes"])

    def panel(ax: plt.Axes, f: str) -> None:
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

    fig, axes = feature_grid(panel, sharex=True)
    a, b = walk["start_planes"]
    title = (
        f"{name + ': ' if name else ''}walking {walk['n_tracks']:,} test tracks from their true "
        f"states at planes {a}–{b} to plane {planes.max()} on their own predictions"
    )
    xlabel = "plane reached (grey: planes 7–12 and 19–24)"
    _finish_curves(fig, axes, xlabel, title, path, ncol=4)


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
# All of them


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
        out_dir / PLOT_FILES["residuals"],
        f"{title}: residuals on {len(truth):,} held-out test windows",
    )
    plot_truth_vs_prediction(
        truth,
        pred,
        out_dir / PLOT_FILES["truth_vs_prediction"],
        bins,
        f"{title}: prediction versus truth on {len(truth):,} test windows",
    )
    plot_per_plane(
        result["per_plane"],
        out_dir / PLOT_FILES["per_plane"],
        f"{title}: residual width per target plane",
    )
    for var, label, file in (
        ("p", "|p|", PLOT_FILES["vs_momentum"]),
        ("pt", "pt", PLOT_FILES["vs_pt"]),
    ):
        plot_vs_momentum(
            result["vs_momentum"][var],
            out_dir / file,
            f"{label} of the true state [GeV/c]",
            f"{title}: residual width in bins of {label} (equal numbers of windows per bin)",
        )
    if result["walk"].get("n_tracks"):
        plot_walk(result["walk"], result["per_plane"], out_dir / PLOT_FILES["walk"], title)
    else:
        placeholder_figure(
            out_dir / PLOT_FILES["walk"], "No test track is complete: nothing to walk."
        )
    if history:
        plot_loss_curves(
            history,
            out_dir / PLOT_FILES["loss_curves"],
            f"Training history of {result['model']['name']}",
        )
    elif metrics_csv is not None:
        placeholder_figure(out_dir / PLOT_FILES["loss_curves"], f"{metrics_csv} holds no epoch.")
