"""chi2 of errors under covariances: how the simulator's and the models' spreads are judged.

One owner for ``evaluate.calibration`` (a model's predicted covariances) and
``evaluate.sim_vs_real`` (the simulator's spread against real tracks); numpy only.
"""

from __future__ import annotations

import numpy as np

#: A covariance whose correlation matrix has an eigenvalue below this is counted as not
#: positive definite: its inverse (and a Cholesky factor) would be rounding noise.
SMALLEST_EIGENVALUE: float = 1e-9


def chi2_of(errors: np.ndarray, covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chi2 = e^T C^-1 e of the positive-definite ones, which covariances are positive definite:
    judged on the correlation matrices, so that the features' units do not matter, and the chi2
    computed from them too, which keeps it exact when the features' scales differ by 10^6)."""
    sigma = np.sqrt(np.abs(np.diagonal(covs, axis1=1, axis2=2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = covs / (sigma[:, :, None] * sigma[:, None, :])
        scaled = errors / sigma
    positive = np.isfinite(corr).all(axis=(1, 2)) & np.isfinite(scaled).all(axis=1)
    positive[positive] = np.linalg.eigvalsh(corr[positive])[:, 0] > SMALLEST_EIGENVALUE
    chol = np.linalg.cholesky(corr[positive])
    white = np.linalg.solve(chol, scaled[positive][:, :, None])[:, :, 0]
    return (white * white).sum(axis=1), positive
