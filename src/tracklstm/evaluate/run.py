"""One evaluation, step by step: load the inputs, predict one step, compute the metrics, walk
the tracks, score the challenge file, write the plots, ``metrics.json`` and ``summary.html``.

``evaluate`` runs the steps in that order; each step is its own function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracklstm.constants import N_PLANES
from tracklstm.evaluate.calibration import covariance_metrics, walk_with_covariance
from tracklstm.evaluate.jacobian import jacobian_metrics
from tracklstm.evaluate.metrics import (
    EVAL_BATCH,
    EvaluationInputError,
    TestSet,
    baseline_over_network,
    binned_by,
    complete_tracks,
    grouped_stats,
    load_model,
    load_test_set,
    network_over_baselines,
    read_metrics_csv,
    residual_histograms,
    residual_stats,
    score_challenge_file,
    training_summary,
    verdicts,
    walk_baseline,
    walk_network,
    walk_stats,
    window_score,
)
from tracklstm.evaluate.plots import PLOT_FILES, write_plots
from tracklstm.evaluate.real_track import score_real_track
from tracklstm.evaluate.report import summary_html
from tracklstm.export.loading import Model, has_covariance, predict_windows
from tracklstm.files import atomic_path, write_json
from tracklstm.physics.baselines import baselines
from tracklstm.physics.helix import Propagator
from tracklstm.physics.helix_field import NOMINAL_FIELD, check_field

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What one evaluation reads: the model with its metadata, and the test split."""

    model: Model
    meta: dict[str, Any]
    test: TestSet
    model_path: Path
    windows: str | Path  # as given (it goes into metrics.json as written)
    model_name: str
    data_name: str

    @property
    def length(self) -> int:
        """The window length the test windows have (the model's, where it says)."""
        return self.test.inputs.shape[1]


def load_inputs(
    model_path: str | Path,
    windows: str | Path,
    model_name: str | None = None,
    data_name: str | None = None,
) -> Inputs:
    """The model and the test split of ``windows``, rebuilt for the model's window length."""
    model_path = Path(model_path)
    model, meta = load_model(model_path)
    length = int(meta["window_length"]) if "window_length" in meta else None
    test = load_test_set(windows, length)
    return Inputs(
        model,
        meta,
        test,
        model_path,
        windows,
        model_name or model_path.parent.name or model_path.stem,
        data_name or Path(windows).parent.name,
    )


