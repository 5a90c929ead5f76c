"""The linear Kalman filter and smoother of a track fit.

``evaluate.track_fit`` fits a track in two passes; the second is linear: the departures d of the
track from a reference trajectory follow d' = J d + w from plane to plane (J the step's Jacobian,
w its process noise, covariance Q) and are measured in x, y with resolution sigma. ``update`` is
the filter's measurement step (the first pass's too), ``smooth`` the Rauch-Tung-Striebel
smoother (every plane's smoothed departure, its covariance and the smoother's gains),
``filter_and_smooth`` both over a track.
(``benchmarks/gaussian_sum_fit.py`` runs the same with Gaussian-sum process noise.)
"""

from __future__ import annotations

import numpy as np

#: The measurement: x and y of (x, y, px, py, pz).
MEASURED: np.ndarray = np.eye(2, 5)


def update(
    x: np.ndarray, p: np.ndarray, resid: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Kalman update by a measurement of x, y: (x, P, chi2 of the residual)."""
    h = MEASURED
    s = h @ p @ h.T + sigma**2 * np.eye(2)
    s_inv = np.linalg.inv(s)
    gain = p @ h.T @ s_inv
    x = x + np.einsum("nij,nj->ni", gain, resid)
    p = (np.eye(5) - gain @ h) @ p
    return x, p, np.einsum("ni,nij,nj->n", resid, s_inv, resid)


def smooth(
    filt: list[np.ndarray],
    filt_p: list[np.ndarray],
    pred: list[np.ndarray],
    pred_p: list[np.ndarray],
    jacs: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Rauch-Tung-Striebel from the last plane back to the first: each plane's smoothed (x, P)
    and each step's smoother gain G (the smoothed cross-covariance of planes i+1 and i is
    P_{i+1} G_i^T)."""
    xs, ps, gains = [filt[-1]], [filt_p[-1]], []
    for i in range(len(filt) - 2, -1, -1):
        g = filt_p[i] @ jacs[i].transpose(0, 2, 1) @ np.linalg.inv(pred_p[i + 1])
        xs.insert(0, filt[i] + np.einsum("nij,nj->ni", g, xs[0] - pred[i + 1]))
        ps.insert(0, filt_p[i] + g @ (ps[0] - pred_p[i + 1]) @ g.transpose(0, 2, 1))
        gains.insert(0, g)
    return xs, ps, gains


def filter_and_smooth(
    d0: np.ndarray,
    p0: np.ndarray,
    jacs: list[np.ndarray],
    qs: list[np.ndarray],
    resids: list[np.ndarray],
    sigma: float,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Fit the departures: ``d0`` (N, 5) and its prior ``p0`` at the first plane, the steps'
    ``jacs`` and noise ``qs`` (k-1 of (N, 5, 5)), the measured x, y minus the reference's,
    ``resids`` (k of (N, 2)), resolution ``sigma``, by the linear filter and the smoother.
    Returns each plane's smoothed departure and covariance, the smoother's gains and the fit's
    chi2 (of the measurements)."""
    d, p = d0, p0
    filt, filt_p, pred, pred_p = [], [], [], []
    chi2 = np.zeros(len(d0))
    for i, resid in enumerate(resids):
        if i > 0:
            d = np.einsum("nij,nj->ni", jacs[i - 1], d)
            p = jacs[i - 1] @ p @ jacs[i - 1].transpose(0, 2, 1) + qs[i - 1]
        pred.append(d)
        pred_p.append(p)
        d, p, c2 = update(d, p, resid - d[:, :2], sigma)
        chi2 += c2
        filt.append(d)
        filt_p.append(p)
    xs, ps, gains = smooth(filt, filt_p, pred, pred_p, jacs)
    return xs, ps, gains, chi2
