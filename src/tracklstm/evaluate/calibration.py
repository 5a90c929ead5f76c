"""Is a model's predicted covariance right? Pulls, chi2 and coverage on the test windows.

For a model exported with ``forward_with_covariance`` (``model.covariance``), each test window's
error at the next plane, e = truth - prediction for x, y, px, py, pz, is judged against the
covariance C the model predicts for it:

- pulls e_i / sqrt(C_ii) per feature: width (standard deviation) and mean, overall and per
  quartile of |p| (the last input state's momentum); a calibrated model gives widths of 1. Each
  width and mean chi2/ndf has its standard error (``*_error``): a heavy tail makes them large
  (on the demo's 147,600 test windows pz's width is 1.53 +- 0.22, x's 1.026 +- 0.004), and
  still too small where the sample holds too few of the rarest errors (over sets of 3,600 of
  those windows, the mean chi2/ndf of one covariance runs from 0.79 to 4.34). Beside
  each width its core's (``pull_width_core``, from the median absolute deviation): scattering's
  and straggling's far tails (a hard collision takes a thousand times the median loss in one
  step) set the standard deviation, which no Gaussian follows in the bulk and the tails at once;
- chi2 = e^T C^-1 e (5 degrees of freedom): chi2/ndf mean and median, and the shares of windows
  inside the 68.3 % and 95 % regions (chi2 below 5.89 and 11.07: 0.683 and 0.95 if calibrated);
- with the scale mixture of C that the training fitted to describe the errors' tails
  (``models.scale_mixture``; the file's metadata ``covariance_mixture``): the shares inside its
  68.3, 95 and 99 % regions (chi2 below the mixture's quantiles), under ``mixture``;
- how many predicted covariances are not positive definite (none, by construction), judged on
  the correlation matrices (so that the features' very different units do not matter).

For a one-state model (``model.history: 0``) the walk too: the model stepped plane by plane on
its own predictions, the covariance carried along with its Jacobian (``walk_with_covariance``).
``evaluate.run`` puts the results under ``covariance`` in ``metrics.json``;
``evaluate.calibration_plot`` draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, CHI2_5DOF_68, CHI2_5DOF_95
from tracklstm.evaluate.gaussian import chi2_of, core_width
from tracklstm.evaluate.jacobian import model_jacobian
from tracklstm.export.loading import COVARIANCE_BATCH, predict_with_covariance
from tracklstm.models.scale_mixture import mixture_cdf

NAN: float = float("nan")
#: The contents of the mixture's regions whose coverage is measured.
MIXTURE_LEVELS: dict[str, float] = {"68": 0.6827, "95": 0.95, "99": 0.99}


def _widths(pulls: np.ndarray) -> dict[str, float]:
    if not len(pulls):  # an empty |p| quartile
        return dict.fromkeys(ANSWER_FEATURES, NAN)
    return {f: round(float(pulls[:, i].std()), 4) for i, f in enumerate(ANSWER_FEATURES)}


def _width_errors(pulls: np.ndarray) -> dict[str, float]:
    """The standard error of each width sqrt(mean(pull^2)): std(pull^2) / (2 width sqrt(n))."""
    if not len(pulls):
        return dict.fromkeys(ANSWER_FEATURES, NAN)
    square = pulls * pulls
    width = np.sqrt(square.mean(0))
    error = square.std(0) / (2 * np.maximum(width, 1e-300) * np.sqrt(len(pulls)))
    return {f: round(float(error[i]), 4) for i, f in enumerate(ANSWER_FEATURES)}


def chi2_ndf_error(chi2: np.ndarray, ndf: int) -> float:
    """The standard error of the mean chi2/ndf: std(chi2) / (ndf sqrt(n))."""
    return float(chi2.std() / (ndf * np.sqrt(len(chi2)))) if len(chi2) else NAN


def _core_widths(pulls: np.ndarray) -> dict[str, float]:
    if not len(pulls):
        return dict.fromkeys(ANSWER_FEATURES, NAN)
    return {f: round(core_width(pulls[:, i]), 4) for i, f in enumerate(ANSWER_FEATURES)}


def pulls_and_chi2(
    errors: np.ndarray, covs: np.ndarray, momentum: np.ndarray
) -> dict[str, np.ndarray]:
    """Of the windows whose covariance is positive definite: ``pulls`` (n, 5), ``chi2`` (n,),
    ``momentum`` (n,) and ``quartile`` (n,: 0-3, of |p|, edges ``edges``); ``positive`` (N,)."""
    chi2, positive = chi2_of(errors, covs)
    sigma = np.sqrt(np.diagonal(covs[positive], axis1=1, axis2=2))
    return judged_from(errors[positive] / sigma, chi2, momentum[positive], positive)


def judged_from(
    pulls: np.ndarray, chi2: np.ndarray, momentum: np.ndarray, positive: np.ndarray
) -> dict[str, np.ndarray]:
    """``pulls_and_chi2``'s result from the pulls, chi2 and |p| of the positive definite
    windows and ``positive`` (N,): their |p| quartiles added (for windows judged in parts)."""
    edges = np.quantile(momentum, [0.25, 0.5, 0.75]) if len(momentum) else np.zeros(3)
    return {
        "pulls": pulls,
        "chi2": chi2,
        "momentum": momentum,
        "edges": edges,
        "quartile": np.searchsorted(edges, momentum),
        "positive": positive,
    }


def mixture_coverage(chi2: np.ndarray, mixture: dict[str, list[float]]) -> dict[str, Any]:
    """The scale mixture of the covariance (``mixture``: its ``weights`` and ``scales``) and
    the shares of ``chi2`` inside its regions of content 68.3, 95 and 99 %."""
    weights, scales = np.asarray(mixture["weights"]), np.asarray(mixture["scales"])
    content = mixture_cdf(chi2, weights, scales)
    return {
        "weights": [round(float(v), 6) for v in weights],
        "scales": [round(float(v), 4) for v in scales],
        **{
            f"coverage_{name}": round(float(np.mean(content < level)), 4)
            for name, level in MIXTURE_LEVELS.items()
        },
    }


def calibration_metrics(
    errors: np.ndarray,
    covs: np.ndarray,
    momentum: np.ndarray,
    mixture: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The statistics of the module notes for errors (N, 5) and covariances (N, 5, 5); with
    ``mixture`` (the model's ``covariance_mixture``) its coverage too."""
    return judged_metrics(pulls_and_chi2(errors, covs, momentum), mixture)


