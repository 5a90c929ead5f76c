"""A Kalman-filter track fit with three propagators: the field map, the helix, the learned one.

Simulated test tracks of the demo (their true states at planes 1-24) are measured in x, y at
every plane with a Gaussian resolution (``--resolution``, 0.02 cm). Each track is fitted by a
forward extended Kalman filter and a Rauch-Tung-Striebel smoother back to plane 1, the same code
for the three propagators; only the step (next state, its Jacobian J, its process noise Q)
differs:

- field map: the simulator's Runge-Kutta in its field, minus the mean energy loss of the plane's
  layer and the gas; J by central differences; Q = J diag(0, 0, s^2, s^2, 0) J^T with s the
  rms momentum kick of the plane's layer (Highland with the single-scattering tail): the physics
  reference;
- helix: the nominal 2 T helix with the same mean loss and Q; J exact (autograd);
- learned: a one-state model with ``forward_with_covariance`` and ``jacobian``
  (``results/demo/residual_markov/model.ts``): its state, its J, its covariance as Q.

Two passes: the first from a seed (the first measurement, the true momentum smeared by 5 %,
a wide covariance), the second linearized on the first's smoothed plane-1 state. Reported per
propagator: the resolution of x, y, px, py, pz and of |p| at plane 1 (rms of fit - truth), the
pulls of the fitted parameters, the chi2/ndf of the fits (43 degrees of freedom), the time per
track. Results in ``benchmarks/results/kalman_fit.json``.

    PYTHONPATH=src python benchmarks/kalman_fit.py [--tracks 200] [--resolution 0.02]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX  # noqa: E402
from tracklstm.evaluate.jacobian import field_jacobian, helix_jacobian  # noqa: E402
from tracklstm.evaluate.metrics import load_test_set  # noqa: E402
from tracklstm.export.loading import load_model, predict_with_covariance  # noqa: E402
from tracklstm.files import write_json  # noqa: E402
from tracklstm.physics import material as mat  # noqa: E402
from tracklstm.physics.baselines import field_only  # noqa: E402
from tracklstm.physics.helix import helix  # noqa: E402

log = logging.getLogger("kalman_fit")
IDX = list(ANSWER_INDEX)
#: A step: (states (N, 6), z_next) -> (next states (N, 6), J (N, 5, 5), Q (N, 5, 5)).
Step = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def plane_layer() -> mat.Layer:
    return next(ly for ly in mat.DETECTOR_MATERIAL.layers if ly.name.startswith("FDC plane"))


def mean_loss(states: np.ndarray, dz: float) -> np.ndarray:
    """The plane's layer and the gas over dz: the momentum lost on average (GeV/c), scaled
    along the direction (the propagators without material then lose it too)."""
    p = np.linalg.norm(states[:, 3:], axis=1)
    path = p / states[:, 5]
    beta = p / np.sqrt(p * p + mat.PION_MASS**2)
    layer = plane_layer()
    grams = layer.areal_density * path
    gas = mat.DETECTOR_MATERIAL.gas_density * dz * path
    loss = mat.bethe_mean_loss(layer.medium, grams, p)
    loss += mat.bethe_mean_loss(mat.DETECTOR_MATERIAL.gas, gas, p)
    out = states.copy()
    out[:, 3:] *= (1 - loss / beta / p)[:, None]
    return out


def kick_noise(states: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """Q = J diag(0, 0, s^2, s^2, 0) J^T: the plane's layer kicks px, py at the step's start."""
    p = np.linalg.norm(states[:, 3:], axis=1)
    beta2 = p * p / (p * p + mat.PION_MASS**2)
    layer = plane_layer()
    theta = mat.highland(layer.medium, layer.areal_density * p / states[:, 5], p, beta2)
    s2 = (p * theta) ** 2 * (1 - mat.TAIL_WEIGHT + mat.TAIL_WEIGHT * mat.TAIL_WIDTH**2)
    q0 = np.zeros((len(states), 5, 5))
    q0[:, 2, 2] = q0[:, 3, 3] = s2
    return jac @ q0 @ jac.transpose(0, 2, 1)


def field_step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zt = np.full(len(states), z)
    nxt = mean_loss(field_only(states, zt), z - states[0, 2])
    jac = field_jacobian(states, zt)
    return nxt, jac, kick_noise(states, jac)


def helix_step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zt = np.full(len(states), z)
    nxt = mean_loss(helix(states, zt), z - states[0, 2])
    jac = helix_jacobian(states, zt)
    return nxt, jac, kick_noise(states, jac)


def learned_step(model: torch.nn.Module) -> Step:
    from tracklstm.evaluate.jacobian import model_jacobian

    def step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        windows = np.repeat(states[:, None].astype(np.float32), 7, axis=1)
        jac = model_jacobian(model, windows)
        nxt, q = predict_with_covariance(model, windows)
        nxt[:, 2] = z
        return nxt, jac, q

    return step


def fit(
    step: Step, measured: np.ndarray, planes_z: np.ndarray, seed: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward filter and smoother: (state at the first plane (N, 6), its covariance, chi2)."""
    n, k = measured.shape[:2]
    r = sigma**2 * np.eye(2)
    h = np.zeros((2, 5))
    h[0, 0] = h[1, 1] = 1
    x = seed.copy()
    p = np.diag([0.1, 0.1, 1e-4, 1e-4, 1e-2])[None].repeat(n, 0)
    filt, filt_p, pred, pred_p, jacs = [], [], [], [], []
    chi2 = np.zeros(n)
    for i in range(k):
        if i > 0:
            nxt, jac, q = step(x, float(planes_z[i]))
            x, p = nxt, jac @ p @ jac.transpose(0, 2, 1) + q
            jacs.append(jac)
        pred.append(x.copy())
        pred_p.append(p.copy())
        resid = measured[:, i] - x[:, :2]
        s = h @ p @ h.T + r
        gain = p @ h.T @ np.linalg.inv(s)
        upd = np.einsum("nij,nj->ni", gain, resid)
        x = x.copy()
        x[:, IDX] += upd
        p = (np.eye(5) - gain @ h) @ p
        chi2 += np.einsum("ni,nij,nj->n", resid, np.linalg.inv(s), resid)
        filt.append(x.copy())
        filt_p.append(p.copy())
    xs, ps = filt[-1][:, IDX], filt_p[-1]
    for i in range(k - 2, -1, -1):
        c = filt_p[i] @ jacs[i].transpose(0, 2, 1) @ np.linalg.inv(pred_p[i + 1])
        xs = filt[i][:, IDX] + np.einsum("nij,nj->ni", c, xs - pred[i + 1][:, IDX])
        ps = filt_p[i] + c @ (ps - pred_p[i + 1]) @ c.transpose(0, 2, 1)
    out = filt[0].copy()
    out[:, IDX] = xs
    return out, ps, chi2


