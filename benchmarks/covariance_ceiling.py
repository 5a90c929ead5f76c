"""What the best Gaussian covariance can reach on the simulator: the exact one, by Monte Carlo.

A learned covariance is judged by pulls, chi2 and coverage (``tracklstm.evaluate.calibration``).
Those statistics assume Gaussian errors; the simulator's are not (Landau energy loss, the
scattering tail). This benchmark asks what a perfect covariance would score, so that the learned
one is measured against what is possible and not only against a Gaussian's ideals:

- ``--windows`` test steps from freshly simulated tracks (a seed the demo never used): the
  state at a plane from 6 to 23 and the truth at the next plane, as the demo's test windows;
- from each step's state the simulator propagates ``--draws`` times to the next plane; the
  draws' mean and covariance are the exact prediction and the exact second moment (a Kalman
  filter's optimal process noise), up to Monte Carlo error;
- the truth judged against them: the statistics of ``calibration_metrics``, on the whole set
  and on disjoint subsets of 3,600 windows (200 tracks' worth: the demo's test set until it
  grew to 18,200 tracks), whose spread shows how far a perfect covariance's numbers scatter on a
  test set of that size;
- each ``--models`` file with ``forward_with_covariance`` predicts the same steps: its
  statistics beside the exact ones, and its predicted sigma over the exact sigma per feature
  and |p| quartile (median), which says where it is too wide or too narrow.

    PYTHONPATH=src python benchmarks/covariance_ceiling.py
        [--models results/demo/residual_markov/model.ts ...] [--windows 14400] [--draws 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.constants import (  # noqa: E402
    ANSWER_FEATURES,
    ANSWER_INDEX,
    CHI2_5DOF_68,
    CHI2_5DOF_95,
)
from tracklstm.data.simulate import simulate_tracks  # noqa: E402
from tracklstm.evaluate.calibration import calibration_metrics  # noqa: E402
from tracklstm.evaluate.gaussian import chi2_of  # noqa: E402
from tracklstm.export.loading import load_model, predict_with_covariance  # noqa: E402
from tracklstm.files import write_json  # noqa: E402
from tracklstm.physics.material import DETECTOR_MATERIAL  # noqa: E402
from tracklstm.physics.solenoid import propagate  # noqa: E402

log = logging.getLogger("covariance_ceiling")

#: The subsets' size (200 tracks' windows): the spread of the exact covariance's statistics is
#: shown on it.
SUBSET_WINDOWS = 3600
#: States per window: the challenge's 7 (a one-state model uses the last).
WINDOW_LENGTH = 7
#: The statistics whose spread over the subsets is reported.
SPREAD_KEYS = ("chi2_ndf_mean", "chi2_ndf_median", "coverage_68", "coverage_95")


def steps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, 7, 6) ending at a plane 6..23, truths (n, 6) at the next plane)."""
    rng = np.random.default_rng(seed)
    tracks = simulate_tracks(n, seed=seed)
    last = rng.integers(WINDOW_LENGTH - 1, tracks.shape[1] - 1, size=n)
    rows = np.arange(n)[:, None]
    windows = tracks[rows, last[:, None] + np.arange(-WINDOW_LENGTH + 1, 1)[None, :]]
    return windows, tracks[np.arange(n), last + 1]


