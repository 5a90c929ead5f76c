"""benchmarks/kalman_fit.py: the Kalman filter and smoother, checked where the answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tracklstm.data.simulate import simulate_tracks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kalman_fit


def test_the_physics_fit_is_calibrated_and_beats_the_helix() -> None:
    """With the simulator's own field and noise, the fit's chi2/ndf is near 1, its x, y pulls
    near 1; the helix's wrong field shows as a worse momentum and a larger chi2."""
    truth = simulate_tracks(80, seed=4)[:, 1:]
    rng = np.random.default_rng(0)
    measured = truth[:, :, :2] + rng.normal(0, 0.02, truth[:, :, :2].shape)
    seed = truth[:, 0].copy()
    seed[:, :2] = measured[:, 0]
    seed[:, 3:] *= 1 + rng.normal(0, 0.05, (len(seed), 1))
    results = {}
    for name, step in (("field", kalman_fit.field_step), ("helix", kalman_fit.helix_step)):
        first, _, _ = kalman_fit.fit(step, measured, truth[0, :, 2], seed, 0.02)
        fitted, cov, chi2 = kalman_fit.fit(step, measured, truth[0, :, 2], first, 0.02)
        results[name] = kalman_fit.summary(fitted, cov, truth[:, 0], chi2)
    field, helix = results["field"], results["helix"]
    assert 0.8 < field["chi2_ndf_mean"] < 1.25, field
    assert all(0.75 < field["pull_width"][f] < 1.35 for f in ("x", "y")), field
    assert field["p_resolution_relative"] < 0.06
    assert helix["chi2_ndf_mean"] > field["chi2_ndf_mean"]
    assert helix["p_resolution_relative"] > field["p_resolution_relative"]
