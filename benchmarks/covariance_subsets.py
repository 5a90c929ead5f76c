"""How large a test set a covariance's verdict needs: its statistics on disjoint sets of tracks.

The errors' heaviest tail is energy loss's: about one plane step in 35,000 loses 40 MeV/c (the
simulator's cap), a thousand times the median loss, with a chi2 of thousands. The mean chi2/ndf
and pz's pull width of one and the same covariance then depend on how many such steps a test
set happens to hold. This benchmark cuts a windows file's test split into disjoint sets of
``--tracks`` test tracks each (every window of a track in the same set) and judges the model's
covariance on each (``tracklstm.evaluate.calibration.calibration_metrics``):

- per statistic (mean and median chi2/ndf, pz's and x's pull width, the 68.3 % and 95 %
  coverage): its value on the whole split, and its minimum, 5th percentile, median, 95th
  percentile and maximum over the sets;
- the share of sets whose mean chi2/ndf lies within 1.00 +- 0.05, and the number of windows whose
  momentum error along its direction exceeds 39 MeV/c (the cap's steps) in the whole split.

    PYTHONPATH=src python benchmarks/covariance_subsets.py \\
        [--model results/demo/residual_markov/model.ts] [--windows results/demo/windows.h5] \\
        [--tracks 200]

Results: ``benchmarks/results/covariance_subsets.json`` (one entry per dataset, with the machine).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import add_model_and_windows, record_per_dataset  # noqa: E402

from tracklstm.evaluate.calibration import calibration_metrics, errors_and_covariances  # noqa: E402
from tracklstm.export.loading import load_model  # noqa: E402

log = logging.getLogger("covariance_subsets")
RESULTS = ROOT / "benchmarks" / "results" / "covariance_subsets.json"
#: A step that lost this much momentum along its direction (GeV/c): the simulator's cap, 40 MeV.
CAP_STEP = 0.039


def steps_at_the_cap(inputs: np.ndarray, errors: np.ndarray) -> int:
    """How many of the windows ``inputs`` (N, W, 6), whose errors are ``errors`` (N, 5), have
    a momentum error along the last state's direction beyond ``CAP_STEP``."""
    direction = inputs[:, -1, 3:].astype(np.float64)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return int((np.abs((errors[:, 2:] * direction).sum(1)) > CAP_STEP).sum())


def statistics(errors: np.ndarray, covs: np.ndarray, momentum: np.ndarray) -> dict[str, float]:
    """The judged statistics of one set of windows."""
    result = calibration_metrics(errors, covs, momentum)
    return {
        "chi2_ndf_mean": result["chi2_ndf_mean"],
        "chi2_ndf_median": result["chi2_ndf_median"],
        "pull_width_pz": result["pull_width"]["pz"],
        "pull_width_x": result["pull_width"]["x"],
        "coverage_68": result["coverage_68"],
        "coverage_95": result["coverage_95"],
    }


def over_sets(
    errors: np.ndarray,
    covs: np.ndarray,
    momentum: np.ndarray,
    track: np.ndarray,
    tracks_per_set: int,
) -> dict[str, Any]:
    """The statistics of the windows (``errors`` (N, 5), ``covs`` (N, 5, 5), ``momentum`` (N,),
    of ``track`` (N,)) on the whole and their spread over disjoint sets of ``tracks_per_set``
    tracks (a fixed random order of the tracks; a last, smaller set is left out)."""
    ids = np.unique(track)
    np.random.default_rng(0).shuffle(ids)
    sets = [ids[i : i + tracks_per_set] for i in range(0, len(ids), tracks_per_set)]
    sets = [s for s in sets if len(s) == tracks_per_set]
    per_set = []
    for chosen in sets:
        keep = np.isin(track, chosen)
        per_set.append(statistics(errors[keep], covs[keep], momentum[keep]))
    spread: dict[str, Any] = {}
    for key in per_set[0] if per_set else []:
        values = np.array([row[key] for row in per_set])
        low, p5, median, p95, high = np.percentile(values, [0, 5, 50, 95, 100])
        spread[key] = {
            "min": round(float(low), 4),
            "p5": round(float(p5), 4),
            "median": round(float(median), 4),
            "p95": round(float(p95), 4),
            "max": round(float(high), 4),
        }
    means = np.array([row["chi2_ndf_mean"] for row in per_set])
    return {
        "test_windows": len(errors),
        "test_tracks": len(ids),
        "whole_split": statistics(errors, covs, momentum),
        "sets": len(sets),
        "tracks_per_set": tracks_per_set,
        "over_the_sets": spread,
        "share_of_sets_with_chi2_ndf_within_0.05_of_1": (
            round(float(np.mean(np.abs(means - 1) < 0.05)), 4) if len(means) else None
        ),
    }


def measure(model_path: Path, windows: Path, tracks_per_set: int) -> dict[str, Any]:
    model, _ = load_model(model_path)
    with h5py.File(windows, "r") as h5:
        inputs, targets = h5["test/inputs"][...], h5["test/targets"][...]
        track = h5["test/track"][...]
    errors, covs, momentum = errors_and_covariances(model, inputs, targets)
    result = over_sets(errors, covs, momentum, track, tracks_per_set)
    log.info("%d test windows, %d sets of %d tracks", len(errors), result["sets"], tracks_per_set)
    return {
        "model": str(model_path),
        "windows": str(windows),
        "steps_at_the_cap": steps_at_the_cap(inputs, errors),
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_windows(parser)
    parser.add_argument("--tracks", type=int, default=200, help="test tracks per set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    result = measure(args.model, args.windows, args.tracks)
    record_per_dataset(args.out, args.windows, result, started)
    log.info("%s", result["over_the_sets"].get("chi2_ndf_mean"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