def exact(
    windows: np.ndarray, truths: np.ndarray, draws: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means (n, 6), covariances (n, 5, 5), inside (n, 2)) of ``draws`` simulated steps from
    each last state; ``inside``: the shares of the draws themselves inside the 68.3 % and 95 %
    regions of their own covariance (a perfect covariance's coverage, without test-set noise)."""
    rng = np.random.default_rng(seed + 1)
    means = np.empty((len(windows), 6))
    covs = np.empty((len(windows), len(ANSWER_INDEX), len(ANSWER_INDEX)))
    inside = np.empty((len(windows), 2))
    index = list(ANSWER_INDEX)
    for i, (state, truth) in enumerate(zip(windows[:, -1], truths, strict=True)):
        starts = np.repeat(state[None], draws, axis=0)
        sim = propagate(starts, [truth[2]], material=DETECTOR_MATERIAL, rng=rng)[:, 0]
        means[i] = sim.mean(axis=0)
        covs[i] = np.cov(sim[:, index], rowvar=False)
        chi2, _ = chi2_of(sim[:, index] - means[i, index], np.broadcast_to(covs[i], (draws, 5, 5)))
        inside[i] = np.mean(chi2 < CHI2_5DOF_68), np.mean(chi2 < CHI2_5DOF_95)
        if (i + 1) % 2000 == 0:
            log.info("exact covariances: %d of %d", i + 1, len(windows))
    return means, covs, inside


def _spread(errors: np.ndarray, covs: np.ndarray, p: np.ndarray, splits: int) -> dict[str, Any]:
    """Min and max of ``SPREAD_KEYS`` and of the pull widths over ``splits`` equal subsets."""
    parts = [
        calibration_metrics(e, c, q)
        for e, c, q in zip(
            np.array_split(errors, splits),
            np.array_split(covs, splits),
            np.array_split(p, splits),
            strict=True,
        )
    ]
    out: dict[str, Any] = {"subsets": splits, "windows_each": len(errors) // splits}
    for key in SPREAD_KEYS:
        values = [m[key] for m in parts]
        out[key] = [min(values), max(values)]
    widths = [w[f] for m in parts for w in m["pull_width_by_momentum_quartile"] for f in w]
    out["pull_width_by_quartile"] = [min(widths), max(widths)]
    return out


def _tail_share(windows: np.ndarray, truths: np.ndarray, draws: int, seed: int) -> float:
    """Median over 200 steps of the share of pz's variance that its 1 % largest deviations give."""
    rng = np.random.default_rng(seed + 2)
    shares = []
    for state, truth in zip(windows[:200, -1], truths[:200], strict=True):
        starts = np.repeat(state[None], draws, axis=0)
        pz = propagate(starts, [truth[2]], material=DETECTOR_MATERIAL, rng=rng)[:, 0, 5]
        dev2 = np.sort((pz - pz.mean()) ** 2)
        shares.append(dev2[-max(1, draws // 100) :].sum() / dev2.sum())
    return round(float(np.median(shares)), 3)


def sigma_ratio(model_covs: np.ndarray, exact_covs: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Median predicted sigma / exact sigma per feature, overall and per |p| quartile."""
    ratio = np.sqrt(
        np.diagonal(model_covs, axis1=1, axis2=2) / np.diagonal(exact_covs, axis1=1, axis2=2)
    )
    quartile = np.searchsorted(np.quantile(p, [0.25, 0.5, 0.75]), p)

    def medians(r: np.ndarray) -> dict[str, float]:
        return {f: round(float(np.median(r[:, i])), 3) for i, f in enumerate(ANSWER_FEATURES)}

    return {
        "all": medians(ratio),
        "by_momentum_quartile": [medians(ratio[quartile == q]) for q in range(4)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=Path, nargs="*", default=[ROOT / "results/demo/residual_markov/model.ts"]
    )
    parser.add_argument("--windows", type=int, default=4 * SUBSET_WINDOWS)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/covariance_ceiling.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    windows, truths = steps(args.windows, args.seed)
    means, covs, inside = exact(windows, truths, args.draws, args.seed)
    index = list(ANSWER_INDEX)
    p = np.linalg.norm(windows[:, -1, 3:], axis=1)
    errors = truths[:, index] - means[:, index]
    splits = max(1, args.windows // SUBSET_WINDOWS)
    result: dict[str, Any] = {
        "exact": calibration_metrics(errors, covs, p),
        "exact_on_demo_sized_subsets": _spread(errors, covs, p, splits),
        "exact_draws_inside_own_68_95": [round(float(v), 4) for v in inside.mean(axis=0)],
        "pz_variance_from_largest_1_percent": _tail_share(
            windows, truths, args.draws // 4, args.seed
        ),
    }
    for path in args.models:
        model, _ = load_model(path)
        states, model_covs = predict_with_covariance(model, windows.astype(np.float32))
        model_errors = truths[:, index] - states[:, index]
        result[path.parent.name] = {
            "metrics": calibration_metrics(model_errors, model_covs, p),
            "on_demo_sized_subsets": _spread(model_errors, model_covs, p, splits),
            "sigma_over_exact_sigma": sigma_ratio(model_covs, covs, p),
        }
    record = {
        "benchmark": "covariance_ceiling",
        "windows": args.windows,
        "draws": args.draws,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "result": result,
    }
    write_json(args.out, record)
    log.info("%s", json.dumps(result, indent=1))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
