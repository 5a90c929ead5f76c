"""The HTML pages: table cells, tables, the page frame, and an evaluation's ``summary.html``.

``format_value`` is the one rule for writing a number in a table (also for
``tracklstm.evaluate.compare``'s CSV and markdown tables); ``html_table`` and ``html_page`` build
every page of the evaluation, the data-quality table and the comparison.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from tracklstm.constants import ANSWER_FEATURES, FEATURES, UNITS
from tracklstm.evaluate.methods import LABELS, METHODS

#: The text of an empty cell (no number, or not a finite one).
MISSING = "–"

HTML_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:0.3em 0.7em;text-align:right}"
    "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
    "h2{font-size:1.1em;margin-top:1.2em}p{max-width:60em}"
)


def format_value(value: Any, digits: int = 4, missing: str = MISSING) -> str:
    """A table cell's text: floats with ``digits`` significant digits, ``missing`` for None and
    non-finite floats, anything else as ``str``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _fmt(value: Any) -> str:
    """An HTML cell's text: ``format_value``, escaped."""
    return html.escape(format_value(value))


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain HTML table; floats with 4 significant digits."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained HTML page."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# summary.html


def _intro(result: dict[str, Any]) -> list[str]:
    """What was evaluated on what, the normalized errors and the verdicts."""
    parts = [
        f"<p>Model <b>{html.escape(result['model']['name'])}</b> on the test split of "
        f"<b>{html.escape(result['data']['name'])}</b>: {result['data']['n_test_tracks']:,} "
        f"tracks, {result['n_test_windows']:,} windows. Normalized test MAE "
        f"{result['normalized']['mae']:.4g}, MSE {result['normalized']['mse']:.3g}.</p>"
    ]
    parts += [f"<p><b>{html.escape(v)}</b></p>" for v in result.get("verdict", [])]
    return parts


