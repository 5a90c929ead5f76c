"""chi2 of errors under covariances: how the simulator's and the models' spreads are judged.

One owner for ``evaluate.calibration`` (a model's predicted covariances),
``evaluate.sim_vs_real`` (the simulator's spread against real tracks) and
``evaluate.track_fit`` (the fitted parameters' pulls): the chi2 itself and the core width of a
pull distribution; numpy only (chi2's distribution for 5 degrees of freedom, and the scale
mixtures of it that describe a model's tails, are ``models.scale_mixture``'s).
"""

from __future__ import annotations

import numpy as np

#: A Gaussian's standard deviation over its median absolute deviation.
MAD_TO_SIGMA: float = 1.4826

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


def core_width(values: np.ndarray) -> float:
    """The width of a distribution's Gaussian core: 1.4826 times the median absolute deviation
    from the median (a Gaussian's standard deviation; a few far tails, which widen the standard
    deviation, hardly move it)."""
    values = np.asarray(values, dtype=np.float64)
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))
