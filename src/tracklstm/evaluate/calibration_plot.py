"""The calibration plot of a model's predicted covariance: pulls, coverage, widths, the walk.

Is each prediction's covariance the spread of its errors? ``calibration.png`` beside the
evaluation's files (rule ``calibration_plot``), for every model with a covariance head.

Top row, one panel per answer feature (x, y, px, py, pz): the pulls e_i / sqrt(C_ii) of the test
windows on a log scale against the unit Gaussian a calibrated model gives, with their standard
deviation and their core's width (1.4826 times the median absolute deviation). Bottom row:

- coverage: the share of windows inside the predicted region of each probability content
  (chi2 = e^T C^-1 e below the 5-degree-of-freedom quantile), against that content; on the
  diagonal if calibrated, above it where the covariance is too wide. Overall and per |p| quartile,
  and overall for the regions of the covariance's scale mixture (the Gaussian sum that describes
  the errors' tails, ``models.scale_mixture``; dashed), if the model has one;
- the pull widths per |p| quartile (standard deviation, and the core's dashed) with the band
  1.00 +- 0.05;
- for a one-state model, the covariance carried along the walk (C' = J C J^T + Q): chi2/ndf at
  each plane, mean (with its standard error) and median, with the band 1.00 +- 0.10 (from
  ``metrics.json``).

The numbers are ``evaluate.calibration``'s (``metrics.json`` ``covariance``), recomputed from the
model file and the test windows: the plot needs every window's pulls.

    python -m tracklstm.evaluate.calibration_plot --model results/demo/residual_markov/model.ts \\
        --windows results/demo/windows.h5 \\
        --metrics results/demo/residual_markov/evaluation/demo/metrics.json \\
        --out results/demo/residual_markov/evaluation/demo/calibration.png
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracklstm import stage_cli
from tracklstm.constants import ANSWER_FEATURES
from tracklstm.evaluate.calibration import errors_and_covariances, pulls_and_chi2
from tracklstm.evaluate.gaussian import core_width
from tracklstm.evaluate.metrics import EvaluationInputError, load_model, load_test_set
from tracklstm.evaluate.plots import save_figure
from tracklstm.export.loading import COVARIANCE_BATCH, has_covariance
from tracklstm.files import check_outputs
from tracklstm.models.scale_mixture import chi2_5dof_cdf, mixture_cdf

log = logging.getLogger(__name__)

#: Pull range drawn (wider pulls are counted in the outermost bins).
PULL_RANGE: float = 6.0
QUARTILE_COLORS = ("#440154", "#31688e", "#35b779", "#b5a300")
FEATURE_COLORS = dict(zip(ANSWER_FEATURES, ("C0", "C1", "C2", "C3", "C4"), strict=True))


def coverage_curve(
    chi2: np.ndarray, levels: np.ndarray, mixture: dict[str, list[float]] | None = None
) -> np.ndarray:
    """The share of windows inside the predicted region of each probability content in
    ``levels``: the share whose chi2 lies below the 5-dof quantile, i.e. whose P(chi2) does
    (with ``mixture``, the covariance's scale mixture: below the mixture's quantile)."""
    if mixture:
        weights, scales = np.asarray(mixture["weights"]), np.asarray(mixture["scales"])
        content = np.sort(mixture_cdf(chi2, weights, scales))
    else:
        content = np.sort(chi2_5dof_cdf(chi2))
    return np.searchsorted(content, levels, side="right") / max(len(content), 1)


def _pull_panel(ax: Any, pulls: np.ndarray, feature: str) -> None:
    bins = np.linspace(-PULL_RANGE, PULL_RANGE, 61)
    clipped = np.clip(pulls, bins[0] + 1e-9, bins[-1] - 1e-9)
    ax.hist(clipped, bins=bins, histtype="stepfilled", color=FEATURE_COLORS[feature], alpha=0.35)
    ax.hist(clipped, bins=bins, histtype="step", color=FEATURE_COLORS[feature], lw=1.3)
    x = np.linspace(-PULL_RANGE, PULL_RANGE, 400)
    unit = len(pulls) * (bins[1] - bins[0]) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    ax.plot(x, unit, color="black", lw=1.2, ls="--", label="unit Gaussian")
    ax.set_yscale("log")
    ax.set_ylim(0.5, None)
    ax.set(xlabel=f"pull {feature}", title=feature)
    ax.text(
        0.03, 0.97,
        f"std {pulls.std():.2f}\ncore {core_width(pulls):.2f}\nmean {pulls.mean():+.2f}",
        transform=ax.transAxes, va="top", fontsize=8.5, family="monospace",
    )  # fmt: skip


def _coverage_panel(
    ax: Any, judged: dict[str, np.ndarray], mixture: dict[str, list[float]] | None
) -> None:
    levels = np.linspace(0.0, 1.0, 101)
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="calibrated")
    for q in range(4):
        part = judged["chi2"][judged["quartile"] == q]
        ax.plot(levels, coverage_curve(part, levels), color=QUARTILE_COLORS[q], lw=1, alpha=0.8,
                label=f"|p| quartile {q + 1}")  # fmt: skip
    ax.plot(levels, coverage_curve(judged["chi2"], levels), color="black", lw=2, label="all")
    for content in (0.683, 0.95):
        share = coverage_curve(judged["chi2"], np.array([content]))[0]
        ax.plot([content], [share], "o", color="red", ms=5)
        ax.annotate(f"{share:.3f} inside {100 * content:.1f} %", (content, share),
                    textcoords="offset points", xytext=(-95, 6), fontsize=8.5)  # fmt: skip
    if mixture:
        ax.plot(levels, coverage_curve(judged["chi2"], levels, mixture), color="C3", lw=2,
                ls="--", label="all, Gaussian sum")  # fmt: skip
        shares = coverage_curve(judged["chi2"], np.array([0.683, 0.95]), mixture)
        ax.plot([0.683, 0.95], shares, "o", color="C3", ms=5)
        pairs = zip(mixture["weights"], mixture["scales"], strict=True)
        parts = "\n".join(f"  {100 * w:.3g} % at {s:.3g} C" for w, s in pairs)
        ax.text(0.03, 0.97, f"Gaussian sum:\n{parts}\n{shares[0]:.3f} inside its 68.3 %\n"
                f"{shares[1]:.3f} inside its 95 %", transform=ax.transAxes, va="top",
                fontsize=8, color="C3")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="probability content of the predicted region",
           ylabel="share of test windows inside", title="coverage (chi2, 5 dof)")  # fmt: skip
    ax.legend(fontsize=7.5, loc="lower right")


def _quartile_panel(ax: Any, judged: dict[str, np.ndarray]) -> None:
    pulls, quartile, edges = judged["pulls"], judged["quartile"], judged["edges"]
    x = np.arange(1, 5)
    for i, f in enumerate(ANSWER_FEATURES):
        parts = [pulls[quartile == q, i] for q in range(4)]
        std = [p.std() if len(p) else np.nan for p in parts]
        core = [core_width(p) if len(p) else np.nan for p in parts]
        ax.plot(x, std, "o-", color=FEATURE_COLORS[f], lw=1.5, label=f)
        ax.plot(x, core, "s--", color=FEATURE_COLORS[f], lw=1, ms=3.5, alpha=0.8)
    ax.axhspan(0.95, 1.05, color="green", alpha=0.12, label="1.00 +- 0.05")
    bounds = [judged["momentum"].min(), *edges, judged["momentum"].max()]
    labels = [f"{bounds[q]:.2f}-{bounds[q + 1]:.2f}" for q in range(4)]
    ax.set(xticks=x, xticklabels=labels, xlabel="|p| of the last input state [GeV/c]",
           ylabel="pull width (std solid, core dashed)",
           title="pull widths per |p| quartile")  # fmt: skip
    ax.legend(fontsize=8, ncol=2)


def _walk_panel(ax: Any, walk: dict[str, Any] | None) -> None:
    planes = (walk or {}).get("per_plane") or []
    if not planes:
        ax.text(0.5, 0.5, "no walk with the covariance\n(not a one-state model,\n"
                "or a file without a Jacobian)", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
        ax.set(title="covariance carried along the walk", xticks=[], yticks=[])
        return
    x = [p["plane"] for p in planes]
    ax.errorbar(x, [p["chi2_ndf_mean"] for p in planes], fmt="o-", color="C0", capsize=2,
                yerr=[p.get("chi2_ndf_mean_error", 0.0) for p in planes],
                label="mean (and its standard error)")  # fmt: skip
    ax.plot(x, [p["chi2_ndf_median"] for p in planes], "s--", color="C1", ms=3.5,
            label="median (0.87 if Gaussian)")  # fmt: skip
    ax.axhspan(0.9, 1.1, color="green", alpha=0.12, label="1.00 +- 0.10")
    ax.set(xlabel="plane", ylabel="chi2 / ndf of the walked state",
           title=f"walk with C' = J C J^T + Q ({walk['tracks']} tracks)")  # fmt: skip
    ax.legend(fontsize=8)


def plot_calibration(
    judged: dict[str, np.ndarray],
    walk: dict[str, Any] | None,
    title: str,
    path: str | Path,
    mixture: dict[str, list[float]] | None = None,
) -> None:
    """The figure of the module notes, from ``calibration.pulls_and_chi2``'s ``judged`` (and
    the model's ``covariance_mixture``, if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(17, 9.5))
    grid = fig.add_gridspec(2, 15)
    for i, f in enumerate(ANSWER_FEATURES):
        _pull_panel(fig.add_subplot(grid[0, 3 * i : 3 * i + 3]), judged["pulls"][:, i], f)
    _coverage_panel(fig.add_subplot(grid[1, 0:5]), judged, mixture)
    _quartile_panel(fig.add_subplot(grid[1, 5:10]), judged)
    _walk_panel(fig.add_subplot(grid[1, 10:15]), walk)
    bad = int((~judged["positive"]).sum())
    fig.suptitle(
        f"{title}: {len(judged['positive']):,} test windows, chi2/ndf mean "
        f"{judged['chi2'].mean() / 5:.3f}, median {np.median(judged['chi2']) / 5:.3f}; "
        f"not positive definite: {bad}"
    )
    fig.tight_layout()
    save_figure(fig, path)


