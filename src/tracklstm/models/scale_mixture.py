"""The shape of a model's error distribution: a scale mixture of its predicted covariance.

A covariance head predicts C, the second moment of the next state's error e (x, y, px, py, pz).
The errors are far from Gaussian in their tails: multiple scattering is a Gaussian core with
single hard scatters beyond it, and energy-loss straggling a Landau tail (one plane can take
1000 times a track's usual loss). Under C, chi2 = e^T C^-1 e of a Gaussian would follow chi2(5);
the measured one has a narrower core and far longer tails (at full size 88 % of the windows
inside C's 68.3 % region, 96 % inside its 95 % region).

A Gaussian-sum description of the same shape (Fruehwirth's Gaussian-sum filter models
scattering so) says what no single Gaussian can: e ~ sum_k w_k N(0, s_k C), so that
chi2 ~ sum_k w_k s_k chi2(5). ``fit_scale_mixture`` fits the weights and scales to the calibration
windows' chi2 by expectation-maximization, with 1 to ``MAX_COMPONENTS`` components (chosen by
the Bayesian information criterion); ``mixture_cdf`` and ``mixture_quantile`` give its regions:
the region of content q is chi2 below the mixture's q-quantile. The training stage stores the fit
in the model (``cov_mixture_weight``, ``cov_mixture_scale``), the exports in their metadata
(``covariance_mixture``), and the evaluation judges its coverage beside the single Gaussian's.
Numpy only.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger("tracklstm.train")

#: Degrees of freedom: x, y, px, py, pz.
NDF: int = 5
#: The most components a fit may use (and the length of the model's mixture buffers).
MAX_COMPONENTS: int = 3
#: Fewer windows than this per free parameter: one component (a single Gaussian).
WINDOWS_PER_PARAMETER: int = 200
#: Expectation-maximization stops when the mean log-likelihood gains less than this.
TOLERANCE: float = 1e-9
#: The most windows a fit uses (a fixed random subset of more): the mixture has 5 numbers, and
#: each EM iteration costs its components times its windows.
MAX_FIT_WINDOWS: int = 1_000_000


def chi2_5dof_cdf(chi2: np.ndarray) -> np.ndarray:
    """P(chi2 < x) for 5 degrees of freedom: erf(sqrt(x/2)) - sqrt(2/pi) e^(-x/2) (sqrt(x) +
    x^(3/2)/3) (the regularized lower gamma function P(5/2, x/2) in closed form)."""
    x = np.clip(np.asarray(chi2, dtype=np.float64), 0.0, None)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    root = np.sqrt(x)
    return erf(root / math.sqrt(2.0)) - math.sqrt(2.0 / math.pi) * np.exp(-x / 2) * (
        root + x * root / 3.0
    )


def chi2_5dof_logpdf(chi2: np.ndarray) -> np.ndarray:
    """log density of chi2 with 5 degrees of freedom."""
    x = np.maximum(np.asarray(chi2, dtype=np.float64), 1e-300)
    half = NDF / 2
    return (half - 1) * np.log(x) - x / 2 - half * math.log(2) - math.lgamma(half)


def component_logs(chi2: np.ndarray, weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(K, n): log of w_k times the density of ``chi2`` under s_k chi2(5)."""
    return np.stack(
        [
            math.log(max(w, 1e-300)) + chi2_5dof_logpdf(chi2 / s) - math.log(s)
            for w, s in zip(weights, scales, strict=True)
        ]
    )


