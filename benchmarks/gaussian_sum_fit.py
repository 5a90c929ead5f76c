"""Does the track fit gain from Gaussian-sum process noise? The same fit, two noise models.

The step noise has heavy tails: the simulator's scattering is a core and, on 4.5 % of the
crossings, a tail 3.5 times wider; the learned propagator's errors are a scale mixture of its
covariance C (``models.scale_mixture``: on the demo 63 % at 0.51 C, 34 % at 1.05 C, 2.8 % at
6.5 C). The workflow's fit (``evaluate.track_fit``) takes each step's noise as one Gaussian with
the second moment, Q (the best linear fit whatever the noise's shape). Here its second pass runs
also with the Gaussian sum w ~ sum_k a_k N(0, s_k Q), by expectation-maximization: from the
smoothed track, each step's expected noise chi2 E[w^T Q^+ w] gives the posterior of the
components, the step's noise becomes Q / E[1/s] (a kink gets the tail's width, a quiet step the
core's) and the filter and smoother run again (``ITERATIONS`` times): the maximum a posteriori
track under the mixture, as iteratively reweighted least squares finds it.

Two cases, each on the same measured tracks, Gaussian against Gaussian sum:
- the field map on freshly simulated tracks, with the simulator's own two-component scattering
  (``physics.material.TAIL_WEIGHT``, ``TAIL_WIDTH``) relative to Q;
- the learned one-state model (``--model``, ``--windows``: its test tracks) with the mixture
  stored in it (the file's metadata ``covariance_mixture``).

    PYTHONPATH=src python benchmarks/gaussian_sum_fit.py [--tracks 1000] \\
        [--model results/demo/residual_markov/model.ts] [--windows results/demo/windows.h5]

Results: ``benchmarks/results/gaussian_sum_fit.json`` (one entry per windows file's folder).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import add_model_and_windows, record_per_dataset  # noqa: E402

from tracklstm.data.simulate import simulate_tracks  # noqa: E402
from tracklstm.evaluate import track_fit as tf  # noqa: E402
from tracklstm.evaluate.kalman import filter_and_smooth  # noqa: E402
from tracklstm.evaluate.metrics import load_test_set  # noqa: E402
from tracklstm.export.loading import load_model  # noqa: E402
from tracklstm.physics import material  # noqa: E402

log = logging.getLogger("gaussian_sum_fit")
RESULTS = ROOT / "benchmarks" / "results" / "gaussian_sum_fit.json"
#: Expectation-maximization passes.
ITERATIONS: int = 5

Mixture = tuple[np.ndarray, np.ndarray]


def noise_scales(
    xs: list[np.ndarray],
    ps: list[np.ndarray],
    gains: list[np.ndarray],
    jacs: list[np.ndarray],
    qs: list[np.ndarray],
    mixture: Mixture,
) -> list[np.ndarray]:
    """The EM step: per step and track the factor 1 / E[1/s] of its noise Q, from the
    components' posterior given the smoothed expected noise chi2 = tr(Q^+ E[w w^T]) (Q^+ the
    pseudo-inverse; its rank, the noise's dimension: 2 for a kick in px, py, 5 for a learned
    covariance)."""
    weights, scales = mixture
    out = []
    for i, (jac, q) in enumerate(zip(jacs, qs, strict=True)):
        w = xs[i + 1] - np.einsum("nij,nj->ni", jac, xs[i])
        cross = ps[i + 1] @ gains[i].transpose(0, 2, 1)  # Cov(d_{i+1}, d_i | all)
        second = (
            np.einsum("ni,nj->nij", w, w)
            + ps[i + 1]
            - cross @ jac.transpose(0, 2, 1)
            - jac @ cross.transpose(0, 2, 1)
            + jac @ ps[i] @ jac.transpose(0, 2, 1)
        )
        values, vectors = np.linalg.eigh(q)
        keep = values > 1e-9 * values.max(axis=1, keepdims=True)
        inverse = np.where(keep, 1.0 / np.where(keep, values, 1.0), 0.0)
        chi2 = np.einsum("nij,nji->n", vectors @ (inverse[:, :, None] * vectors.mT), second)
        rank = keep.sum(axis=1)
        logs = np.stack(
            [
                math.log(a) - 0.5 * rank * math.log(s) - 0.5 * chi2 / s
                for a, s in zip(weights, scales, strict=True)
            ]
        )
        post = np.exp(logs - logs.max(axis=0))
        post /= post.sum(axis=0)
        out.append(1.0 / (post / scales[:, None]).sum(axis=0))
    return out


def refit_gaussian_sum(
    step: tf.Step,
    measured: np.ndarray,
    planes: np.ndarray,
    around: np.ndarray,
    seed: np.ndarray,
    sigma: float,
    mixture: Mixture,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``track_fit.refit`` with the Gaussian-sum noise, by ``ITERATIONS`` EM passes."""
    refs, jacs, qs = tf.linearize(step, around, planes)
    resids = [measured[:, i] - ref[:, :2] for i, ref in enumerate(refs)]
    d0, p0 = (seed - around)[:, tf.IDX], tf.WEAK_PRIOR[None].repeat(len(around), 0)
    xs, ps, gains, chi2 = filter_and_smooth(d0, p0, jacs, qs, resids, sigma)
    for _ in range(ITERATIONS):
        factors = noise_scales(xs, ps, gains, jacs, qs, mixture)
        scaled = [q * f[:, None, None] for q, f in zip(qs, factors, strict=True)]
        xs, ps, gains, chi2 = filter_and_smooth(d0, p0, jacs, scaled, resids, sigma)
    out = around.copy()
    out[:, tf.IDX] += xs[0]
    return out, ps[0], chi2


