"""The track-fit stage (evaluate/track_fit.py): the Kalman filter and smoother, checked where the
answer is known, and the stage's files and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_export import make_run

from tracklstm.data.simulate import simulate_tracks
from tracklstm.evaluate import track_fit as kalman_fit
from tracklstm.export.formats import export


def measure(truth: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x, y at every plane smeared by 0.02 cm, and the seed the stage starts from."""
    rng = np.random.default_rng(seed)
    measured = truth[:, :, :2] + rng.normal(0, 0.02, truth[:, :, :2].shape)
    start = truth[:, 0].copy()
    start[:, :2] = measured[:, 0]
    start[:, 3:] *= 1 + rng.normal(0, 0.05, (len(start), 1))
    return measured, start


def two_passes(step: kalman_fit.Step, truth: np.ndarray) -> dict:
    measured, start = measure(truth)
    planes = truth[0, :, 2]
    first, _, _ = kalman_fit.fit(step, measured, planes, start, 0.02)
    fitted, cov, chi2 = kalman_fit.refit(step, measured, planes, first, start, 0.02)
    return kalman_fit.summary(fitted, cov, truth[:, 0], chi2)


def test_the_physics_fit_is_calibrated_and_beats_the_helix() -> None:
    """With the simulator's own field and noise, the fit's chi2/ndf is near 1, its pulls near
    1; the helix's wrong field shows as a worse momentum and a larger chi2."""
    truth = simulate_tracks(200, seed=4)[:, 1:]  # on 80 the core's width ranged 2.2-5.3 %
    field = two_passes(kalman_fit.field_step, truth)
    helix = two_passes(kalman_fit.helix_step, truth)
    assert 0.8 < field["chi2_ndf_mean"] < 1.25, field
    assert all(0.75 < w < 1.3 for w in field["pull_width"].values()), field
    assert field["p_resolution_core"] < 0.05
    assert helix["chi2_ndf_mean"] > field["chi2_ndf_mean"]
    assert helix["p_resolution_core"] > 1.15 * field["p_resolution_core"]


def test_with_gaussian_noise_the_fitted_covariance_is_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scattering without its tail and no energy-loss straggling: the noise the filter assumes
    is the simulator's, so the pulls of every fitted parameter have width 1 (the second pass
    counts the seed's prior once; counting it twice gave 1.11-1.15 in the momenta)."""
    from tracklstm.physics import material

    monkeypatch.setattr(material, "TAIL_WEIGHT", 0.0)
    monkeypatch.setattr(
        material,
        "landau_loss",
        lambda medium, grams, p, rng: material.bethe_mean_loss(medium, grams, p),
    )
    truth = simulate_tracks(600, seed=11)[:, 1:]
    field = two_passes(kalman_fit.field_step, truth)
    assert all(abs(w - 1) < 0.07 for w in field["pull_width"].values()), field
    assert abs(field["chi2_ndf_mean"] - 1) < 0.05, field


def test_the_stage_writes_its_files_and_refuses_other_models(
    windows_h5: Path, tmp_path: Path
) -> None:
    """A one-state model with a covariance head: both files, three propagators; a model
    without a head, or one that reads earlier states: one line, exit 1, no file."""
    run = make_run(tmp_path / "markov", (16, 16), kind="residual", history=0, covariance=True)
    export(run, torchscript=run / "model.ts")
    out = {"json": tmp_path / "fit.json", "plot": tmp_path / "fit.png"}
    args = ["--windows", str(windows_h5), "--out-json", str(out["json"])]
    args += ["--out-plot", str(out["plot"]), "--tracks", "12"]
    assert kalman_fit.main([*args, "--model", str(run / "model.ts")]) == 0
    record = json.loads(out["json"].read_text())
    assert record["tracks"] == 12 and record["ndf"] == 43
    assert set(record["result"]) == {"field map", "helix", "learned"}
    assert record["result"]["field map"]["p_resolution_over_field_map"] == 1.0
    assert out["plot"].stat().st_size > 10_000
    for name, settings in (("plain", {}), ("windowed", {"history": 6, "covariance": True})):
        other = make_run(tmp_path / name, (16, 16), kind="residual", **settings)
        export(other, torchscript=other / "model.ts")
        for f in out.values():
            f.unlink(missing_ok=True)
        assert kalman_fit.main([*args, "--model", str(other / "model.ts")]) == 1
        assert not any(f.exists() for f in out.values())
    with pytest.raises(SystemExit):
        kalman_fit.main([*args, "--model", str(run / "model.ts"), "--tracks", "x"])


def test_the_gaussian_sum_benchmark_reweights_each_step() -> None:
    """benchmarks/gaussian_sum_fit.py: its EM step gives a step whose smoothed noise is 10
    sigma the tail's width and a quiet one the core's; with one component of scale 1 its fit is
    the workflow's second pass exactly."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gaussian_sum_fit as gs

    eye = np.eye(5)[None].repeat(2, 0)
    kinked = np.stack([np.full(5, 10 / np.sqrt(5)), np.full(5, 0.3)])  # chi2 100 and 0.45
    xs, ps, gains = [np.zeros((2, 5)), kinked], [0 * eye, 0 * eye], [0 * eye]
    mixture = (np.array([0.9, 0.1]), np.array([0.5, 5.5]))
    factor = gs.noise_scales(xs, ps, gains, [eye], [eye], mixture)[0]
    assert factor == pytest.approx([5.5, 0.5], rel=2e-3)
    truth = simulate_tracks(30, seed=6)[:, 1:]
    measured, start = measure(truth)
    planes = truth[0, :, 2]
    first, _, _ = kalman_fit.fit(kalman_fit.field_step, measured, planes, start, 0.02)
    want = kalman_fit.refit(kalman_fit.field_step, measured, planes, first, start, 0.02)
    one = (np.ones(1), np.ones(1))
    got = gs.refit_gaussian_sum(kalman_fit.field_step, measured, planes, first, start, 0.02, one)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