def calibration_plot(
    model_path: str | Path,
    windows: str | Path,
    out: str | Path,
    metrics: str | Path | None = None,
    batch: int = COVARIANCE_BATCH,
) -> dict[str, np.ndarray]:
    """Draw ``out`` for the model file on the test split of ``windows`` (the walk's panel from
    ``metrics``, its evaluation's ``metrics.json``); returns the pulls and chi2 drawn."""
    model, meta = load_model(model_path)
    if not has_covariance(model):
        raise EvaluationInputError(
            f"{model_path}: this model predicts no covariance (model.covariance: false)"
        )
    length = int(meta["window_length"]) if "window_length" in meta else None
    test = load_test_set(windows, length)
    judged = pulls_and_chi2(*errors_and_covariances(model, test.inputs, test.targets, batch))
    if len(judged["chi2"]) < 4:
        raise EvaluationInputError(
            f"{model_path}: {len(judged['chi2'])} of {len(test.inputs)} test windows of {windows} "
            "have a positive-definite covariance; too few to judge"
        )
    walk = None
    if metrics is not None:
        walk = (json.loads(Path(metrics).read_text()).get("covariance") or {}).get("walk")
    title = f"{Path(model_path).parent.name} on {Path(windows).parent.name}"
    plot_calibration(judged, walk, title, out, meta.get("covariance_mixture"))
    log.info(
        "%s: %d test windows, pull widths %s",
        out,
        len(judged["chi2"]),
        ", ".join(f"{f} {judged['pulls'][:, i].std():.3f}" for i, f in enumerate(ANSWER_FEATURES)),
    )
    return judged


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm calibration-plot", __doc__)
    parser.add_argument("--model", required=True, help="an exported model with a covariance")
    parser.add_argument("--windows", required=True, help="windows.h5 (its test split is judged)")
    parser.add_argument("--metrics", help="the evaluation's metrics.json (for the walk's panel)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)

    def body() -> None:
        inputs = {"--windows": args.windows, "--model": args.model}
        if args.metrics:
            inputs["--metrics"] = args.metrics
        check_outputs({"--out": args.out}, inputs)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        calibration_plot(args.model, args.windows, args.out, args.metrics)

    return stage_cli.run(body, log, errors=(EvaluationInputError,))


if __name__ == "__main__":
    raise SystemExit(main())