def compare(step: tf.Step, truth: np.ndarray, mixture: Mixture, sigma: float) -> dict[str, Any]:
    """Gaussian and Gaussian-sum second passes of the same first pass on the same measured
    ``truth`` (N, 24, 6): each one's ``track_fit.summary`` and seconds."""
    rng = np.random.default_rng(3)
    measured = truth[:, :, :2] + rng.normal(0, sigma, truth[:, :, :2].shape)
    start = truth[:, 0].copy()
    start[:, :2] = measured[:, 0]
    start[:, 3:] *= 1 + rng.normal(0, 0.05, (len(start), 1))
    planes = truth[0, :, 2]
    first, _, _ = tf.fit(step, measured, planes, start, sigma)
    out: dict[str, Any] = {"tracks": len(truth), "mixture": [m.tolist() for m in mixture]}
    for name in ("gaussian", "gaussian_sum"):
        t0 = time.perf_counter()
        if name == "gaussian":
            fitted, cov, chi2 = tf.refit(step, measured, planes, first, start, sigma)
        else:
            fitted, cov, chi2 = refit_gaussian_sum(
                step, measured, planes, first, start, sigma, mixture
            )
        out[name] = {**tf.summary(fitted, cov, truth[:, 0], chi2),
                     "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
        log.info("%s: |p| resolution %.2f %% (core %.2f %%), pulls %s", name,
                 100 * out[name]["p_resolution_relative"], 100 * out[name]["p_resolution_core"],
                 out[name]["pull_width"])  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_windows(parser)
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--resolution", type=float, default=tf.DEFAULTS["resolution_cm"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tail, width = material.TAIL_WEIGHT, material.TAIL_WIDTH
    second = 1 - tail + tail * width**2  # the scattering's second moment, Q's
    simulator = (np.array([1 - tail, tail]), np.array([1.0, width**2]) / second)
    log.info("field map, the simulator's scattering mixture")
    truth = simulate_tracks(args.tracks, seed=4)[:, 1:]
    result: dict[str, Any] = {
        "field_map": compare(tf.field_step, truth, simulator, args.resolution)
    }
    model, meta = load_model(args.model)
    stored = meta.get("covariance_mixture")
    if stored:
        log.info("learned, its stored mixture")
        length = int(meta["window_length"])
        test = load_test_set(args.windows, length).tracks.astype(np.float64)
        test = test[np.isfinite(test).all(axis=(1, 2))][: args.tracks]
        mixture = (np.asarray(stored["weights"]), np.asarray(stored["scales"]))
        step = tf.learned_step(model, length)
        result["learned"] = compare(step, test[:, 1:], mixture, args.resolution)
    result["model"] = str(args.model)
    record_per_dataset(args.out, args.windows, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
