"""The calibration of the covariance head (``train.covariance_calibration``): the spread per
feature and |p|, the whitening transform, the energy-loss term, on errors of known shape."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_covariance import model_with_head, simulated_windows

from tracklstm.evaluate.calibration import covariance_metrics
from tracklstm.models.covariance_head import COV_SCALE_KNOTS, scale_at
from tracklstm.models.residual import build_residual
from tracklstm.physics.delta_rays import MAX_LAYER_LOSS, largest_momentum_loss
from tracklstm.physics.material import COPPER, landau_loss
from tracklstm.train import covariance_calibration as calibration
from tracklstm.train.covariance import fit_covariance
from tracklstm.train.covariance_calibration import (
    TAIL_START,
    calibrate_scale,
    fitted_knots,
    landau_tail,
    loss_variance,
    whitening_transform,
)
from tracklstm.train.data import DeviceWindows
from tracklstm.train.runtime import Dist


@pytest.fixture(scope="module")
def windows() -> tuple[torch.Tensor, torch.Tensor]:
    return simulated_windows()


def test_the_covariance_is_calibrated_on_the_windows_of_its_errors(
    windows: tuple[torch.Tensor, torch.Tensor],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the head is trained its spread is scaled so that the pulls of the windows it
    learned on and of the held-out ones have width 1 in x, y, px, py, at |p| knots where they
    pin the scale down (here with a looser bound than the default) and with one scale for
    every |p| where they do not; pz keeps 1 and the energy-loss term is set (by Landau's tail,
    as the settings ask); errors twice as large ask for twice the scale; weights saved before
    the scale, the mixture or the term existed load with a scale of 1, one component and no
    term."""
    model = model_with_head(windows, history=0, steps=300)
    inputs, targets = windows
    cut, test = 2000, len(inputs)
    val_src = DeviceWindows(inputs[cut:test], targets[cut:test])
    cfg = {"covariance_epochs": 5, "batch_size": 256, "seed": 1}
    cfg["covariance_loss_tail"] = "simulator"  # the term by Landau's tail (the demo's)
    default = calibration.MAX_SCALE_ERROR
    monkeypatch.setattr(calibration, "MAX_SCALE_ERROR", 0.2)
    with caplog.at_level(logging.INFO, logger="tracklstm.train"):
        train_src = DeviceWindows(inputs[:cut], targets[:cut])
        weights = fit_covariance(model, model.state_dict(), train_src, val_src, cfg)
    assert f"covariance calibration on {test} windows (validation and train)" in caplog.text
    assert "Landau's tail to the simulator's cut gives" in caplog.text
    scale, knots = weights["cov_scale"], weights["cov_scale_momentum"]
    assert torch.equal(model.cov_scale, scale) and torch.equal(model.cov_scale_momentum, knots)
    assert scale.shape == (COV_SCALE_KNOTS, 5) and bool((knots.diff() > 0).all())
    assert bool((scale[:, 4] == 1).all()) and not torch.all(scale == 1)
    assert float(weights["cov_loss_variance"]) == float(model.cov_loss_variance) >= 0
    pooled = inputs[:test].numpy(), targets[:test].numpy().astype(float)
    widths = covariance_metrics(model, *pooled)["pull_width"]
    # the root mean square of the pulls is 1 (their standard deviation: nearly)
    assert all(abs(widths[f] - 1) < 0.05 for f in ("x", "y", "px", "py")), widths
    with torch.no_grad():
        pred = model(inputs[cut:test]).double()
    doubled = targets[cut:test].double() + (targets[cut:test].double() - pred)
    _, once = calibrate_scale(model, [(inputs[cut:test], targets[cut:test])])
    monkeypatch.setattr(calibration, "MAX_SCALE_ERROR", default)
    # 5,000 windows do not pin a scale down to the default 3 % at any knot: one scale at every
    # |p|, each feature's over all the windows
    batches = list(val_src.eval_batches(256, Dist()))
    _, uniform = calibrate_scale(model, batches)
    assert torch.equal(uniform, uniform[:1].expand_as(uniform)) and bool((uniform[:, 4] == 1).all())
    assert not torch.all(uniform == 1)
    monkeypatch.setattr(calibration, "MAX_SCALE_ERROR", 0.2)
    _, twice = calibrate_scale(model, [(inputs[cut:test], doubled)])
    torch.testing.assert_close(twice[:, :4], 2 * once[:, :4], rtol=2e-3, atol=0)
    assert bool((once[:, 4] == 1).all()) and bool((twice[:, 4] == 1).all())
    # the mixture of the errors' shape, fitted on the held-out windows, is stored too
    mix_w, mix_s = weights["cov_mixture_weight"], weights["cov_mixture_scale"]
    assert torch.equal(model.cov_mixture_weight, mix_w) and float(mix_w.sum()) == pytest.approx(1)
    assert "chi2 scale mixture, 1 component(s)" in caplog.text and bool((mix_s > 0).all())
    fresh_keys = ("cov_scale", "cov_mixture", "cov_transform", "cov_loss_variance")
    old = {k: v for k, v in weights.items() if not k.startswith(fresh_keys)}
    fresh = build_residual({"hidden_sizes": [32], "history": 0, "covariance": True})
    fresh.load_state_dict(old)
    assert torch.equal(fresh.cov_scale, torch.ones(COV_SCALE_KNOTS, 5, dtype=torch.float64))
    assert fresh.cov_mixture_weight.tolist() == [1, 0, 0]
    assert fresh.cov_mixture_scale.tolist() == [1, 1, 1]
    assert float(fresh.cov_loss_variance) == 0
    assert torch.equal(fresh.cov_transform, torch.eye(5, dtype=torch.float64))
    # saved when the scale was one per feature: that scale at every |p|
    fresh.load_state_dict({**old, "cov_scale": torch.tensor([1.1, 1.2, 1.3, 1.4, 1.0]).double()})
    assert torch.equal(fresh.cov_scale[5], torch.tensor([1.1, 1.2, 1.3, 1.4, 1.0]).double())
    momentum = torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64)
    assert torch.allclose(fresh.covariance_scale(momentum)[:, 3], torch.full((3,), 1.4).double())


