"""Is every predicted covariance positive definite? 10^6 evaluations, out-of-range ones included.

Half of the windows are demo test windows with their states jittered (x, y by 1 cm, momenta by
1 %); half are random states far outside the training range (x, y within 200 cm, |p| from 0.05 to
20 GeV/c, any direction forward, any plane). Each exported model with ``forward_with_covariance``
of ``--models`` predicts their covariances; a covariance counts as positive definite when its
correlation matrix's smallest eigenvalue is positive and its Cholesky factorization succeeds
(float64), and as finite when every entry is.

    PYTHONPATH=src python benchmarks/covariance_check.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.constants import PLANE_Z  # noqa: E402
from tracklstm.evaluate.gaussian import chi2_of  # noqa: E402
from tracklstm.export.loading import load_model, predict_with_covariance  # noqa: E402
from tracklstm.files import write_json  # noqa: E402

log = logging.getLogger("covariance_check")


def windows(n: int, rng: np.random.Generator, test: np.ndarray) -> np.ndarray:
    """n windows (n, 7, 6): half jittered test windows, half random out-of-range states."""
    half = n // 2
    near = test[rng.integers(0, len(test), half)].astype(np.float64)
    near[:, :, :2] += rng.normal(0, 1.0, (half, 1, 2))
    near[:, :, 3:] *= 1 + rng.normal(0, 0.01, (half, 1, 3))
    far = np.empty((n - half, 6))
    far[:, :2] = rng.uniform(-200, 200, (n - half, 2))
    far[:, 2] = np.asarray(PLANE_Z)[rng.integers(0, len(PLANE_Z) - 1, n - half)]
    p = np.exp(rng.uniform(np.log(0.05), np.log(20.0), n - half))
    theta, phi = rng.uniform(0, 1.2, n - half), rng.uniform(0, 2 * np.pi, n - half)
    far[:, 3], far[:, 4] = p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi)
    far[:, 5] = p * np.cos(theta)
    far_windows = np.repeat(far[:, None], test.shape[1], axis=1)
    return np.concatenate([near, far_windows]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--runs", type=Path, default=ROOT / "results/demo")
    parser.add_argument("--models", nargs="+", default=["residual", "residual_markov"])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/covariance_check.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with h5py.File(args.runs / "windows.h5", "r") as h5:
        test = h5["test"]["inputs"][...]
    x = windows(args.n, np.random.default_rng(1), test)
    result = {}
    for name in args.models:
        model, _ = load_model(args.runs / name / "model.ts")
        t0 = time.perf_counter()
        _, covs = predict_with_covariance(model, x, batch=16384)
        finite = np.isfinite(covs).all(axis=(1, 2))
        _, positive = chi2_of(np.zeros((int(finite.sum()), 5)), covs[finite])
        result[name] = {
            "evaluations": len(x),
            "not_finite": int((~finite).sum()),
            "not_positive_definite": int((~positive).sum()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s: %s", name, result[name])
    record = {"benchmark": "covariance_check", "result": result, "machine": machine()}
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
