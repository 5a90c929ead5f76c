"""The plain C++ propagator (cpp/include/tracklstm/propagator.hpp) and the field map's C++
Runge-Kutta (runge_kutta.hpp), compiled here as the export stage compiles them and run the way a
reconstruction runs them: against the eager model, the TorchScript file and Python's own
field-only propagation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import make_run

from tracklstm.constants import PLANE_Z
from tracklstm.export.formats import export
from tracklstm.export.loading import load_model
from tracklstm.export.module import load_physical_model
from tracklstm.export.parity import example_inputs
from tracklstm.export.plain import (
    CPP_DIR,
    MAGIC,
    PlainExportError,
    compile_program,
    export_plain,
    main,
)
from tracklstm.export.tensor_file import read_tensor, write_tensor
from tracklstm.physics.baselines import field_only
from tracklstm.physics.solenoid import field_file_text

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tracklstm_propagate, compiled once for the module as rule export_plain compiles it."""
    return compile_program(tmp_path_factory.mktemp("cpp"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Path]]:
    """Residual runs with a covariance head, one-state (history 0) and windowed (history 6),
    each exported as TorchScript and as a propagator file."""
    base = tmp_path_factory.mktemp("plain")
    out = {}
    for history in (0, 6):
        run = make_run(base / f"h{history}", (32, 32), kind="residual", seed=history,
                       history=history, covariance=True)  # fmt: skip
        # a head that is not at its initialization: correlations well away from 0
        model, _ = load_physical_model(run)
        # and a calibrated scale that changes with |p| (knots from 0.6 to 4 GeV/c)
        with torch.no_grad():
            for p in model.cov_head.parameters():
                p.add_(0.3 * torch.randn_like(p))
            model.cov_scale_momentum.copy_(torch.tensor([0.6, 0.9, 1.2, 1.6, 2.0, 2.5, 3.0, 4.0]))
            model.cov_scale.copy_(0.6 + 0.8 * torch.rand(8, 5, dtype=torch.float64))
            # and a scale mixture of three components
            model.cov_mixture_weight.copy_(torch.tensor([0.7, 0.25, 0.05]).double())
            model.cov_mixture_scale.copy_(torch.tensor([0.5, 2.0, 30.0]).double())
            # and a transform that sets other correlations, and an energy-loss term of 2 MeV/c
            # along the momentum
            transform = torch.eye(5, dtype=torch.float64) + 0.3 * torch.rand(5, 5).double()
            model.cov_transform.copy_(torch.tril(transform))
            model.cov_loss_variance.fill_(2e-3**2)
        for name in ("weights_best.pt", "weights_last.pt"):
            torch.save(model.state_dict(), run / name)
        export(run, torchscript=run / "model.ts")
        export_plain(run, run / "model.ts", run / "model.weights.txt", report=run / "plain.json")
        out[history] = {"run": run, "ts": run / "model.ts", "weights": run / "model.weights.txt"}
    return out