def test_the_energy_loss_term_is_the_momentum_spread_along_its_direction(
    windows: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Errors drawn from the head's covariance plus a spread s along the momentum's direction
    u: ``loss_variance`` finds s^2 (the second moment along u less the head's), and the model
    then predicts C + s^2 u u^T; errors with nothing beyond the head's give a term of 0."""
    model = model_with_head(windows, history=0, steps=300)
    inputs = windows[0][:6000]
    with torch.no_grad():
        pred, cov = model.forward_with_covariance(inputs)
    gen = torch.Generator().manual_seed(7)
    core = torch.linalg.cholesky(cov) @ torch.randn(len(inputs), 5, 1, generator=gen).double()
    momentum = inputs[:, -1, 3:].double()
    u = torch.cat(
        [torch.zeros(len(inputs), 2).double(), momentum / momentum.norm(dim=1, keepdim=True)], 1
    )
    along = torch.einsum("bi,bij,bj->b", u, cov, u).sqrt().median()
    spread = 3 * float(along)
    delta = spread * torch.randn(len(inputs), 1, generator=gen).double()
    for extra, want in ((delta * u, spread**2), (torch.zeros_like(u), 0.0)):
        truth = pred.double().clone()
        truth[:, [0, 1, 3, 4, 5]] += core.squeeze(2) + extra
        variance = loss_variance(model, [(inputs, truth.float())])
        assert variance == pytest.approx(want, abs=0.1 * spread**2)
    with torch.no_grad():
        model.cov_loss_variance.fill_(spread**2)
        _, with_term = model.forward_with_covariance(inputs)
    term = spread**2 * u.unsqueeze(2) * u.unsqueeze(1)
    torch.testing.assert_close(with_term - cov, term, rtol=1e-9, atol=1e-12 * spread**2)


def test_the_covariance_scale_follows_momentum(
    windows: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors that are twice as large above the median |p| as the head says, and as large
    below: the scale is calibrated at knots in |p|, about 1 at the low knots and 2 at the high
    ones, and the pulls of the lowest and the highest quarter get width 1 again; between the
    knots it is interpolated linearly, constant beyond them."""
    monkeypatch.setattr(calibration, "MAX_SCALE_ERROR", 0.2)
    model = model_with_head(windows, history=0, steps=300)
    inputs = windows[0][:6000]
    momentum = torch.linalg.vector_norm(inputs[:, -1, 3:6].double(), dim=1)
    _, body_cov = model.forward_with_covariance(inputs)
    with torch.no_grad():
        pred = model(inputs).double()
        # errors of the spread the head says (pulls of width 1), times 2 above the median |p|
        white = torch.randn(len(inputs), 5, generator=torch.Generator().manual_seed(4)).double()
        sigma = torch.sqrt(torch.diagonal(body_cov, dim1=1, dim2=2))
        factor = torch.where(momentum > momentum.median(), 2.0, 1.0).unsqueeze(1)
        errors = white * sigma * factor
    bent = pred.clone()
    bent[:, [0, 1, 3, 4, 5]] += errors
    knots, scale = calibrate_scale(model, [(inputs, bent.float())])
    assert bool((knots.diff() > 0).all()) and scale.shape == (COV_SCALE_KNOTS, 5)
    ratio = scale[-1, :4] / scale[0, :4]
    assert bool(((ratio > 1.6) & (ratio < 2.4)).all()), scale
    with torch.no_grad():
        model.cov_scale_momentum.copy_(knots)
        model.cov_scale.copy_(scale)
        between = model.covariance_scale((knots[:2].sum() / 2).reshape(1))[0]
        beyond = model.covariance_scale(torch.tensor([0.0, 100.0], dtype=torch.float64))
    torch.testing.assert_close(between, scale[:2].mean(0))
    torch.testing.assert_close(beyond, scale[[0, -1]])
    result = covariance_metrics(model, inputs.numpy(), bent.numpy())
    quartiles = result["pull_width_by_momentum_quartile"]
    low, high = quartiles[0], quartiles[3]
    assert all(abs(low[f] - 1) < 0.12 and abs(high[f] - 1) < 0.12 for f in ("x", "y", "px")), result


def test_the_whitening_transform_sets_the_correlations(
    windows: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Errors e = L A z (z unit Gaussians) whose spreads and correlations differ from the
    head's L: the transform T comes out as A, and under L T the chi2/ndf is 1 and the pulls of
    x and px are as correlated as the covariance says."""
    model = model_with_head(windows, history=0, steps=300)
    inputs = windows[0][:8000]
    with torch.no_grad():
        pred, cov = model.forward_with_covariance(inputs)
    mix = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.2, 0.0, 0.0, 0.0],
            [0.6, 0.0, 0.5, 0.0, 0.0],
            [0.0, -0.3, 0.0, 0.8, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )
    gen = torch.Generator().manual_seed(11)
    white = torch.randn(len(inputs), 5, 1, generator=gen).double()
    truth = pred.double().clone()
    truth[:, [0, 1, 3, 4, 5]] += (torch.linalg.cholesky(cov) @ mix @ white).squeeze(2)
    transform = whitening_transform(model, [(inputs, truth.float())])
    torch.testing.assert_close(transform, mix, rtol=0, atol=0.05)
    before = covariance_metrics(model, inputs.numpy(), truth.numpy())
    with torch.no_grad():
        model.cov_transform.copy_(transform)
    after = covariance_metrics(model, inputs.numpy(), truth.numpy())
    assert abs(after["chi2_ndf_mean"] - 1) < 0.03 < abs(before["chi2_ndf_mean"] - 1)
    assert all(abs(w - 1) < 0.03 for w in after["pull_width"].values()), after


def _second_moment(error: np.ndarray, momentum: np.ndarray, tail: str) -> float:
    """What ``loss_variance`` takes as the second moment along u: the errors down to a loss of
    ``TAIL_START`` as they are, the losses beyond by Landau's tail."""
    beyond = error < -TAIL_START
    return float((error[~beyond] ** 2).mean()) + landau_tail(int(beyond.sum()), momentum, tail)


def test_landaus_tail_gives_the_simulators_energy_loss_variance() -> None:
    """Momentum losses in one FDC plane drawn by the simulator (``physics.material``): over 4
    million, Landau's tail to the simulator's cut gives their second moment about the median
    (to 10 %: the 4 million's own is uncertain by 5 %; without the losses piled at the cut it
    would be half); over sets of the demo's 41,400 windows it scatters by less than a third of
    what their own second moment does."""
    rng = np.random.default_rng(3)
    n, size = 4_000_000, 41_400
    momentum = rng.uniform(1.0, 3.0, n)
    beta = momentum / np.hypot(momentum, 0.13957)
    loss = landau_loss(COPPER, np.full(n, 0.016 * 1.05), momentum, rng) / beta
    error = -(loss - np.median(loss))  # the prediction falls short by the loss's excess
    assert loss.max() == pytest.approx(MAX_LAYER_LOSS / beta[loss.argmax()], rel=1e-3)
    truth = float((error**2).mean())
    whole = _second_moment(error, momentum, "simulator")
    assert whole == pytest.approx(truth, rel=0.1)
    part = [slice(k * size, (k + 1) * size) for k in range(n // size)]
    own = np.array([(error[i] ** 2).mean() for i in part]) / truth
    tail = np.array([_second_moment(error[i], momentum[i], "simulator") for i in part]) / truth
    assert tail.std() < own.std() / 3
    assert tail.mean() == pytest.approx(whole / truth, rel=0.05)


def test_landaus_tail_to_t_max() -> None:
    """Losses whose density is A / t^2 from ``TAIL_START`` to T_max (nothing beyond), drawn by
    the inverse of their distribution: ``t_max`` gives their second moment, A (T_max - t0),
    and ``simulator`` (which piles what lies beyond 40 MeV at 40) does not."""
    rng = np.random.default_rng(4)
    n, rate, t0 = 2_000_000, 1.1e-6, TAIL_START  # A in GeV/c
    momentum = rng.uniform(1.0, 3.0, n)
    cut = largest_momentum_loss(momentum, capped=False)
    beyond = rng.uniform(size=n) < rate * (1 / t0 - 1 / cut)
    inverse = 1 / t0 - rng.uniform(size=n) * (1 / t0 - 1 / cut)
    error = np.where(beyond, -1 / inverse, rng.normal(0.0, 2e-5, n))
    exact = float(rate * (cut - t0).mean()) + 4e-10
    assert float((error**2).mean()) == pytest.approx(exact, rel=0.2)  # the lottery itself
    assert _second_moment(error, momentum, "t_max") == pytest.approx(exact, rel=0.05)
    assert _second_moment(error, momentum, "simulator") < 0.6 * exact
    with pytest.raises(ValueError, match="covariance_loss_tail"):
        landau_tail(1, momentum, "sample")


def test_the_knots_give_every_bin_width_one_under_the_interpolated_scale() -> None:
    """A spread that peaks in |p| (as the head's misses do, at 1.5-2 GeV/c): each bin's own
    sqrt(mean) at its median |p|, interpolated, sags below the peak and leaves the middle bins'
    pulls wider than 1; ``fitted_knots`` gives every bin width 1 to 1e-5."""
    gen = torch.Generator().manual_seed(5)
    n = 200_000
    momentum = 0.6 + 3 * torch.rand(n, generator=gen, dtype=torch.float64)
    spread = 1.1 + 0.2 * torch.exp(-(((momentum - 1.7) / 0.5) ** 2))
    ratio = (spread.unsqueeze(1) * torch.randn(n, 5, generator=gen, dtype=torch.float64)) ** 2
    order = torch.argsort(momentum)
    parts = [order[i] for i in torch.tensor_split(torch.arange(n), 4)]
    knots = torch.stack([momentum[i].median() for i in parts])
    own = torch.stack([ratio[i].mean(0).sqrt() for i in parts])

    def widths(table: torch.Tensor) -> torch.Tensor:
        pulls2 = ratio / scale_at(knots, table, momentum) ** 2
        return torch.stack([pulls2[i].mean(0).sqrt() for i in parts])

    assert float(widths(own)[1:3].max()) > 1.02
    fitted = fitted_knots(knots, own, ratio, momentum, parts)
    torch.testing.assert_close(
        widths(fitted), torch.ones(4, 5, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert float(fitted[1].min()) > float(own[1].max())  # the peak's knot rises


def test_the_fresh_tracks_benchmark_judges_in_parts_as_at_once(
    windows: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/covariance_fresh.py judges a covariance on fresh tracks a part at a time:
    its widths, quartiles, chi2 and coverage are those of all the windows judged at once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import covariance_fresh as cf

    from tracklstm.data.simulate import as_written, simulate_tracks
    from tracklstm.data.windows import make_windows
    from tracklstm.evaluate.calibration import calibration_metrics, errors_and_covariances

    model = model_with_head(windows, history=0, steps=100)
    monkeypatch.setattr(cf, "PART", 70)
    judged = cf.judge_fresh(model, 200, 7, 24)
    parted = cf.judged_metrics(judged.pop("whole"))
    drawn = [simulate_tracks(n, seed=cf.SEED, shard=i) for i, n in enumerate((70, 70, 60))]
    inputs, targets, _, _ = make_windows(as_written(np.concatenate(drawn)).astype(np.float32), 7)
    at_once = calibration_metrics(*errors_and_covariances(model, inputs, targets))
    assert parted["windows"] == at_once["windows"] == len(inputs) > 3000
    for key in ("pull_width", "chi2_ndf_mean", "coverage_95", "momentum_quartile_edges"):
        assert parted[key] == at_once[key], key
    assert parted["pull_width_by_momentum_quartile"] == at_once["pull_width_by_momentum_quartile"]
    assert judged["tracks"] == 200 and judged["steps_at_the_cap"] >= 0
