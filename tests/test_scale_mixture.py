"""The scale mixture of a predicted covariance that describes its errors' tails:
``models.scale_mixture`` (the fit and its regions), its coverage in ``evaluate.calibration``
and the summary page, and ``benchmarks/covariance_mixture.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tracklstm.constants import CHI2_5DOF_68, CHI2_5DOF_95
from tracklstm.evaluate.calibration import MIXTURE_LEVELS, calibration_metrics
from tracklstm.models.scale_mixture import (
    fit_components,
    fit_scale_mixture,
    from_buffers,
    mixture_cdf,
    mixture_quantile,
    padded,
)

#: The mixture the tests draw from: 90 % of the windows at 0.5 C, 10 % at 4 C (its second
#: moment, 0.85 C, is what a covariance calibrated to pull widths of 1 would be near).
WEIGHTS, SCALES = np.array([0.9, 0.1]), np.array([0.5, 4.0])


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 5-dim errors of the mixture under C = identity, and their chi2."""
    rng = np.random.default_rng(seed)
    scale = np.where(rng.random(n) < WEIGHTS[0], SCALES[0], SCALES[1])
    errors = np.sqrt(scale)[:, None] * rng.normal(size=(n, 5))
    return errors, (errors * errors).sum(axis=1)


def test_em_fits_the_mixture_back_and_the_information_criterion_chooses_two() -> None:
    """chi2 drawn from the mixture: the chosen fit has its two components, whose regions hold
    68.3, 95 and 99 % of new draws; one Gaussian (the same second moment) holds far more than
    68.3 % in its 68.3 % region and too little in its 99 % one."""
    _, chi2 = draw(40_000, seed=8)
    w, s = fit_scale_mixture(chi2)
    assert w == pytest.approx(WEIGHTS, abs=0.02) and s == pytest.approx(SCALES, rel=0.06)
    _, fresh = draw(40_000, seed=9)
    for level in MIXTURE_LEVELS.values():
        assert np.mean(mixture_cdf(fresh, w, s) < level) == pytest.approx(level, abs=0.01)
    one_w, one_s, _ = fit_components(chi2, 1)
    assert one_s == pytest.approx([(WEIGHTS * SCALES).sum()], rel=0.03)
    one = mixture_cdf(fresh, one_w, one_s)
    assert np.mean(one < 0.683) > 0.75 and np.mean(one < 0.99) < 0.985


def test_gaussian_errors_and_few_windows_keep_one_component() -> None:
    """A true chi2(5) is one component of scale 1; fewer windows than 200 per free parameter
    of two components (600) keep one, whatever their shape."""
    chi2 = (np.random.default_rng(1).normal(size=(30_000, 5)) ** 2).sum(axis=1)
    w, s = fit_scale_mixture(chi2)
    assert len(w) == 1 and s[0] == pytest.approx(1.0, rel=0.02)
    _, few = draw(500, seed=2)
    assert len(fit_scale_mixture(few)[0]) == 1
    assert len(fit_scale_mixture(draw(5000, seed=2)[1], max_components=1)[0]) == 1
    assert fit_scale_mixture(np.array([np.nan]))[0].tolist() == [1.0]


def test_the_quantile_inverts_the_distribution() -> None:
    """One component of scale 1 has chi2(5)'s quantiles; a mixture's quantile has its content."""
    one = np.ones(1)
    assert mixture_quantile(0.6827, one, one) == pytest.approx(CHI2_5DOF_68, rel=1e-4)
    assert mixture_quantile(0.95, one, one) == pytest.approx(CHI2_5DOF_95, rel=1e-4)
    for q in (0.1, 0.683, 0.95, 0.999):
        x = mixture_quantile(q, WEIGHTS, SCALES)
        assert float(mixture_cdf(np.array([x]), WEIGHTS, SCALES)[0]) == pytest.approx(q, abs=1e-6)


def test_the_model_buffers_and_the_metadata_form() -> None:
    """The buffers are padded to three components with weight 0; the metadata keeps the rest."""
    weight, scale = padded(WEIGHTS, SCALES)
    assert weight.tolist() == [0.9, 0.1, 0.0] and scale.tolist() == [0.5, 4.0, 1.0]
    assert from_buffers(weight, scale) == {"weights": [0.9, 0.1], "scales": [0.5, 4.0]}


