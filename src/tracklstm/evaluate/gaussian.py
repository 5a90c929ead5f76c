"""chi2 of errors under covariances: how the simulator's and the models' spreads are judged.

One owner for ``evaluate.calibration`` (a model's predicted covariances) and
``evaluate.sim_vs_real`` (the simulator's spread against real tracks); numpy only.
"""

from __future__ import annotations

import numpy as np


def chi2_of(errors: np.ndarray, covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chi2 = e^T C^-1 e of the positive-definite ones, which covariances are positive definite:
    judged on the correlation matrices, so that the features' units do not matter)."""
    sigma = np.sqrt(np.abs(np.diagonal(covs, axis1=1, axis2=2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = covs / (sigma[:, :, None] * sigma[:, None, :])
    positive = np.isfinite(corr).all(axis=(1, 2))
    positive[positive] = np.linalg.eigvalsh(corr[positive])[:, 0] > 0
    chol = np.linalg.cholesky(covs[positive])
    white = np.linalg.solve(chol, errors[positive][:, :, None])[:, :, 0]
    return (white * white).sum(axis=1), positive
