"""train/jacobian.py: the Jacobian term of the loss is the model's Jacobian against the field
map's, its windows are drawn reproducibly, and training with it teaches the field map's J."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tracks_csv

from tracklstm.data.simulate import simulate_tracks
from tracklstm.data.windows import make_windows
from tracklstm.evaluate.jacobian import model_jacobian
from tracklstm.models.build import build_model
from tracklstm.models.residual import build_residual
from tracklstm.physics.transport import field_jacobian, relative_difference
from tracklstm.train.data import DeviceWindows
from tracklstm.train.errors import TrainingInputError
from tracklstm.train.fit import train
from tracklstm.train.jacobian import JACOBIAN_BATCH, build_term
from tracklstm.train.runtime import Dist


@pytest.fixture(scope="module")
def windows() -> tuple[torch.Tensor, torch.Tensor]:
    tracks = simulate_tracks(120, seed=4)
    inputs, targets, _, _ = make_windows(tracks.astype(np.float32), 7)
    order = np.random.default_rng(0).permutation(len(inputs))
    return torch.from_numpy(inputs[order]), torch.from_numpy(targets[order])


def term_settings(weight: float = 100.0, cap: int = 100000) -> dict:
    return {"jacobian_weight": weight, "jacobian_windows": cap, "seed": 0}


@pytest.mark.parametrize("history", [0, 3])
def test_the_term_measures_the_models_jacobian_against_the_field_maps(
    windows: tuple[torch.Tensor, torch.Tensor], history: int
) -> None:
    """The forward-mode Jacobian of the body along the stored input tangents, plus the prior's,
    is the model's Jacobian by autograd: the term's per-window difference from the field map is
    the evaluation's ``relative_difference``, for a one-state and a windowed model."""
    x, y = windows[0][:300], windows[1][:300]
    torch.manual_seed(history)
    model = build_residual({"hidden_sizes": [16, 16], "history": history})
    model.fit_statistics(x, y)
    term = build_term(model, DeviceWindows(x, y), term_settings())
    assert term is not None and term.n == 300  # fewer windows than the cap: all, in order
    want = relative_difference(
        model_jacobian(model, x.numpy()),
        field_jacobian(x[:, -1].double().numpy(), y[:, 2].double().numpy()),
    )
    got = term.relative(model.body).numpy()
    assert np.median(want) > 0.05  # an untrained correction: far from the field map
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_no_weight_no_term(windows: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = build_residual({"hidden_sizes": [8], "history": 0})
    model.fit_statistics(*windows)
    assert build_term(model, DeviceWindows(*windows), term_settings(weight=0.0)) is None


def test_each_step_takes_the_same_windows_on_a_resume_and_ranks_take_different_ones(
    windows: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = build_residual({"hidden_sizes": [8], "history": 0})
    model.fit_statistics(*windows)
    term = build_term(model, DeviceWindows(*windows), term_settings(cap=1000))
    assert term is not None and term.n == 1000
    order = term.order(seed=0, epoch=3)
    assert torch.equal(order, term.order(seed=0, epoch=3))
    assert not torch.equal(order, term.order(seed=0, epoch=4))
    one = Dist()
    rows = term.rows(order, 63, 1000, one)  # 1000 steps: the second use begins at step 63
    assert rows is not None and len(rows) == JACOBIAN_BATCH
    assert torch.equal(rows, term.rows(order, 63, 1000, one))
    assert term.rows(order, 64, 1000, one) is None
    # an epoch of 10 steps uses the term on each (the term has 16 batches: 10 of them used)
    assert all(term.rows(order, s, 10, one) is not None for s in range(10))
    # an epoch of 100 steps passes once over the term's windows, on 16 steps spread over it
    used = [r for s in range(100) if (r := term.rows(order, s, 100, one)) is not None]
    assert len(used) == 16
    assert set(torch.cat(used).tolist()) == set(range(1000))
    # two processes share a step's windows between them
    a, b = (term.rows(order, 5, 10, Dist(rank=r, world=2)) for r in (0, 1))
    assert a is not None and b is not None and not set(a.tolist()) & set(b.tolist())
    assert set(a.tolist()) | set(b.tolist()) == set(term.rows(order, 5, 10, one).tolist())


def test_the_term_needs_a_residual_mlp_model(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match=r"training\.jacobian_weight"):
        train(tmp_path / "none.h5", tmp_path / "run", {"training": {"jacobian_weight": 10}})
    settings = {
        "model": {"kind": "residual", "body": "gru", "history": 2},
        "training": {"jacobian_weight": 10},
    }
    with pytest.raises(TrainingInputError, match="body 'gru'"):
        train(tmp_path / "none.h5", tmp_path / "run", settings)


def test_training_with_the_term_learns_the_field_maps_jacobian(tmp_path: Path) -> None:
    """The same short training with and without the term: with it, the model's J is several
    times closer to the field map's (``training.json`` says how close), on windows it did not
    train on as well."""
    from tracklstm.data.to_parquet import convert
    from tracklstm.data.windows import build

    csv = write_tracks_csv(simulate_tracks(300, seed=8), tmp_path / "tracks.csv")
    convert(csv, tmp_path / "tracks.parquet")
    build(tmp_path / "tracks.parquet", tmp_path / "windows.h5", seed=3)
    test = simulate_tracks(40, seed=9)
    states, z_next = test[:, 8].astype(np.float32), test[:, 9, 2]
    reference = field_jacobian(states.astype(np.float64), z_next)
    medians = {}
    for weight in (0.0, 1000.0):
        settings = {
            "model": {"kind": "residual", "hidden_sizes": [32, 32], "history": 0},
            "training": {
                "epochs": 20,
                "batch_size": 128,
                "learning_rate": 3e-3,
                "loss": "mse",
                "jacobian_weight": weight,
                "jacobian_windows": 2000,
            },
        }
        run = tmp_path / f"run{weight:g}"
        train(tmp_path / "windows.h5", run, settings)
        summary = json.loads((run / "training.json").read_text())
        model = build_model(settings["model"], 7)
        model.load_state_dict(torch.load(run / "weights_best.pt", weights_only=True))
        windows = np.repeat(states[:, None], 7, axis=1)
        medians[weight] = np.median(relative_difference(model_jacobian(model, windows), reference))
        if weight:
            term = summary["jacobian_term"]
            assert term["weight"] == weight and term["windows"] == 2000
            assert term["median_relative_difference"] < 0.05  # untrained: about 0.1
        else:
            assert summary["jacobian_term"] is None
    assert medians[1000.0] < medians[0.0] / 2, medians


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """The term's windows depend on the epoch and step only: stopped inside epoch 2 and
    resumed, the run ends with the weights of a run that was never stopped."""
    from test_train import make_windows_file, state_equal

    from tracklstm.train.data import inspect_windows
    from tracklstm.train.errors import TrainingInterrupted
    from tracklstm.train.runtime import request_stop

    windows = make_windows_file(tmp_path / "windows.h5", tracks=simulate_tracks(60, seed=2))
    settings = {
        "model": {"kind": "residual", "hidden_sizes": [8], "history": 0},
        "training": {
            "epochs": 3,
            "batch_size": 32,
            "loss": "mse",
            "jacobian_weight": 100,
            "jacobian_windows": 300,
        },
    }
    train(windows, tmp_path / "ref", settings)
    steps = -(-inspect_windows(windows).sizes["train"] // 32)
    request_stop(after_steps=steps + 3)
    with pytest.raises(TrainingInterrupted):
        train(windows, tmp_path / "run", settings)
    summary = train(windows, tmp_path / "run", settings)
    assert summary["resumes"] == 1
    for name in ("weights_best.pt", "weights_last.pt"):
        assert state_equal(
            torch.load(tmp_path / "run" / name, weights_only=True),
            torch.load(tmp_path / "ref" / name, weights_only=True),
        )