def test_the_evaluation_judges_the_mixture_beside_the_gaussian() -> None:
    """``calibration_metrics`` with the mixture: its regions hold their contents, the single
    Gaussian's do not; the summary page shows both."""
    from tracklstm.evaluate.report import _covariance

    errors, _ = draw(20_000, seed=5)
    covs = np.broadcast_to(np.eye(5), (len(errors), 5, 5))
    momentum = np.random.default_rng(6).uniform(0.5, 3.0, len(errors))
    mixture = {"weights": WEIGHTS.tolist(), "scales": SCALES.tolist()}
    cov = calibration_metrics(errors, covs, momentum, mixture)
    judged = cov["mixture"]
    assert judged["weights"] == [0.9, 0.1] and judged["scales"] == [0.5, 4.0]
    for name, level in MIXTURE_LEVELS.items():
        assert abs(judged[f"coverage_{name}"] - level) < 0.015, judged
    assert cov["coverage_68"] > 0.75  # C itself: its 68.3 % region is too wide for the core
    html = "".join(_covariance({"covariance": cov}))
    assert "Gaussian sum (0.9 at 0.5 C, 0.1 at 4 C)" in html
    assert f"<td>{judged['coverage_68']:.4g}</td>" in html
    assert "mixture" not in calibration_metrics(errors, covs, momentum)


def test_the_benchmark_judges_each_number_of_components() -> None:
    """benchmarks/covariance_mixture.py's judgement: the fitted two components' regions hold
    68.3, 95 and 99 %; one Gaussian of the same second moment does not."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import covariance_mixture as cm

    _, chi2 = draw(40_000, seed=8)
    w, s, _ = fit_components(chi2, 2)
    coverage = cm.judge(chi2, w, s)["coverage"]
    assert all(abs(coverage[str(q)] - q) < 0.01 for q in cm.LEVELS), coverage
    one = cm.judge(chi2, *fit_components(chi2, 1)[:2])["coverage"]
    assert one["0.683"] > 0.75, one


def test_the_subsets_benchmark_shows_how_one_rare_error_moves_a_small_set() -> None:
    """benchmarks/covariance_subsets.py: Gaussian errors of exactly the predicted covariance
    give every set of 200 tracks a mean chi2/ndf near 1; one error of 300 sigma in one track
    moves its set's mean by 5 (90,000 over 5 times 3,600 windows) and no other set's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import covariance_subsets as cs

    rng = np.random.default_rng(5)
    n, per_track = 36_000, 18
    covs = np.broadcast_to(np.diag([1.0, 2.0, 0.5, 0.5, 3.0]), (n, 5, 5)).copy()
    errors = rng.standard_normal((n, 5)) * np.sqrt([1.0, 2.0, 0.5, 0.5, 3.0])
    track = np.repeat(np.arange(n // per_track), per_track)
    momentum = rng.uniform(0.5, 4.0, n)
    calm = cs.over_sets(errors, covs, momentum, track, 200)
    assert calm["sets"] == 10 and calm["test_tracks"] == 2000
    assert calm["over_the_sets"]["chi2_ndf_mean"]["min"] > 0.93
    assert calm["over_the_sets"]["chi2_ndf_mean"]["max"] < 1.07
    errors[7, 4] = 300 * np.sqrt(3.0)  # one hard collision
    rare = cs.over_sets(errors, covs, momentum, track, 200)
    assert rare["over_the_sets"]["chi2_ndf_mean"]["max"] > 5.5
    medians = rare["over_the_sets"]["chi2_ndf_median"], calm["over_the_sets"]["chi2_ndf_median"]
    assert abs(medians[0]["max"] - medians[1]["max"]) < 0.01  # the median does not see it
    share = "share_of_sets_with_chi2_ndf_within_0.05_of_1"
    assert rare[share] == pytest.approx(calm[share] - 0.1)  # one set of ten left the band


def test_the_setting_allows_what_the_model_holds() -> None:
    """training.covariance_components: at most the components the model's buffers hold."""
    from tracklstm.models.scale_mixture import MAX_COMPONENTS
    from tracklstm.settings import defaults, schema

    spec = schema()["properties"]["training"]["properties"]["covariance_components"]
    assert spec["maximum"] == MAX_COMPONENTS == defaults("training")["covariance_components"]


def test_a_very_large_set_is_fitted_on_a_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    """More windows than MAX_FIT_WINDOWS: the fit uses a fixed random subset, and finds the
    same mixture."""
    from tracklstm.models import scale_mixture

    monkeypatch.setattr(scale_mixture, "MAX_FIT_WINDOWS", 8000)
    _, chi2 = draw(40_000, seed=8)
    w, s = fit_scale_mixture(chi2)
    assert w == pytest.approx(WEIGHTS, abs=0.03) and s == pytest.approx(SCALES, rel=0.12)
    assert np.array_equal(fit_scale_mixture(chi2)[1], s)  # the same subset each time