def run_cpp(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("history", [0, 6])
def test_cpp_equals_the_eager_model(
    program: Path, runs: dict, history: int, tmp_path: Path
) -> None:
    """Other windows than the export's check: the state to 1e-6 of each feature's size, the
    covariance to 1e-5 of sigma_i sigma_j, and positive definite."""
    files = runs[history]
    model, summary = load_physical_model(files["run"])
    x = example_inputs(summary, n=500, seed=11)
    write_tensor(tmp_path / "in.bin", x.numpy())
    out, cov_file = tmp_path / "out.bin", tmp_path / "cov.bin"
    result = run_cpp(program, "--model", files["weights"], "--input", tmp_path / "in.bin",
                     "--output", out, "--covariance", cov_file)  # fmt: skip
    assert result.returncode == 0, result.stderr
    state, cov = read_tensor(tmp_path / "out.bin"), read_tensor(tmp_path / "cov.bin")
    assert state.dtype == np.float64 and cov.shape == (500, 5, 5)
    with torch.no_grad():
        want_state, want_cov = model.forward_with_covariance(x)
    want_state, want_cov = want_state.double().numpy(), want_cov.numpy()
    scale = np.abs(want_state).max(axis=0) + 1e-3
    assert (np.abs(state - want_state) / scale).max() < 1e-6
    sigma = np.sqrt(np.diagonal(want_cov, axis1=1, axis2=2))
    rel = np.abs(cov - want_cov) / (sigma[:, :, None] * sigma[:, None, :])
    assert rel.max() < 1e-5
    got_sigma = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    correlation = cov / (got_sigma[:, :, None] * got_sigma[:, None, :])
    assert np.linalg.eigvalsh(correlation).min() > 0  # positive definite
    assert (np.abs(correlation) - np.eye(5)).max() > 0.3  # correlations well away from 0


def test_older_files_load_and_a_later_version_is_refused(
    program: Path, runs: dict, tmp_path: Path
) -> None:
    """The file (version 4) carries the covariance's scale mixture, transform and energy-loss
    term, read back in C++ as the model holds them (the parity test checks the covariance). A
    version 3 file (no transform, no energy-loss term) loads with the identity and none;
    a version 2 file (no mixture either) with one component of scale 1; a version 1 file (one
    covariance_scale per feature, no knots) also has that scale at every |p|; a later version
    is refused by name."""
    files = runs[0]
    lines = files["weights"].read_text().splitlines()
    assert lines[0] == "tracklstm-propagator 4"
    model, summary = load_physical_model(files["run"])
    assert float(model.cov_loss_variance) == 2e-3**2
    x = example_inputs(summary, n=200, seed=5)
    write_tensor(tmp_path / "in.bin", x.numpy())
    io = ["--input", tmp_path / "in.bin", "--output", tmp_path / "out.bin"]
    result = run_cpp(program, "--model", files["weights"], *io, "--mixture", tmp_path / "mix",
                     "--covariance", tmp_path / "c4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = np.stack([model.cov_mixture_weight.numpy(), model.cov_mixture_scale.numpy()], 1)
    assert np.array_equal(read_tensor(tmp_path / "mix"), stored)
    v3 = [line for line in lines if not line.startswith(("covariance_loss", "covariance_trans"))]
    v3[0] = "tracklstm-propagator 3"
    (tmp_path / "v3.txt").write_text("\n".join(v3) + "\n")
    result = run_cpp(program, "--model", tmp_path / "v3.txt", *io, "--covariance", tmp_path / "c3")
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        model.cov_transform.copy_(torch.eye(5, dtype=torch.float64))
        model.cov_loss_variance.zero_()
        _, want = model.forward_with_covariance(x)  # what a version 3 file holds
    sigma = np.sqrt(np.diagonal(want.numpy(), axis1=1, axis2=2))
    scale = sigma[:, :, None] * sigma[:, None, :]
    assert (np.abs(read_tensor(tmp_path / "c3") - want.numpy()) / scale).max() < 1e-5
    assert (np.abs(read_tensor(tmp_path / "c4") - want.numpy()) / scale).max() > 1e-2
    v2 = [line for line in v3 if not line.startswith("covariance_mixture")]
    v2[0] = "tracklstm-propagator 2"
    (tmp_path / "v2.txt").write_text("\n".join(v2) + "\n")
    result = run_cpp(program, "--model", tmp_path / "v2.txt", *io, "--mixture", tmp_path / "m2")
    assert result.returncode == 0, result.stderr
    assert read_tensor(tmp_path / "m2").tolist() == [[1.0, 1.0]]
    old = []
    for line in v2:
        key, *values = line.split(" ")
        if key == "covariance_scale_momentum":
            continue
        if key == "covariance_scale":
            line = " ".join(["covariance_scale", "5", *values[1:6]])
        old.append(line)
    old[0] = "tracklstm-propagator 1"
    (tmp_path / "v1.txt").write_text("\n".join(old) + "\n")
    with torch.no_grad():
        model.cov_scale.copy_(model.cov_scale[:1].expand_as(model.cov_scale))
        _, want = model.forward_with_covariance(x)
    result = run_cpp(program, "--model", tmp_path / "v1.txt", *io, "--covariance", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    sigma = np.sqrt(np.diagonal(want.numpy(), axis1=1, axis2=2))
    diff = np.abs(read_tensor(tmp_path / "c") - want.numpy())
    assert (diff / (sigma[:, :, None] * sigma[:, None, :])).max() < 1e-5
    old[0] = "tracklstm-propagator 5"
    (tmp_path / "v5.txt").write_text("\n".join(old) + "\n")
    result = run_cpp(program, "--model", tmp_path / "v5.txt", *io)
    assert result.returncode != 0 and "v5.txt:1: unsupported version" in result.stderr


def test_export_report_and_file(runs: dict) -> None:
    files = runs[0]
    text = files["weights"].read_text()
    assert text.startswith(MAGIC + "\nmetadata {")
    assert text.rstrip().endswith("end")
    import json

    report = json.loads((files["run"] / "plain.json").read_text())
    assert report["passed"] and len(report["checks"]) == 9  # state, covariance, Jacobian
    assert max(c["max_diff"] for c in report["checks"][:3]) < 1e-6


def test_a_one_state_model_walks_plane_by_plane(program: Path, runs: dict, tmp_path: Path) -> None:
    """Propagator::propagate (--to-z) = the model applied plane after plane, in Python."""
    files = runs[0]
    model, summary = load_physical_model(files["run"])
    start = example_inputs(summary, n=50, seed=3)[:, -1].double()
    start[:, 2] = PLANE_Z[7]
    write_tensor(tmp_path / "s.bin", start.numpy(), float64=True)
    goal = PLANE_Z[13]
    result = run_cpp(program, "--model", files["weights"], "--input", tmp_path / "s.bin",
                     "--to-z", repr(goal), "--output", tmp_path / "o.bin")  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = read_tensor(tmp_path / "o.bin")
    state = start.float()
    with torch.no_grad():
        for _ in range(6):
            state = model(state.unsqueeze(1).expand(-1, 7, -1).contiguous())
    assert np.allclose(got[:, 2], goal)
    assert np.abs(got - state.double().numpy()).max() < 1e-4
    # with the covariance carried as a Kalman filter's prediction does, C' = J C J^T + Q,
    # from a state known exactly: the same recursion in Python on the TorchScript file
    result = run_cpp(program, "--model", files["weights"], "--input", tmp_path / "s.bin",
                     "--to-z", repr(goal), "--output", tmp_path / "o.bin",
                     "--covariance", tmp_path / "c.bin")  # fmt: skip
    assert result.returncode == 0, result.stderr
    carried = read_tensor(tmp_path / "c.bin")
    scripted, _ = load_model(files["ts"])
    state, cov = start.float(), torch.zeros(len(start), 5, 5, dtype=torch.float64)
    for _ in range(6):
        window = state.unsqueeze(1).expand(-1, 7, -1).contiguous()
        jac = scripted.jacobian(window).double()
        with torch.no_grad():
            state, q = scripted.forward_with_covariance(window)
        cov = jac @ cov @ jac.transpose(1, 2) + q
    want = cov.numpy()
    sigma = np.sqrt(np.diagonal(want, axis1=1, axis2=2))
    assert (np.abs(carried - want) / (sigma[:, :, None] * sigma[:, None, :])).max() < 1e-4
    assert (sigma > np.sqrt(np.diagonal(q.numpy(), axis1=1, axis2=2))).all()  # it grew
    # not a plane's z, and a windowed model: clear refusals
    bad = run_cpp(program, "--model", files["weights"], "--input", tmp_path / "s.bin",
                  "--to-z", "200", "--output", tmp_path / "o2.bin")  # fmt: skip
    assert bad.returncode == 1 and "is not a plane's z" in bad.stderr
    windowed = run_cpp(program, "--model", runs[6]["weights"], "--input", tmp_path / "s.bin",
                       "--to-z", repr(goal), "--output", tmp_path / "o3.bin")  # fmt: skip
    assert windowed.returncode == 1 and "call step() with windows" in windowed.stderr


@pytest.mark.parametrize("history", [0, 6])
def test_the_jacobian_equals_torchscript(
    program: Path, runs: dict, history: int, tmp_path: Path
) -> None:
    """d next / d last state in C++ (forward mode) against the TorchScript file's ``jacobian``
    (autograd): the same to float32 rounding, on entries from 1e-3 to 1e2."""
    files = runs[history]
    _, summary = load_physical_model(files["run"])
    x = example_inputs(summary, n=200, seed=8)
    write_tensor(tmp_path / "in.bin", x.numpy())
    result = run_cpp(program, "--model", files["weights"], "--input", tmp_path / "in.bin",
                     "--output", tmp_path / "o.bin", "--jacobian", tmp_path / "j.bin")  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = read_tensor(tmp_path / "j.bin")
    scripted, _ = load_model(files["ts"])
    want = scripted.jacobian(x).double().numpy()
    assert got.shape == want.shape == (200, 5, 5)
    scale = np.abs(want).max(axis=0) + 1e-3  # each entry's size over the windows
    assert (np.abs(got - want) / scale).max() < 1e-5
    assert np.abs(want - np.eye(5)).max() > 1.0  # a step that is far from the identity


def test_runge_kutta_equals_python(program: Path, tmp_path: Path) -> None:
    """The C++ field map and Runge-Kutta against solenoid.propagate without material: 1e-6 cm
    (they agree to the last bits), over plane steps, long steps and the whole detector."""
    rng = np.random.default_rng(5)
    n = 400
    states = np.zeros((n, 6))
    states[:, 0], states[:, 1] = rng.uniform(-30, 30, n), rng.uniform(-30, 30, n)
    states[:, 2] = rng.uniform(40, 330, n)
    states[:, 3], states[:, 4] = rng.uniform(-0.4, 0.4, n), rng.uniform(-0.4, 0.4, n)
    states[:, 5] = rng.uniform(0.4, 3.5, n)
    targets = states[:, 2] + rng.choice([2.1, 28.0, 48.0, 150.0], n)
    (tmp_path / "field.txt").write_text(field_file_text())
    write_tensor(tmp_path / "s.bin", states, float64=True)
    write_tensor(tmp_path / "z.bin", targets, float64=True)
    result = run_cpp(program, "--field", tmp_path / "field.txt", "--input", tmp_path / "s.bin",
                     "--targets", tmp_path / "z.bin", "--output", tmp_path / "o.bin")  # fmt: skip
    assert result.returncode == 0, result.stderr
    got, want = read_tensor(tmp_path / "o.bin"), field_only(states, targets)
    assert np.abs(got[:, :2] - want[:, :2]).max() < 1e-6
    assert np.abs(got[:, 3:] - want[:, 3:]).max() < 1e-9
    assert np.abs(want[:, 3:5] - states[:, 3:5]).max() > 0.05  # the field did turn them


def test_broken_files_are_named_with_their_line(program: Path, runs: dict, tmp_path: Path) -> None:
    lines = runs[0]["weights"].read_text().splitlines()
    cases = {
        "truncated": "\n".join(lines[:20]),
        "number": "\n".join([*lines[:9], lines[9].replace(" ", " x", 1), *lines[10:]]),
        "magic": "\n".join(["tracklstm-propagator 7", *lines[1:]]),
        "mixture": "\n".join(
            "covariance_mixture_weight 3 0.7 0.25 0.5"
            if line.startswith("covariance_mixture_w")
            else line
            for line in lines
        ),
    }
    write_tensor(tmp_path / "in.bin", np.zeros((2, 7, 6), np.float32))
    for case, text in cases.items():
        path = tmp_path / f"{case}.txt"
        path.write_text(text + "\n")
        result = run_cpp(program, "--model", path, "--input", tmp_path / "in.bin",
                         "--output", tmp_path / "o.bin")  # fmt: skip
        assert result.returncode == 1, case
        assert f"{path}:" in result.stderr, (case, result.stderr)
    assert "line" not in cases and "the file ends early" in run_cpp(
        program, "--model", tmp_path / "truncated.txt", "--input", tmp_path / "in.bin",
        "--output", tmp_path / "o.bin",
    ).stderr  # fmt: skip
    assert ":10: not a number" in run_cpp(
        program, "--model", tmp_path / "number.txt", "--input", tmp_path / "in.bin",
        "--output", tmp_path / "o.bin",
    ).stderr  # fmt: skip
    assert "the weights must add up to 1" in run_cpp(
        program, "--model", tmp_path / "mixture.txt", "--input", tmp_path / "in.bin",
        "--output", tmp_path / "o.bin",
    ).stderr  # fmt: skip
    assert not (tmp_path / "o.bin").exists()
    bad_option = run_cpp(program, "--input", tmp_path / "in.bin")
    assert bad_option.returncode == 2 and "give one of --model and --field" in bad_option.stderr


def test_a_failed_check_leaves_no_file(runs: dict, tmp_path: Path) -> None:
    """A C++ header that is off by 10 microns in x: the check fails and nothing is written."""
    cpp = tmp_path / "cpp"
    shutil.copytree(CPP_DIR, cpp, ignore=shutil.ignore_patterns("build"))
    header = cpp / "include" / "tracklstm" / "propagator.hpp"
    text = header.read_text()
    marker = "for (int k = 0; k < 6; ++k) o[k] = prior[r][k];"
    assert marker in text
    header.write_text(text.replace(marker, marker + " o[0] += 1e-3;"))
    files = runs[6]
    out = tmp_path / "model.weights.txt"
    with pytest.raises(PlainExportError, match="differs from"):
        export_plain(files["run"], files["ts"], out, report=tmp_path / "r.json", cpp_dir=cpp)
    assert not out.exists() and not (tmp_path / "r.json").exists()
    assert list(tmp_path.glob("model.weights.txt*")) == []


def test_models_without_a_plain_form_are_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "ref")
    export(run, torchscript=run / "model.ts")
    code = main(["--run", str(run), "--torchscript", str(run / "model.ts"),
                 "--out", str(tmp_path / "w.txt")])  # fmt: skip
    assert code == 1 and not (tmp_path / "w.txt").exists()
    with pytest.raises(PlainExportError, match="MLP body"):
        export_plain(run, run / "model.ts", tmp_path / "w.txt")


def test_the_readme_loop_compiles_and_runs(runs: dict, tmp_path: Path) -> None:
    """cpp/README.md's reconstruction-style loop, as written there: 23 plane steps, each with a
    positive variance of x."""
    import re

    readme = (CPP_DIR / "README.md").read_text()
    code = re.search(r"```cpp\n(// g\+\+ .*?loop\.cpp.*?)```", readme, re.S)
    assert code, "the loop is missing from cpp/README.md"
    (tmp_path / "loop.cpp").write_text(code.group(1))
    compiler = shutil.which("c++") or shutil.which("g++")
    build = subprocess.run([compiler, "-O1", "-std=c++17", "-I", str(CPP_DIR / "include"),
                            str(tmp_path / "loop.cpp"), "-o", str(tmp_path / "loop")],
                           capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    result = run_cpp(tmp_path / "loop", runs[0]["weights"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(PLANE_Z) - 2
    assert float(lines[-1].split()[1]) == pytest.approx(PLANE_Z[-1])
    assert all(float(line.split()[-2]) > 0 for line in lines)
