"""Is a model's predicted covariance right? Pulls, chi2 and coverage on the test windows.

For a model exported with ``forward_with_covariance`` (``model.covariance``), each test window's
error at the next plane, e = truth - prediction for x, y, px, py, pz, is judged against the
covariance C the model predicts for it:

- pulls e_i / sqrt(C_ii) per feature: width (standard deviation) and mean, overall and per
  quartile of |p| (the last input state's momentum); a calibrated model gives widths of 1;
- chi2 = e^T C^-1 e (5 degrees of freedom): chi2/ndf mean and median, and the shares of windows
  inside the 68.3 % and 95 % regions (chi2 below 5.89 and 11.07: 0.683 and 0.95 if calibrated);
- how many predicted covariances are not positive definite (none, by construction), judged on
  the correlation matrices (so that the features' very different units do not matter).

For a one-state model (``model.history: 0``) the walk too: the model stepped plane by plane on
its own predictions, the covariance carried along with its Jacobian (``walk_with_covariance``).
``evaluate.run`` puts the results under ``covariance`` in ``metrics.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, CHI2_5DOF_68, CHI2_5DOF_95
from tracklstm.evaluate.gaussian import chi2_of
from tracklstm.evaluate.jacobian import model_jacobian
from tracklstm.export.loading import COVARIANCE_BATCH, predict_with_covariance


def _widths(pulls: np.ndarray) -> dict[str, float]:
    return {f: round(float(pulls[:, i].std()), 4) for i, f in enumerate(ANSWER_FEATURES)}


def calibration_metrics(errors: np.ndarray, covs: np.ndarray, momentum: np.ndarray) -> dict:
    """The statistics of the module notes for errors (N, 5) and covariances (N, 5, 5)."""
    chi2, positive = chi2_of(errors, covs)
    sigma = np.sqrt(np.diagonal(covs[positive], axis1=1, axis2=2))
    pulls = errors[positive] / sigma
    p = momentum[positive]
    edges = np.quantile(p, [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, p)
    ndf = len(ANSWER_FEATURES)
    return {
        "windows": len(errors),
        "not_positive_definite": int((~positive).sum()),
        "pull_width": _widths(pulls),
        "pull_mean": {
            f: round(float(pulls[:, i].mean()), 4) for i, f in enumerate(ANSWER_FEATURES)
        },
        "momentum_quartile_edges": [round(float(e), 4) for e in edges],
        "pull_width_by_momentum_quartile": [_widths(pulls[quartile == q]) for q in range(4)],
        "chi2_ndf_mean": round(float(chi2.mean() / ndf), 4),
        "chi2_ndf_median": round(float(np.median(chi2) / ndf), 4),
        "coverage_68": round(float(np.mean(chi2 < CHI2_5DOF_68)), 4),
        "coverage_95": round(float(np.mean(chi2 < CHI2_5DOF_95)), 4),
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
        planes.append(
            {
                "plane": plane,
                "chi2_ndf_mean": round(float(chi2.mean() / len(index)), 4),
                "chi2_ndf_median": round(float(np.median(chi2) / len(index)), 4),
                "coverage_95": round(float(np.mean(chi2 < CHI2_5DOF_95)), 4),
                "not_positive_definite": int((~positive).sum()),
            }
        )
    return {"start_plane": start, "tracks": len(tracks), "per_plane": planes}


def covariance_metrics(
    model: Any, windows: np.ndarray, truth: np.ndarray, batch: int = COVARIANCE_BATCH
) -> dict[str, Any]:
    """The model's covariance judged on ``windows`` (N, window, 6) against ``truth`` (N, 6)."""
    states, covs = predict_with_covariance(model, windows, batch)
    index = list(ANSWER_INDEX)
    errors = truth[:, index].astype(np.float64) - states[:, index]
    momentum = np.linalg.norm(windows[:, -1, 3:].astype(np.float64), axis=1)
    return calibration_metrics(errors, covs, momentum)
