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

``evaluate.run`` puts the result under ``covariance`` in ``metrics.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, CHI2_5DOF_68, CHI2_5DOF_95

#: Windows per call of the model.
BATCH: int = 4096


def has_covariance(model: Any) -> bool:
    """Whether a loaded model predicts a covariance (``forward_with_covariance``)."""
    return hasattr(model, "forward_with_covariance")


def predict_with_covariance(
    model: Any, windows: np.ndarray, batch: int = BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(states (N, 6), covariances (N, 5, 5)), float64, batch by batch."""
    states = np.empty((len(windows), windows.shape[-1]), dtype=np.float64)
    covs = np.empty((len(windows), len(ANSWER_INDEX), len(ANSWER_INDEX)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            x = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch], np.float32))
            state, cov = model.forward_with_covariance(x)
            states[start : start + len(x)] = state.to(torch.float64).numpy()
            covs[start : start + len(x)] = cov.to(torch.float64).numpy()
    return states, covs


def _widths(pulls: np.ndarray) -> dict[str, float]:
    return {f: round(float(pulls[:, i].std()), 4) for i, f in enumerate(ANSWER_FEATURES)}


def calibration_metrics(errors: np.ndarray, covs: np.ndarray, momentum: np.ndarray) -> dict:
    """The statistics of the module notes for errors (N, 5) and covariances (N, 5, 5)."""
    sigma_all = np.sqrt(np.abs(np.diagonal(covs, axis1=1, axis2=2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = covs / (sigma_all[:, :, None] * sigma_all[:, None, :])
    finite = np.isfinite(corr).all(axis=(1, 2))
    positive = finite.copy()
    positive[finite] = np.linalg.eigvalsh(corr[finite])[:, 0] > 0
    chol = np.linalg.cholesky(covs[positive])
    white = np.linalg.solve(chol, errors[positive][:, :, None])[:, :, 0]
    chi2 = (white * white).sum(axis=1)
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


def covariance_metrics(
    model: Any, windows: np.ndarray, truth: np.ndarray, batch: int = BATCH
) -> dict[str, Any]:
    """The model's covariance judged on ``windows`` (N, window, 6) against ``truth`` (N, 6)."""
    states, covs = predict_with_covariance(model, windows, batch)
    index = list(ANSWER_INDEX)
    errors = truth[:, index].astype(np.float64) - states[:, index]
    momentum = np.linalg.norm(windows[:, -1, 3:].astype(np.float64), axis=1)
    return calibration_metrics(errors, covs, momentum)