def summary(fitted: np.ndarray, cov: np.ndarray, truth: np.ndarray, chi2: np.ndarray) -> dict:
    err = fitted[:, IDX] - truth[:, IDX]
    sigma = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    p_fit, p_true = np.linalg.norm(fitted[:, 3:], axis=1), np.linalg.norm(truth[:, 3:], axis=1)
    ndf = 2 * 24 - 5
    return {
        "resolution": {
            f: float(np.sqrt(np.mean(err[:, i] ** 2))) for i, f in enumerate(ANSWER_FEATURES)
        },
        "p_resolution_relative": float(np.std((p_fit - p_true) / p_true)),
        "pull_width": {
            f: round(float((err[:, i] / sigma[:, i]).std()), 3)
            for i, f in enumerate(ANSWER_FEATURES)
        },
        "chi2_ndf_mean": round(float(np.mean(chi2) / ndf), 3),
        "chi2_ndf_median": round(float(np.median(chi2) / ndf), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=Path, default=ROOT / "results/demo/windows.h5")
    parser.add_argument(
        "--model", type=Path, default=ROOT / "results/demo/residual_markov/model.ts"
    )
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--resolution", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kalman_fit.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tracks = load_test_set(args.windows, 7).tracks.astype(np.float64)
    tracks = tracks[np.isfinite(tracks).all(axis=(1, 2))][: args.tracks]
    truth = tracks[:, 1:]  # planes 1-24
    rng = np.random.default_rng(3)
    measured = truth[:, :, :2] + rng.normal(0, args.resolution, truth[:, :, :2].shape)
    seed = truth[:, 0].copy()
    seed[:, :2] = measured[:, 0]
    seed[:, 3:] *= 1 + rng.normal(0, 0.05, (len(seed), 1))
    model, _ = load_model(args.model)
    steps = {"field map": field_step, "helix": helix_step, "learned": learned_step(model)}
    result = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        first, _, _ = fit(step, measured, truth[0, :, 2], seed, args.resolution)
        fitted, cov, chi2 = fit(step, measured, truth[0, :, 2], first, args.resolution)
        seconds = time.perf_counter() - t0
        result[name] = summary(fitted, cov, truth[:, 0], chi2)
        result[name]["ms_per_track"] = round(1000 * seconds / len(truth), 2)
        log.info("%s: %s", name, json.dumps(result[name]))
    record = {
        "benchmark": "kalman_fit",
        "tracks": len(truth),
        "resolution_cm": args.resolution,
        "result": result,
        "machine": machine(),
    }
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
