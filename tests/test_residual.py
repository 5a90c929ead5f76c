"""The residual propagator: torch helix prior, plane z output, training, buffers, field-only."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import toy_tracks
from test_train import make_windows_file

from tracklstm.constants import PLANE_Z
from tracklstm.data.windows import make_windows
from tracklstm.models.residual import ResidualPropagator, build_residual
from tracklstm.physics.baselines import field_only
from tracklstm.physics.helix import helix
from tracklstm.physics.helix_field import NOMINAL_FIELD, TURNING_FIELD
from tracklstm.physics.helix_prior import field_tables, helix_step
from tracklstm.train.fit import train

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

FIELDS = {
    "nominal": NOMINAL_FIELD,
    "turning": TURNING_FIELD,
    "four": ((65.0, 2.0), (200.0, 0.0), (250.0, 1.5), (300.0, -1.0)),
}


def random_states(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """States anywhere along the detector and target z up to 150 cm further (some zero steps)."""
    rng = np.random.default_rng(seed)
    s = np.column_stack(
        [
            rng.uniform(-40, 40, n),
            rng.uniform(-40, 40, n),
            rng.uniform(60, 340, n),
            rng.uniform(-0.45, 0.45, n),
            rng.uniform(-0.45, 0.45, n),
            rng.uniform(0.9, 2.6, n),
        ]
    )
    z = s[:, 2] + rng.uniform(0, 150, n)
    z[:10] = s[:10, 2]
    return s, z


def windows_of(tracks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    inputs, targets, track, _ = make_windows(tracks.astype(np.float32), 7)
    return torch.from_numpy(inputs), torch.from_numpy(targets), track


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine two threads run these small models far
    slower (each waits for the other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_windows() -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets, _ = windows_of(toy_tracks(60, seed=11))
    return inputs, targets


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_torch_prior_matches_the_numpy_helix(name: str) -> None:
    states, z = random_states(2000, seed=len(name))
    expected = helix(states, z, FIELDS[name])
    fz, fb = field_tables(FIELDS[name])
    got = helix_step(torch.from_numpy(states), torch.from_numpy(z), fz, fb)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9, rtol=0)
    scripted = torch.jit.script(helix_step)
    got = scripted(torch.from_numpy(states), torch.from_numpy(z), fz, fb)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9, rtol=0)
    assert np.array_equal(got[:, 2].numpy(), z)


def test_output_z_is_the_next_plane_exactly(toy_windows: tuple[torch.Tensor, ...]) -> None:
    inputs, targets = toy_windows
    for body in ("mlp", "gru"):
        model = build_residual({"body": body, "hidden_sizes": [8], "head_sizes": [8]})
        model.fit_statistics(inputs, targets)
        model.eval()
        plane_z32 = torch.tensor(PLANE_Z, dtype=torch.float32)
        with torch.no_grad():
            for m in (model, torch.jit.script(model)):
                out = m(inputs)
                assert out.dtype == torch.float32 and out.shape == targets.shape
                assert torch.equal(out[:, 2], targets[:, 2])
                assert set(out[:, 2].tolist()) <= set(plane_z32.tolist())


#: The residual variant's recipe of config.yaml (cosine schedule, MSE, no clipping), shorter.
RECIPE: dict = {
    "epochs": 40,
    "batch_size": 256,
    "learning_rate": 3.0e-3,
    "loss": "mse",
    "grad_clip_value": None,
    "scheduler": {"kind": "cosine", "min_lr": 3.0e-5},
    "early_stopping": {"patience": None, "restore_best": True},
}


def predict(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def trained(windows: Path, run: Path, model: dict, **training: object) -> tuple[dict, Any]:
    """A residual model trained by the project's trainer: (summary, the best weights' model)."""
    settings = {
        "model": {"kind": "residual", **model},
        "training": {**RECIPE, **training},
        "runtime": {"device": "cpu"},
    }
    summary = train(windows, run, settings)
    net = build_residual({k: v for k, v in model.items()})
    net.load_state_dict(torch.load(run / "weights_best.pt", weights_only=True))
    return summary, net.eval()


def split(windows: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with h5py.File(windows) as h5:
        return torch.from_numpy(h5[name]["inputs"][...]), torch.from_numpy(h5[name]["targets"][...])


def test_a_tiny_model_trained_in_seconds_beats_the_helix(tmp_path: Path) -> None:
    from tracklstm.data.simulate import simulate_tracks

    windows = make_windows_file(tmp_path / "windows.h5", tracks=simulate_tracks(300, seed=5))
    _, model = trained(
        windows, tmp_path / "run", {"body": "mlp", "hidden_sizes": [32, 32], "history": 1}
    )
    inputs, targets = split(windows, "test")
    pred = predict(model, inputs).numpy().astype(np.float64)
    truth = targets.numpy().astype(np.float64)
    base = helix(inputs[:, -1].numpy().astype(np.float64), truth[:, 2])

    def rms_x(p: np.ndarray) -> float:
        return float(np.sqrt(np.mean((p[:, 0] - truth[:, 0]) ** 2)))

    assert rms_x(pred) < 0.7 * rms_x(base)


def test_buffers_round_trip_through_the_state_dict(toy_windows: tuple[torch.Tensor, ...]) -> None:
    inputs, targets = toy_windows
    settings = {"body": "lstm", "hidden_sizes": [8], "head_sizes": [], "field": TURNING_FIELD}
    model = build_residual(settings)
    model.fit_statistics(inputs, targets)
    fresh = build_residual(settings)
    assert not bool(fresh.fitted)
    fresh.load_state_dict(model.state_dict())
    for name, buf in model.named_buffers():
        assert torch.equal(buf, dict(fresh.named_buffers())[name]), name
    assert {"corr_std", "static_mean", "field_qbz", "plane_z"} <= set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(predict(model, inputs), predict(fresh, inputs))
    pred, target = fresh.loss_pair(inputs[:5], targets[:5])
    assert pred.shape == target.shape == (5, 5)


def test_training_keeps_the_best_validation_epoch(tmp_path: Path) -> None:
    windows = make_windows_file(tmp_path / "windows.h5")
    summary, model = trained(
        windows, tmp_path / "run", {"hidden_sizes": [8]}, epochs=4, batch_size=64
    )
    assert summary["epochs_run"] == 4 and 1 <= summary["best_epoch"] <= 4
    inputs, targets = split(windows, "validation")
    with torch.no_grad():
        pred, target = model.loss_pair(inputs, targets)
    assert float(torch.mean((pred - target) ** 2)) == pytest.approx(
        summary["best_val_mse"], rel=1e-4
    )
    assert not model.training


def test_statistics_are_needed_before_training(toy_windows: tuple[torch.Tensor, ...]) -> None:
    inputs, targets = toy_windows
    with pytest.raises(RuntimeError, match="fit_statistics"):
        ResidualPropagator().loss_pair(inputs, targets)
    with pytest.raises(ValueError, match="fit_statistics"):
        ResidualPropagator().fit_statistics(inputs[:, :, :5], targets)


def test_onnx_and_torch_export_agree_with_eager(
    toy_windows: tuple[torch.Tensor, ...], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    inputs, targets = toy_windows
    model = build_residual({"hidden_sizes": [16]})
    model.fit_statistics(inputs, targets)
    model.eval()
    with torch.no_grad():
        eager = model(inputs)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (inputs[:3],), dynamic_shapes={"states": {0: batch}})
        onnx_program = torch.onnx.export(
            program, (inputs[:3],), input_names=["states"], opset_version=18, dynamo=True
        )
    with torch.no_grad():
        torch.testing.assert_close(program.module()(inputs), eager, rtol=0, atol=1e-6)
    onnx_program.save(str(tmp_path / "residual.onnx"))
    session = ort.InferenceSession(str(tmp_path / "residual.onnx"))
    (out,) = session.run(None, {"states": inputs.numpy()})
    np.testing.assert_allclose(out, eager.numpy(), rtol=0, atol=1e-5)
    assert np.array_equal(out[:, 2], eager[:, 2].numpy())


def test_field_only_reaches_each_rows_target_z() -> None:
    from tracklstm.physics.solenoid import propagate

    states, z = random_states(50, seed=3)
    states[:, 2] = 176.944
    z = np.where(np.arange(50) % 2 == 0, 300.479, 343.405)
    out = field_only(states, z)
    assert out.shape == states.shape
    assert np.array_equal(out[:, 2], z)
    odd = np.arange(50) % 2 == 1
    np.testing.assert_array_equal(out[odd], propagate(states[odd], [343.405])[:, 0])
    assert field_only(states[0], 200.0).shape == (6,)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"body": "cnn"}, "residual.body"),
        ({"hidden_sizes": [0]}, "residual.hidden_sizes"),
        ({"body": "lstm", "hidden_sizes": []}, "residual.hidden_sizes"),
        ({"head_sizes": 8}, "residual.head_sizes"),
        ({"history": 7}, "residual.history"),
        ({"body": "gru", "history": 0}, "residual.history"),
        ({"dropout": 1.5}, "residual.dropout"),
        ({"field": [[200.0, 2.0], [100.0, 1.0]]}, "residual.field"),
        ({"field": "2T"}, "residual.field"),
        ({"cell": "lstm"}, "residual.cell"),
    ],
)
def test_bad_settings_name_the_key(settings: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build_residual(settings)