def _score_table(result: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """The challenge score of each method: challenge file, one step, walked; and / network."""
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
    header = [
        "method",
        "challenge test file",
        "test windows, one step",
        f"walked to plane {last}",
        "score ÷ network's (above 1: the network is better)",
    ]
    return ["<h2>Challenge score (lower is better)</h2>", html_table(header, rows)]


def _residual_tables(result: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """RMS and central 68% width of each variable's one-step residuals, per method."""
    parts = []
    for key, heading in (
        ("rms", "Residual RMS on the test windows"),
        ("width68", "Central 68% width of the residuals on the test windows"),
    ):
        rows = []
        for m in methods:
            stats = result["residuals"] if m == "network" else result["baselines"][m]["residuals"]
            rows.append([LABELS[m], *[stats[f][key] for f in FEATURES]])
        parts.append(f"<h2>{heading}</h2>")
        parts.append(html_table(["method", *[f"{f} [{UNITS[f]}]" for f in FEATURES]], rows))
    return parts


def _against_physics(result: dict[str, Any]) -> list[str]:
    """The network's RMS and scores divided by the helix's and by the field-only floor's."""
    ratios = result.get("network_over_baseline") or {}
    rows = []
    for m in ("helix", "field_only"):
        if m not in ratios:
            continue
        r = ratios[m]
        rows.append(
            [
                LABELS[m],
                *[r["rms"][f] for f in ANSWER_FEATURES],
                r.get("challenge_score", r["score_windows"]),
                r.get("real_track_score"),
            ]
        )
    if not rows:
        return []
    header = [
        "network ÷ baseline",
        *[f"RMS {f}" for f in ANSWER_FEATURES],
        "challenge score",
        "score on the real track",
    ]
    return [
        "<h2>Against physics (below 1: the network is better; 1 against the field map without "
        "material is the scattering floor of simulated tracks)</h2>",
        html_table(header, rows),
    ]


def _jacobian(result: dict[str, Any]) -> list[str]:
    """A one-state model's transport Jacobian and the helix's against the field map's."""
    jac = result.get("jacobian")
    if not jac:
        return []
    rows = [
        [LABELS["network"], jac["median"], jac["p95"]],
        [LABELS["helix"], jac["helix_median"], jac["helix_p95"]],
    ]
    return [
        f"<h2>Transport Jacobian against the field map's ({jac['states']} test states; "
        "||J - J<sub>field</sub>|| / ||J<sub>field</sub> - I||, momenta in 10 MeV/c)</h2>",
        html_table(["method", "median", "95th percentile"], rows),
    ]


def _with_error(value: float, error: float | None) -> str:
    """``value`` with its standard error, if there is one: "1.392 ± 0.41"."""
    return f"{value:.4g}" if error is None else f"{value:.4g} ± {error:.2g}"


def _covariance(result: dict[str, Any]) -> list[str]:
    """The calibration of the model's predicted covariance (``evaluate.calibration``)."""
    cov = result.get("covariance")
    if not cov:
        return []
    quartiles = cov["pull_width_by_momentum_quartile"]
    errors = cov.get("pull_width_error_by_momentum_quartile") or [{} for _ in quartiles]
    rows = [
        [
            f,
            _with_error(cov["pull_width"][f], cov.get("pull_width_error", {}).get(f)),
            cov.get("pull_width_core", {}).get(f),
            cov["pull_mean"][f],
            *[_with_error(q[f], e.get(f)) for q, e in zip(quartiles, errors, strict=True)],
        ]
        for f in ANSWER_FEATURES
    ]
    lo, mid, hi = (f"{e:.2f}" for e in cov["momentum_quartile_edges"])
    header = [
        "feature",
        "pull width (std ± its standard error)",
        "core width",
        "pull mean",
        *[f"std, |p| {b} GeV/c" for b in (f"< {lo}", f"{lo}-{mid}", f"{mid}-{hi}", f"> {hi}")],
    ]
    mean_chi2 = _with_error(cov["chi2_ndf_mean"], cov.get("chi2_ndf_mean_error"))
    summary = [
        ["chi2/ndf, mean", mean_chi2, "1.00"],
        ["chi2/ndf, median", cov["chi2_ndf_median"], "0.87"],
        ["inside the 68.3 % region", cov["coverage_68"], "0.683"],
        ["inside the 95 % region", cov["coverage_95"], "0.95"],
        ["not positive definite", cov["not_positive_definite"], "0"],
    ]
    mixture = cov.get("mixture")
    if mixture:
        parts = ", ".join(
            f"{w:.3g} at {s:.3g} C"
            for w, s in zip(mixture["weights"], mixture["scales"], strict=True)
        )
        summary += [
            [f"inside the 68.3 % region of the Gaussian sum ({parts})", mixture["coverage_68"],
             "0.683"],
            ["inside its 95 % region", mixture["coverage_95"], "0.95"],
            ["inside its 99 % region", mixture["coverage_99"], "0.99"],
        ]  # fmt: skip
    last = ((cov.get("walk") or {}).get("per_plane") or [None])[-1]
    if last:
        summary.append(
            [f"walk: chi2/ndf at plane {last['plane']} (C' = J C J^T + Q)",
             _with_error(last["chi2_ndf_mean"], last.get("chi2_ndf_mean_error")), "1.00"]
        )  # fmt: skip
    return [
        f"<h2>Predicted covariance on the test windows ({cov['windows']:,}): pulls per feature "
        "and per |p| quartile (1 if calibrated)</h2>",
        html_table(header, rows),
        html_table(["statistic", "value", "if calibrated (Gaussian)"], summary),
    ]


def _real_track(result: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """The challenge score on the real track of the package (sim-to-real)."""
    real = result.get("real_track")
    if not real or not real.get("n_windows"):
        return []
    first, last = real["target_planes"]
    rows = [[LABELS[m], real[m]] for m in methods if m in real]
    return [
        f"<h2>The real track ({real['n_windows']} windows, targets on planes {first} to "
        f"{last}): challenge score</h2>",
        html_table(["method", "score (lower is better)"], rows),
    ]


def _challenge_and_training(result: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """The RMS on the challenge file and the training summary, where there are any."""
    parts = []
    ch = result.get("challenge")
    if ch:
        parts.append(f"<h2>Challenge test file ({ch['n_tracks']:,} tracks): RMS</h2>")
        rows = [[LABELS[m], *[ch[m]["rms"][f] for f in ANSWER_FEATURES]] for m in methods]
        header = ["method", *[f"{f} [{UNITS[f]}]" for f in ANSWER_FEATURES]]
        parts.append(html_table(header, rows))
    tr = result.get("training")
    if tr:
        parts.append("<h2>Training</h2>")
        parts.append(
            html_table(
                ["epochs", "best epoch", "best validation MAE", "final validation MAE"],
                [[tr["epochs"], tr["best_epoch"], tr["best_val_mae"], tr["final_val_mae"]]],
            )
        )
    return parts


def summary_html(result: dict[str, Any]) -> str:
    """The metrics table of one evaluation."""
    methods = [m for m in METHODS if m == "network" or m in result["baselines"]]
    parts = [
        *_intro(result),
        *_score_table(result, methods),
        *_against_physics(result),
        *_covariance(result),
        *_jacobian(result),
        *_real_track(result, methods),
        *_residual_tables(result, methods),
        *_challenge_and_training(result, methods),
    ]
    return html_page(f"{result['model']['name']} on {result['data']['name']}: test metrics", parts)
