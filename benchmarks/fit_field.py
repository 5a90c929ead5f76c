"""Refit the solenoid's field profile (``physics.solenoid.FIELD_BZ_KNOTS``) on real tracks.

The fit behind the knots in ``tracklstm.physics.solenoid`` (its "Calibration" notes): Gauss-Newton
least squares over the knot values, starting from the current ones, with three kinds of residual:

- the real track ``mlchallenge2_track3.csv``: each measured state propagated without material to
  the next plane (weights 0.05 mm in x, y and 0.35 MeV/c in px, py, the scattering's size,
  divided by ``--track-weight``: 3 by default, since a 2 cm step cannot scatter a track by 50
  microns; with 1 the flights pull the field 6 % up and the real track's field-only score
  worsens from 0.13 to 0.24, with 10 the flights' median chi2/ndf rises to 1.2-1.4);
- each real flight of ``--tracks`` (origin to plane 24): the real state minus the field-only
  propagation shifted by the material's mean effect, whitened by the simulator's covariance
  there (``--draws`` propagations with material, from the current field);
- a smoothness penalty on the second differences of the knots (0.05 T).

    python benchmarks/fit_field.py [--tracks ...] [--draws 600] [--out fit_field.json]

It writes the fitted knots and the objective before and after; paste the knots into
``solenoid.FIELD_BZ_KNOTS`` and rerun ``benchmarks/sim_vs_real.py`` to judge them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tracklstm.evaluate import sim_vs_real  # noqa: E402
from tracklstm.evaluate.real_track import load_real_track  # noqa: E402
from tracklstm.files import write_json  # noqa: E402
from tracklstm.physics import solenoid  # noqa: E402

log = logging.getLogger("fit_field")
IDX = sim_vs_real.INDEX


def residuals_factory(
    origins: np.ndarray, real24: np.ndarray, draws: int, seed: int, track_weight: float = 3.0
) -> Callable[[np.ndarray], np.ndarray]:
    """The residual function of the knots (see the module notes)."""
    rng = np.random.default_rng(seed)
    z24 = float(real24[0, 2])
    base = solenoid.propagate(origins, [z24])[:, 0]
    whiten, shift = [], []
    for i, origin in enumerate(origins):
        sim = sim_vs_real.predicted(origin, z24, draws, rng)[:, IDX]
        whiten.append(np.linalg.cholesky(np.linalg.inv(np.cov(sim, rowvar=False))).T)
        shift.append(sim.mean(axis=0) - base[i, IDX])
    track = load_real_track()
    scale = np.array([0.005, 0.005, 0.35e-3, 0.35e-3]) / track_weight

    def residuals(knots: np.ndarray) -> np.ndarray:
        field = dataclasses.replace(solenoid.GLUEX_FIELD, bz_knots=tuple(knots))
        det = solenoid.propagate(origins, [z24], field=field)[:, 0]
        flights = [w @ (real24[i, IDX] - det[i, IDX] - shift[i]) for i, w in enumerate(whiten)]
        steps = [
            track[i + 1]
            - solenoid.propagate(track[i : i + 1], [track[i + 1, 2]], field=field)[0, 0]
            for i in range(1, len(track) - 1)
        ]
        steps_w = np.array(steps)[:, [0, 1, 3, 4]] / scale
        return np.concatenate([np.ravel(flights), steps_w.ravel(), np.diff(knots, 2) / 0.05])

    return residuals


def fit(
    residuals: Callable[[np.ndarray], np.ndarray], start: np.ndarray, iterations: int = 8
) -> np.ndarray:
    knots = start.astype(np.float64)
    for _ in range(iterations):
        r0 = residuals(knots)
        jac = np.stack(
            [(residuals(knots + 1e-4 * e) - r0) / 1e-4 for e in np.eye(len(knots))], axis=1
        )
        knots = knots + np.linalg.lstsq(jac, -r0, rcond=None)[0]
    return knots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=Path, default=sim_vs_real.REAL_PAIRS_FILE)
    parser.add_argument("--draws", type=int, default=600)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--track-weight", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fit_field.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    origins, real24 = sim_vs_real.read_pairs(args.tracks)
    residuals = residuals_factory(origins, real24, args.draws, args.seed, args.track_weight)
    start = np.array(solenoid.FIELD_BZ_KNOTS)
    knots = fit(residuals, start)
    before, after = (float(np.sum(residuals(k) ** 2)) for k in (start, knots))
    record = {
        "z_knots": list(solenoid.FIELD_Z_KNOTS),
        "bz_knots_before": [round(float(v), 3) for v in start],
        "bz_knots_fitted": [round(float(v), 3) for v in knots],
        "objective_before": round(before, 1),
        "objective_after": round(after, 1),
    }
    write_json(args.out, record)
    log.info("%s", json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