def predict_one_step(
    inputs: Inputs, propagators: Mapping[str, Propagator], batch: int = EVAL_BATCH
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The true next states and every method's prediction of them, one step from the true
    states of the test windows: ``(truth (N, 6), {method: (N, 6)})``, float64."""
    test = inputs.test
    pred = predict_windows(inputs.model, test.inputs, batch, workers=1)
    if not np.isfinite(pred).all():
        bad = int((~np.isfinite(pred)).any(axis=1).sum())
        raise EvaluationInputError(
            f"{inputs.model_path}: the model predicts NaN or infinite values for {bad} of "
            f"{len(pred)} test windows"
        )
    truth = test.targets.astype(np.float64)
    last_states = test.inputs[:, -1].astype(np.float64)
    preds = {"network": pred.astype(np.float64)}
    for name, propagate in propagators.items():
        preds[name] = propagate(last_states, truth[:, 2])
    return truth, preds


def _normalization(inputs: Inputs) -> tuple[np.ndarray, np.ndarray, str]:
    """The normalization box of the model (or, without one, of the data), and whose it is."""
    if inputs.meta.get("norm_min") is not None:
        return np.asarray(inputs.meta["norm_min"]), np.asarray(inputs.meta["norm_max"]), "model"
    attrs = inputs.test.attrs
    return np.asarray(attrs["norm_min"]), np.asarray(attrs["norm_max"]), "data"


def _about(inputs: Inputs, lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    """The ``model`` and ``data`` entries of metrics.json."""
    meta, test = inputs.meta, inputs.test
    return {
        "model": {
            "name": inputs.model_name,
            "path": str(inputs.model_path),
            "window_length": inputs.length,
            "data_fingerprint": meta.get("data_fingerprint"),
            "settings": meta.get("model"),
            "normalization": {"min": lo.tolist(), "max": hi.tolist()},
        },
        "data": {
            "name": inputs.data_name,
            "windows": str(inputs.windows),
            "n_test_tracks": len(test.track_ids),
            "data_fingerprint": test.attrs.get("data_fingerprint"),
        },
    }


def one_step_metrics(
    inputs: Inputs,
    truth: np.ndarray,
    preds: Mapping[str, np.ndarray],
    field: Sequence[Sequence[float]],
    bins: int,
    n_momentum_bins: int,
) -> dict[str, Any]:
    """metrics.json without the walk, the challenge file and the training: the one-step
    residuals of every method, overall, per target plane and in bins of |p| and pt."""
    res = {m: truth - p for m, p in preds.items()}
    lo, hi, norm_from = _normalization(inputs)
    norm_err = res["network"] / (hi - lo)
    stats = {m: residual_stats(r) for m, r in res.items()}
    target_plane = inputs.test.target_plane
    planes = sorted(int(p) for p in np.unique(target_plane))
    per_plane: dict[str, Any] = {"planes": planes}
    for m, r in res.items():
        per_plane[m] = grouped_stats(r, target_plane, planes)
    p_abs = np.linalg.norm(truth[:, 3:6], axis=1)
    p_t = np.linalg.norm(truth[:, 3:5], axis=1)
    result: dict[str, Any] = {
        **_about(inputs, lo, hi),
        "n_test_windows": len(truth),
        "normalized": {
            "mae": float(np.mean(np.abs(norm_err))),
            "mse": float(np.mean(norm_err**2)),
            "normalization_of": norm_from,
        },
        "residuals": stats["network"],
        "histograms": residual_histograms(res["network"], bins),
        "score_windows": window_score(truth, preds["network"]),
        "baselines": {
            "helix_field": [list(r) for r in field],
            **{
                m: {"residuals": stats[m], "score_windows": window_score(truth, preds[m])}
                for m in preds
                if m != "network"
            },
        },
        "per_plane": per_plane,
        "vs_momentum": {
            "p": binned_by(res, p_abs, n_momentum_bins),
            "pt": binned_by(res, p_t, n_momentum_bins),
        },
    }
    trained_on = inputs.meta.get("data_fingerprint")
    tested_on = inputs.test.attrs.get("data_fingerprint")
    if trained_on and tested_on:
        result["same_data_as_training"] = trained_on == tested_on
    return result


def covariance_walk(inputs: Inputs, batch: int = EVAL_BATCH) -> dict[str, Any]:
    """The one-state model's walk with its covariance over the complete test tracks, from the
    plane the other walks start at (``calibration.walk_with_covariance``)."""
    last_plane = int(inputs.test.attrs.get("last_target_plane", N_PLANES - 1))
    full = complete_tracks(inputs.test.tracks, last_plane)[:, : last_plane + 1]
    if not len(full):
        return {"tracks": 0}
    # a fresh copy: the evaluation's other calls ran under inference mode, and a TorchScript
    # graph optimized there may hold constants that the Jacobian's autograd cannot use
    model, _ = load_model(inputs.model_path)
    return walk_with_covariance(model, full, inputs.length, inputs.length, batch)


def walk_metrics(
    inputs: Inputs, propagators: Mapping[str, Propagator], batch: int = EVAL_BATCH
) -> dict[str, Any]:
    """Walk the complete test tracks from their first ``length`` true states to the last plane,
    the network and each baseline on their own predictions; ``{"n_tracks": 0}`` without any."""
    length = inputs.length
    last_plane = int(inputs.test.attrs.get("last_target_plane", N_PLANES - 1))
    full = complete_tracks(inputs.test.tracks, last_plane)
    if not (len(full) and last_plane >= length):
        log.warning("no test track is complete to plane %d: no walk", last_plane)
        return {"n_tracks": 0}
    walks = {"network": walk_network(inputs.model, full, length, last_plane, batch)}
    for name, propagate in propagators.items():
        walks[name] = walk_baseline(propagate, full, length, last_plane)
    return walk_stats(walks, full, length, last_plane)


def write_outputs(
    result: dict[str, Any],
    truth: np.ndarray,
    pred: np.ndarray,
    out_dir: Path,
    *,
    bins: int,
    history: dict[str, np.ndarray],
    metrics_csv: str | Path | None,
    plots: bool,
) -> None:
    """The plots (unless ``plots`` is false), ``metrics.json`` and ``summary.html``."""
    if plots:
        write_plots(result, truth, pred, out_dir, bins, history, metrics_csv)
    write_json(out_dir / "metrics.json", result)
    with atomic_path(out_dir / "summary.html") as tmp:
        tmp.write_text(summary_html(result))


def log_summary(result: dict[str, Any]) -> None:
    """The headline numbers and the verdicts, in the log."""
    base = result["baselines"]
    log.info(
        "test MAE %.5f (normalized) on %d windows; RMS x %.3g cm, px %.3g GeV/c; window score "
        "network %.4g, straight %.4g, helix %.4g, field only %.4g",
        result["normalized"]["mae"],
        result["n_test_windows"],
        result["residuals"]["x"]["rms"],
        result["residuals"]["px"]["rms"],
        result["score_windows"],
        base["straight"]["score_windows"],
        base["helix"]["score_windows"],
        base["field_only"]["score_windows"],
    )
    real = result.get("real_track")
    if real:
        log.info(
            "the real track (%d windows): score network %.4g, helix %.4g, field only %.4g",
            real["n_windows"],
            real["network"],
            real["helix"],
            real["field_only"],
        )
    cov = result.get("covariance")
    if cov:
        log.info(
            "covariance: pull widths %s; chi2/ndf mean %.3f +- %.3f; inside the 68.3 %% / 95 %% "
            "regions %.3f / %.3f; not positive definite %d of %d",
            ", ".join(f"{k} {v:.3f}" for k, v in cov["pull_width"].items()),
            cov["chi2_ndf_mean"],
            cov["chi2_ndf_mean_error"],
            cov["coverage_68"],
            cov["coverage_95"],
            cov["not_positive_definite"],
            cov["windows"],
        )
        if cov.get("mixture"):
            log.info(
                "inside the 68.3 %% / 95 %% / 99 %% regions of the covariance's scale mixture "
                "(weights %s, scales %s): %.3f / %.3f / %.3f",
                cov["mixture"]["weights"],
                cov["mixture"]["scales"],
                cov["mixture"]["coverage_68"],
                cov["mixture"]["coverage_95"],
                cov["mixture"]["coverage_99"],
            )
        last = (cov.get("walk", {}).get("per_plane") or [None])[-1]
        if last:
            log.info(
                "covariance carried along the walk (J C J^T + Q): chi2/ndf at plane %d %.3f, "
                "%.3f inside the 95 %% region",
                last["plane"],
                last["chi2_ndf_mean"],
                last["coverage_95"],
            )
    jac = result.get("jacobian")
    if jac:
        log.info(
            "transport Jacobian against the field map's on %d test states: median %.4f, 95th "
            "percentile %.4f (the helix's: %.4f, %.4f)",
            jac["states"],
            jac["median"],
            jac["p95"],
            jac["helix_median"],
            jac["helix_p95"],
        )
    for line in result["verdict"]:
        log.info("%s", line)


#: Every file an evaluation writes in its folder.
OUTPUT_FILES: tuple[str, ...] = ("metrics.json", "summary.html", *PLOT_FILES.values())


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
    batch: int = EVAL_BATCH,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_path`` on the test split of ``windows``; write plots and metrics.json.

    Writes ``metrics.json``, ``summary.html``, ``residuals.png``, ``truth_vs_prediction.png``,
    ``resolution_per_plane.png``, ``resolution_vs_momentum.png``, ``resolution_vs_pt.png``,
    ``walk.png`` and, with ``metrics_csv``, ``loss_curves.png``. With all three challenge files
    the challenge score of the network and the baselines goes into ``metrics.json`` too.
    ``plots=False`` writes the numbers only (``metrics.json``, ``summary.html``).
    """
    inputs = load_inputs(model_path, windows, model_name, data_name)
    field = check_field(helix_field)
    propagators = baselines(field)
    log.info(
        "model %s (window %d) on %s: %d test windows of %d tracks",
        inputs.model_name,
        inputs.length,
        inputs.data_name,
        len(inputs.test.inputs),
        len(inputs.test.track_ids),
    )
    truth, preds = predict_one_step(inputs, propagators, batch)
    result = one_step_metrics(inputs, truth, preds, field, bins, n_momentum_bins)
    result["walk"] = walk_metrics(inputs, propagators, batch)
    # one-state (models.build.one_state, not imported: evaluation reads metadata only): its
    # Jacobian is its step's, if the file can be differentiated (an ONNX file cannot)
    one_state = inputs.meta.get("model", {}).get("history") == 0
    differentiable = hasattr(inputs.model, "jacobian") or isinstance(inputs.model, torch.nn.Module)
    if one_state and not differentiable:
        log.info("%s: no Jacobian of this file (it cannot be differentiated)", inputs.model_path)
    if has_covariance(inputs.model):
        mixture = inputs.meta.get("covariance_mixture")
        result["covariance"] = covariance_metrics(
            inputs.model, inputs.test.inputs, truth, batch, mixture
        )
        if one_state and differentiable:
            result["covariance"]["walk"] = covariance_walk(inputs, batch)
    if one_state and differentiable:
        result["jacobian"] = jacobian_metrics(inputs.model, inputs.test.inputs, truth, field)
    if challenge_inputs and challenge_answers and challenge_predictions:
        result["challenge"] = score_challenge_file(
            challenge_inputs, challenge_answers, challenge_predictions, propagators
        )
    result["real_track"] = score_real_track(
        lambda w: predict_windows(inputs.model, w, batch, workers=1), propagators, inputs.length
    )
    result["baseline_over_network"] = baseline_over_network(result, list(propagators))
    result["network_over_baseline"] = network_over_baselines(result, list(propagators))
    result["verdict"] = verdicts(result)
    history = read_metrics_csv(metrics_csv) if metrics_csv is not None else {}
    if history:
        result["training"] = training_summary(history)
    write_outputs(
        result, truth, preds["network"], Path(out_dir),
        bins=bins, history=history, metrics_csv=metrics_csv, plots=plots,
    )  # fmt: skip
    log_summary(result)
    return result