def mixture_loglik(chi2: np.ndarray, weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-window log density of ``chi2`` under sum_k w_k s_k chi2(5)."""
    parts = component_logs(chi2, weights, scales)
    top = parts.max(0)
    return top + np.log(np.exp(parts - top).sum(0))


def fit_components(
    chi2: np.ndarray, k: int, iterations: int = 1000
) -> tuple[np.ndarray, np.ndarray, float]:
    """Weights, scales (increasing) and total log-likelihood of a k-component fit to ``chi2``
    by expectation-maximization (one component: the scale mean(chi2) / 5)."""
    if k == 1:
        w, s = np.ones(1), np.array([chi2.mean() / NDF])
        return w, s, float(mixture_loglik(chi2, w, s).sum())
    s = np.maximum(np.quantile(chi2, np.linspace(0.3, 0.97, k)) / NDF, 1e-12)
    w = np.full(k, 1.0 / k)
    last = -np.inf
    for _ in range(iterations):
        parts = component_logs(chi2, w, s)
        top = parts.max(0)
        r = np.exp(parts - top)
        total = r.sum(0)
        mean_loglik = float((top + np.log(total)).mean())
        r /= total
        w = r.mean(1)
        s = np.maximum((r * chi2).sum(1) / (NDF * np.maximum(r.sum(1), 1e-300)), 1e-12)
        if mean_loglik - last < TOLERANCE:
            break
        last = mean_loglik
    order = np.argsort(s)
    w, s = w[order], s[order]
    return w, s, float(mixture_loglik(chi2, w, s).sum())


def fit_scale_mixture(
    chi2: np.ndarray, max_components: int = MAX_COMPONENTS, iterations: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and scales (increasing) of sum_k w_k s_k chi2(5) fitted to ``chi2`` (the
    calibration windows' chi2 under the predicted covariance) by expectation-maximization: of the
    fits with 1 to ``max_components`` components (each with at least ``WINDOWS_PER_PARAMETER``
    windows per free parameter), the one with the lowest Bayesian information criterion (on at
    most ``MAX_FIT_WINDOWS`` of them)."""
    chi2 = np.asarray(chi2, dtype=np.float64)
    chi2 = chi2[np.isfinite(chi2)]
    if len(chi2) > MAX_FIT_WINDOWS:
        chi2 = np.random.default_rng(0).choice(chi2, MAX_FIT_WINDOWS, replace=False)
    if len(chi2) == 0:
        return np.ones(1), np.ones(1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for k in range(1, min(max_components, MAX_COMPONENTS) + 1):
        parameters = 2 * k - 1
        if k > 1 and len(chi2) < WINDOWS_PER_PARAMETER * parameters:
            break
        w, s, loglik = fit_components(chi2, k, iterations)
        bic = -2.0 * loglik + parameters * math.log(len(chi2))
        log.info(
            "chi2 scale mixture, %d component(s): weights %s, scales %s, BIC %.1f",
            k,
            ", ".join(f"{v:.4f}" for v in w),
            ", ".join(f"{v:.3f}" for v in s),
            bic,
        )
        if best is None or bic < best[0]:
            best = (bic, w, s)
    assert best is not None
    return best[1], best[2]


def mixture_cdf(chi2: np.ndarray, weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """P(chi2' < ``chi2``) under sum_k w_k s_k chi2(5): a window's probability integral
    transform (below q: inside the mixture's region of content q)."""
    chi2 = np.asarray(chi2, dtype=np.float64)
    return sum(
        (w * chi2_5dof_cdf(chi2 / s) for w, s in zip(weights, scales, strict=True) if w > 0),
        np.zeros_like(chi2),
    )


def mixture_quantile(q: float, weights: np.ndarray, scales: np.ndarray) -> float:
    """The chi2 below which the mixture holds content ``q`` (0 < q < 1), by bisection."""
    low, high = 0.0, float(max(scales)) * 200.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if float(mixture_cdf(np.array([mid]), weights, scales)[0]) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def padded(weights: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's buffers (``MAX_COMPONENTS``,): the fit, then components of weight 0."""
    extra = MAX_COMPONENTS - len(weights)
    return (
        np.concatenate([weights, np.zeros(extra)]),
        np.concatenate([scales, np.ones(extra)]),
    )


def from_buffers(weights: np.ndarray, scales: np.ndarray) -> dict[str, list[float]]:
    """The mixture as the export metadata's ``covariance_mixture``: its components of weight > 0."""
    keep = np.asarray(weights) > 0
    return {
        "weights": [float(v) for v in np.asarray(weights)[keep]],
        "scales": [float(v) for v in np.asarray(scales)[keep]],
    }