def judged_metrics(
    judged: dict[str, np.ndarray], mixture: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """``calibration_metrics`` of windows judged by ``pulls_and_chi2`` or ``judged_from``."""
    pulls, chi2, quartile = judged["pulls"], judged["chi2"], judged["quartile"]
    ndf = len(ANSWER_FEATURES)
    extra = {"mixture": mixture_coverage(chi2, mixture)} if mixture else {}
    return {
        "windows": len(judged["positive"]),
        "not_positive_definite": int((~judged["positive"]).sum()),
        "pull_width": _widths(pulls),
        "pull_width_error": _width_errors(pulls),
        "pull_width_core": _core_widths(pulls),
        "pull_mean": {
            f: round(float(pulls[:, i].mean()), 4) for i, f in enumerate(ANSWER_FEATURES)
        },
        "momentum_quartile_edges": [round(float(e), 4) for e in judged["edges"]],
        "pull_width_by_momentum_quartile": [_widths(pulls[quartile == q]) for q in range(4)],
        "pull_width_error_by_momentum_quartile": [
            _width_errors(pulls[quartile == q]) for q in range(4)
        ],
        "pull_width_core_by_momentum_quartile": [
            _core_widths(pulls[quartile == q]) for q in range(4)
        ],
        "chi2_ndf_mean": round(float(chi2.mean() / ndf), 4),
        "chi2_ndf_mean_error": round(chi2_ndf_error(chi2, ndf), 4),
        "chi2_ndf_median": round(float(np.median(chi2) / ndf), 4),
        "coverage_68": round(float(np.mean(chi2 < CHI2_5DOF_68)), 4),
        "coverage_95": round(float(np.mean(chi2 < CHI2_5DOF_95)), 4),
        **extra,
    }


def walk_with_covariance(
    model: Any, tracks: np.ndarray, start: int, length: int, batch: int = COVARIANCE_BATCH
) -> dict[str, Any]:
    """A one-state model walked on its own predictions from the true state at plane
    ``start - 1`` (no uncertainty there) to the last plane of ``tracks`` (N, planes, 6),
    carrying the covariance as a Kalman filter's prediction step does, C' = J C J^T + Q (J its
    ``jacobian``, Q its covariance); at each plane the chi2/ndf of the walked state's error
    under C, and the share inside the 95 % region."""
    index = list(ANSWER_INDEX)
    state = tracks[:, start - 1].astype(np.float64)
    cov = np.zeros((len(tracks), len(index), len(index)))
    planes = []
    for plane in range(start, tracks.shape[1]):
        windows = np.repeat(state[:, None].astype(np.float32), length, axis=1)
        step = model_jacobian(model, windows)
        state, noise = predict_with_covariance(model, windows, batch)
        cov = step @ cov @ step.transpose(0, 2, 1) + noise
        chi2, positive = chi2_of(tracks[:, plane, index] - state[:, index], cov)
        judged = len(chi2) > 0  # none: every walked covariance not positive definite
        planes.append(
            {
                "plane": plane,
                "chi2_ndf_mean": round(float(chi2.mean() / len(index)), 4) if judged else NAN,
                "chi2_ndf_mean_error": round(chi2_ndf_error(chi2, len(index)), 4),
                "chi2_ndf_median": (
                    round(float(np.median(chi2) / len(index)), 4) if judged else NAN
                ),
                "coverage_95": round(float(np.mean(chi2 < CHI2_5DOF_95)), 4) if judged else NAN,
                "not_positive_definite": int((~positive).sum()),
            }
        )
    return {"start_plane": start, "tracks": len(tracks), "per_plane": planes}


def errors_and_covariances(
    model: Any, windows: np.ndarray, truth: np.ndarray, batch: int = COVARIANCE_BATCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's errors (N, 5) of x, y, px, py, pz on ``windows`` (N, window, 6) against
    ``truth`` (N, 6), its covariances (N, 5, 5), and each window's |p| (its last state's)."""
    states, covs = predict_with_covariance(model, windows, batch)
    index = list(ANSWER_INDEX)
    errors = truth[:, index].astype(np.float64) - states[:, index]
    momentum = np.linalg.norm(windows[:, -1, 3:].astype(np.float64), axis=1)
    return errors, covs, momentum


def covariance_metrics(
    model: Any,
    windows: np.ndarray,
    truth: np.ndarray,
    batch: int = COVARIANCE_BATCH,
    mixture: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The model's covariance judged on ``windows`` (N, window, 6) against ``truth`` (N, 6)
    (and the scale mixture of its shape, ``mixture``, from the file's metadata, if any)."""
    return calibration_metrics(*errors_and_covariances(model, windows, truth, batch), mixture)
