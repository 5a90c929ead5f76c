"""Compare evaluated models side by side: one metrics table, overlaid loss curves and residuals.

Each run is an evaluation folder (or its ``metrics.json``) written by ``tracklstm.evaluate``:
``results/<dataset>/<model>/evaluation/<data>/`` for a trained model, or
``results/external/<name>/evaluation/<data>/`` for an exported model file. The outputs are
``metrics.csv``, ``metrics.md`` and ``metrics.html`` (one row per run), ``loss_curves.png``
(training and validation loss of every trained run) and ``residual_widths.png`` (RMS of the
residuals per target plane, every run against the helix baseline on each evaluated dataset).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import ANSWER_FEATURES, UNITS
from tracklstm.evaluate.plots import feature_grid, log_axis, plane_axis, save_figure
from tracklstm.evaluate.report import MISSING, format_value, html_page, html_table
from tracklstm.files import atomic_path

log = logging.getLogger(__name__)

#: Colours of the runs, in order.
RUN_COLORS: tuple[str, ...] = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)


class CompareInputError(ValueError):
    """A run folder that cannot be compared; the message names it."""


def load_run(path: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of an evaluation (given as the file or its folder)."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    try:
        metrics = json.loads(file.read_text())
    except FileNotFoundError:
        raise CompareInputError(f"{file}: no such file (not an evaluation folder?)") from None
    except json.JSONDecodeError as err:
        raise CompareInputError(f"{file}: not valid JSON ({err})") from None
    for key in ("model", "data", "residuals", "per_plane"):
        if key not in metrics:
            raise CompareInputError(f"{file}: no {key!r} (not written by tracklstm.evaluate?)")
    metrics["_path"] = str(file)
    return metrics


def default_label(metrics: dict[str, Any]) -> str:
    """``<model> on <data>``."""
    return f"{metrics['model']['name']} on {metrics['data']['name']}"


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> tuple[list[str], list[list]]:
    """The comparison table: a header and one row per run (None where a number is missing)."""
    header = [
        "run",
        "model",
        "data",
        "test windows",
        "normalized MAE",
        "challenge score",
        "helix score",
        "straight-line score",
        "helix / network",
        "one-step window score",
        "walk score at last plane",
        *[f"RMS {f} [{UNITS[f]}]" for f in ANSWER_FEATURES],
        *[f"68% width {f} [{UNITS[f]}]" for f in ANSWER_FEATURES],
        "epochs",
        "best validation MAE",
    ]
    rows = []
    for m, label in zip(runs, labels, strict=True):
        ch = m.get("challenge") or {}
        walk = m.get("walk") or {}
        net = _get(ch, "network", "score")
        helix = _get(ch, "helix", "score")
        rows.append(
            [
                label,
                m["model"]["name"],
                m["data"]["name"],
                m.get("n_test_windows"),
                _get(m, "normalized", "mae"),
                net,
                helix,
                _get(ch, "straight", "score"),
                helix / net if net and helix is not None else None,
                m.get("score_windows"),
                walk["network"]["score"][-1] if walk.get("n_tracks") else None,
                *[m["residuals"][f]["rms"] for f in ANSWER_FEATURES],
                *[m["residuals"][f]["width68"] for f in ANSWER_FEATURES],
                _get(m, "training", "epochs"),
                _get(m, "training", "best_val_mae"),
            ]
        )
    return header, rows


#: The baselines of the models table, each with its row label.
BASELINE_ROWS: dict[str, str] = {
    "straight": "straight line",
    "helix": "helix, nominal field",
    "field_only": "field map, no material (noise floor on simulated tracks)",
}


def models_table(
    runs: Sequence[dict[str, Any]], labels: Sequence[str]
) -> tuple[list[str], list[list], str]:
    """The table a physicist wants first: one row per model and per physics baseline on the
    same test tracks (the first run's), RMS of x, y, px, py, pz, the challenge score and the
    score on the real track; and a sentence saying which wins."""
    header = [
        "method",
        *[f"RMS {f} [{UNITS[f]}]" for f in ANSWER_FEATURES],
        "challenge score",
        "score on the real track",
    ]

    def score(m: dict[str, Any], method: str) -> float | None:
        ch = m.get("challenge")
        if ch:
            return _get(ch, method, "score")
        return (
            m.get("score_windows")
            if method == "network"
            else _get(m, "baselines", method, "score_windows")
        )

    rows = []
    for m, label in zip(runs, labels, strict=True):
        real = _get(m, "real_track", "network")
        rows.append(
            [label, *[m["residuals"][f]["rms"] for f in ANSWER_FEATURES], score(m, "network"), real]
        )
    first = runs[0]
    for method, label in BASELINE_ROWS.items():
        base = _get(first, "baselines", method, "residuals")
        if base is None:
            continue
        real = _get(first, "real_track", method)
        rows.append([label, *[base[f]["rms"] for f in ANSWER_FEATURES], score(first, method), real])
    verdict = ""
    scored = [r for r in rows[: len(runs)] if r[-2] is not None]
    if scored:
        best = min(scored, key=lambda r: r[-2])
        verdict = f"Best model: {best[0]} (challenge score {format_value(best[-2])})"
        for method in ("helix", "field_only"):
            base = next((r for r in rows if r[0] == BASELINE_ROWS[method]), None)
            if base is None or not base[-2]:
                continue
            times = best[-2] / base[-2]
            verdict += (
                f"; {format_value(times)} times the {BASELINE_ROWS[method].split(' (')[0]}'s "
                f"({format_value(base[-2])}): {'better' if times < 1 else 'worse'}"
            )
        verdict += "."
    return header, rows, verdict


def write_models_table(
    paths: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """``models.html`` (a page), ``models_table.html`` (the table alone, for the report's front
    page), ``models.csv`` and ``models.md`` in ``out_dir``."""
    runs = [load_run(p) for p in paths]
    labels = list(labels) if labels else [m["model"]["name"] for m in runs]
    if len(labels) != len(runs):
        raise CompareInputError(f"{len(labels)} labels for {len(runs)} runs")
    header, rows, verdict = models_table(runs, labels)
    out_dir = Path(out_dir)
    data = runs[0]["data"]["name"]
    note = (
        f"<p>On the held-out test tracks of <b>{data}</b>: one-step residual RMS and the "
        "challenge score (lower is better; on the challenge-format test file), and the score on "
        "the real track shipped with the project (17 windows). "
        f"<b>{verdict}</b></p>"
    )
    table_html = note + html_table(header, rows)
    write_csv(header, rows, out_dir / "models.csv")
    with atomic_path(out_dir / "models.md") as tmp:
        tmp.write_text(markdown_table(header, rows))
    with atomic_path(out_dir / "models_table.html") as tmp:
        tmp.write_text(table_html + "\n")
    with atomic_path(out_dir / "models.html") as tmp:
        tmp.write_text(html_page(f"Models and physics on {data}", [table_html]))
    log.info("%s", verdict)
    return {"header": header, "rows": rows, "verdict": verdict}


def write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]], path: str | Path) -> None:
    """The table as CSV: numbers with 6 significant digits, empty cells where there is none."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[format_value(v, 6, missing="") for v in row] for row in rows])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers with 4 significant digits."""

    def md(v: Any) -> str:
        return format_value(v).replace("|", "\\|") or MISSING

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_loss_overlay(runs: Sequence[dict[str, Any]], path: str | Path) -> int:
    """Validation (solid) and training (dashed) MAE and MSE, and the learning rate, of every
    trained model among the runs (once per model, in the colour of its first run); returns how
    many models were drawn."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained", sharex=True)
    drawn: set[str] = set()
    for i, m in enumerate(runs):
        h = _get(m, "training", "history")
        name = m["model"]["name"]
        if not h or name in drawn:
            continue
        drawn.add(name)
        color = RUN_COLORS[i % len(RUN_COLORS)]
        ep = h["epoch"]
        for ax, key in ((axes[0], "mae"), (axes[1], "mse")):
            ax.plot(ep, h[f"val_{key}"], "-", color=color, label=name)
            ax.plot(ep, h[f"train_{key}"], "--", color=color, lw=1, alpha=0.8)
        axes[2].plot(ep, h["lr"], "-", color=color, label=name)
    titles = ("MAE (the L1 loss)", "MSE", "learning rate")
    ylabels = ("MAE, normalized units", "MSE, normalized units", "learning rate")
    for ax, title, ylabel in zip(axes, titles, ylabels, strict=True):
        ax.set_yscale("log")
        ax.set_title(title, fontweight="bold")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.12, which="minor")
    if drawn:
        handles, names = axes[0].get_legend_handles_labels()
        handles += [
            plt.Line2D([], [], color="0.3", ls="-"),
            plt.Line2D([], [], color="0.3", ls="--", lw=1),
        ]
        names += ["validation (solid)", "training (dashed)"]
        fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)))
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no training history", ha="center", transform=ax.transAxes)
    fig.suptitle("Training histories")
    save_figure(fig, path)
    return len(drawn)


def plot_width_overlay(
    runs: Sequence[dict[str, Any]], labels: Sequence[str], path: str | Path
) -> None:
    """RMS of the one-step residuals per target plane: every run, and the helix baseline on
    each evaluated dataset (grey triangles)."""
    planes_all = np.asarray(sorted({p for m in runs for p in m["per_plane"]["planes"]}))
    # The helix baseline once per evaluated dataset, from its first run.
    helix_runs: dict[str, int] = {}
    for i, m in enumerate(runs):
        if "helix" in m["per_plane"]:
            helix_runs.setdefault(m["data"]["name"], i)
    greys = ("0.35", "0.6", "0.2", "0.75")

    def panel(ax: plt.Axes, f: str) -> None:
        plane_axis(ax, planes_all)
        for k, (data, i) in enumerate(helix_runs.items()):
            pp = runs[i]["per_plane"]
            if f != "z":  # the baselines put z exactly on the plane
                ax.plot(
                    pp["planes"],
                    pp["helix"][f]["rms"],
                    "^-",
                    ms=3,
                    lw=1,
                    color=greys[k % len(greys)],
                    label=f"helix baseline on {data}",
                    zorder=2,
                )
        for i, (m, label) in enumerate(zip(runs, labels, strict=True)):
            pp = m["per_plane"]
            ax.plot(
                pp["planes"],
                pp["network"][f]["rms"],
                "o-",
                ms=3.5,
                color=RUN_COLORS[i % len(RUN_COLORS)],
                label=label,
                zorder=3,
            )
        log_axis(ax, f, f"RMS of {f} truth − prediction [{UNITS[f]}]")

    fig, axes = feature_grid(panel, (14, 8.4), sharex=True)
    for ax in axes[1]:
        ax.set_xlabel("target plane (grey: planes 7–12 and 19–24)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(3, len(names)), fontsize=9)
    fig.suptitle("One-step residual RMS per target plane on the test windows")
    save_figure(fig, path)


def compare(
    paths: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write the comparison of the evaluations ``paths`` into ``out_dir``; return the table."""
    if not paths:
        raise CompareInputError("nothing to compare: give at least one evaluation folder")
    runs = [load_run(p) for p in paths]
    if labels is None or not labels:
        labels = [default_label(m) for m in runs]
    if len(labels) != len(runs):
        raise CompareInputError(f"{len(labels)} labels for {len(runs)} runs")
    if len(set(labels)) != len(labels):
        labels = [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]
    out_dir = Path(out_dir)
    header, rows = table(runs, labels)
    write_csv(header, rows, out_dir / "metrics.csv")
    with atomic_path(out_dir / "metrics.md") as tmp:
        tmp.write_text(markdown_table(header, rows))
    intro = (
        "<p>One row per evaluated run. Scores: the challenge score (lower is better) of the "
        "network on the challenge-format test file of the evaluated dataset, and of the helix "
        "and straight-line baselines on the same tracks; <i>helix / network</i> above 1 means "
        "the network beats the helix. RMS and 68% widths: one-step residuals on the test "
        "windows.</p>"
    )
    with atomic_path(out_dir / "metrics.html") as tmp:
        tmp.write_text(
            html_page("Comparison of evaluated models", [intro, html_table(header, rows)])
        )
    plot_loss_overlay(runs, out_dir / "loss_curves.png")
    plot_width_overlay(runs, labels, out_dir / "residual_widths.png")
    log.info("compared %d runs in %s", len(runs), out_dir)
    return {"header": header, "rows": rows, "labels": list(labels)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm compare", __doc__)
    parser.add_argument(
        "runs", nargs="+", help="evaluation folders (results/<dataset>/<model>/evaluation/<data>)"
    )
    parser.add_argument("--out", required=True, help="folder for the table and the plots")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: model on data)")
    parser.add_argument(
        "--models-table",
        action="store_true",
        help="instead: the models against the physics baselines (models.html, .csv, .md)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        if args.models_table:
            write_models_table(args.runs, args.out, args.labels)
        else:
            compare(args.runs, args.out, args.labels)

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
