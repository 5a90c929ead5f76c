"""The C++ program (cpp/): built with CMake against the pip wheel's libtorch; Python's outputs.

Both engines run from the same program: the TorchScript file (model.ts) and the AOTInductor
package (model.aoti.pt2) of one run, each compared with Python's eager model on the same windows.
The build is cached in cpp/build (ignored by git): the first run compiles for about a minute on
2 cores, later runs only relink if the source changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import make_run

from tracklstm.export import aoti
from tracklstm.export.formats import export
from tracklstm.export.module import load_physical_model
from tracklstm.export.parity import compare, example_inputs
from tracklstm.export.tensor_file import read_tensor, write_tensor

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "cpp"
BUILD = SOURCE / "build"
ROUNDING = 1e-6
ENGINES = ("torchscript", "aotinductor")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def program() -> Path:
    """Configure and build cpp/ (incremental); skip when no CMake or C++ compiler is present."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot build the C++ program: {' and '.join(missing)} not found on PATH")
    prefix = torch.utils.cmake_prefix_path
    steps = [
        ["cmake", "-S", str(SOURCE), "-B", str(BUILD), f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(BUILD), "--parallel", "2"],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    exe = BUILD / "tracklstm_predict"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run exported as TorchScript, torch.export program and AOTInductor package."""
    base = tmp_path_factory.mktemp("cpp")
    run = make_run(base / "run", hidden_sizes=(16, 8))
    meta = export(run, torchscript=base / "model.ts", program=base / "model.pt2")["metadata"]
    aoti.export_run(run, base / "model.aoti.pt2")
    return {
        "run": run,
        "meta": meta,
        "torchscript": base / "model.ts",
        "aotinductor": base / "model.aoti.pt2",
        "program": base / "model.pt2",
    }


@pytest.fixture(params=ENGINES)
def model(request: pytest.FixtureRequest, exported: dict) -> tuple[Path, dict, str]:
    """The file of one engine, the metadata, the engine's name."""
    return exported[request.param], exported["meta"], request.param


def run_program(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def eager_outputs(run: Path, x: np.ndarray) -> np.ndarray:
    module, _ = load_physical_model(run)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_both_engines_equal_python(program: Path, exported: dict, tmp_path: Path) -> None:
    """The same windows through each engine in C++: both give Python's eager outputs."""
    meta = exported["meta"]
    x = example_inputs(meta, n=1000, seed=4).numpy()
    write_tensor(tmp_path / "in.bin", x)
    want = eager_outputs(exported["run"], x)
    for engine in ENGINES:
        out = tmp_path / f"{engine}.bin"
        # --batch 300: the last of 4 batches is partial.
        result = run_program(
            program, "--model", str(exported[engine]), "--input", str(tmp_path / "in.bin"),
            "--output", str(out), "--batch", "300", "--threads", "1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"engine {engine}" in result.stderr
        assert "input (batch, 7, 6)" in result.stderr
        got = read_tensor(out)
        assert got.shape == (1000, 6)
        diff = compare(got, want, meta["norm_min"], meta["norm_max"])
        assert diff["max_norm_diff"] <= ROUNDING, (engine, json.dumps(diff))


def test_metadata_read_from_either(program: Path, model: tuple[Path, dict, str]) -> None:
    path, meta, engine = model
    result = run_program(program, "--model", str(path), "--print-metadata")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == meta
    assert f"engine {engine}" in result.stderr


def test_engine_chosen_by_content(program: Path, exported: dict, tmp_path: Path) -> None:
    """A package named .ts and a TorchScript file named .pt2 still run with the right engine."""
    renamed = {
        "aotinductor": tmp_path / "package.ts",
        "torchscript": tmp_path / "script.aoti.pt2",
    }
    for engine, path in renamed.items():
        shutil.copyfile(exported[engine], path)
        result = run_program(program, "--model", str(path), "--print-metadata")
        assert result.returncode == 0, result.stderr
        assert f"engine {engine}" in result.stderr
    result = run_program(program, "--model", str(exported["program"]), "--bench")
    assert result.returncode == 1
    assert "model.pt2: a torch.export program" in result.stderr
    assert "compile it into an AOTInductor package" in result.stderr
    (tmp_path / "junk.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_program(program, "--model", str(tmp_path / "junk.pt2"), "--bench")
    assert result.returncode == 1
    assert "junk.pt2: not a TorchScript file or AOTInductor package" in result.stderr


def test_bench_table(program: Path, model: tuple[Path, dict, str]) -> None:
    result = run_program(
        program, "--model", str(model[0]), "--bench", "--bench-batches", "1,64,300",
        "--bench-seconds", "0", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert header == ["device", "batch", "ms_per_batch", "windows_per_s", "repeats", "engine"]
    assert [(r[0], int(r[1]), r[5]) for r in rows] == [("cpu", n, model[2]) for n in (1, 64, 300)]
    for row in rows:
        ms, rate, repeats = float(row[2]), float(row[3]), int(row[4])
        assert ms > 0 and repeats >= 3
        assert rate == pytest.approx(int(row[1]) / (ms / 1e3), rel=0.01)


def test_wrong_input_shape_is_a_clear_error(
    program: Path, model: tuple[Path, dict, str], tmp_path: Path
) -> None:
    write_tensor(tmp_path / "in.bin", np.zeros((5, 8, 6), np.float32))
    result = run_program(program, "--model", str(model[0]), "--input", str(tmp_path / "in.bin"))
    assert result.returncode == 1
    assert "shape [5, 8, 6], the model needs (N, 7, 6)" in result.stderr


def test_bad_files_and_options(
    program: Path, model: tuple[Path, dict, str], tmp_path: Path
) -> None:
    (tmp_path / "junk.bin").write_bytes(b"not a tensor file at all")
    result = run_program(program, "--model", str(model[0]), "--input", str(tmp_path / "junk.bin"))
    assert result.returncode == 1 and "bad magic" in result.stderr

    result = run_program(program, "--model", str(tmp_path / "missing.ts"), "--bench")
    assert result.returncode == 1 and "missing.ts" in result.stderr

    result = run_program(program, "--model", str(model[0]))
    assert result.returncode == 2 and "nothing to do" in result.stderr
    assert "--print-metadata" in result.stderr

    result = run_program(program, "--model", str(model[0]), "--bench", "--threads", "0")
    assert result.returncode == 2 and "--threads" in result.stderr


@pytest.mark.cuda
def test_cuda_device(program: Path, model: tuple[Path, dict, str], tmp_path: Path) -> None:
    """Without CUDA: a clear error; with CUDA: TorchScript's outputs as on the CPU, and a package
    compiled for the CPU refused (a package runs on the device it was compiled for)."""
    path, meta, engine = model
    x = example_inputs(meta, n=100, seed=1).numpy()
    write_tensor(tmp_path / "in.bin", x)
    args = ["--model", str(path), "--input", str(tmp_path / "in.bin"), "--device", "cuda"]
    result = run_program(program, *args, "--output", str(tmp_path / "gpu.bin"))
    if not torch.cuda.is_available():
        assert result.returncode == 1
        assert "CUDA is not available" in result.stderr
        return
    if engine == "aotinductor":
        assert result.returncode == 1
        assert "compiled for cpu, cannot run on cuda" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    want = eager_outputs(exported_run(path), x)
    diff = compare(read_tensor(tmp_path / "gpu.bin"), want, meta["norm_min"], meta["norm_max"])
    assert diff["max_norm_diff"] <= 1e-4, json.dumps(diff)


def exported_run(path: Path) -> Path:
    """The run folder beside an exported file (the ``exported`` fixture's layout)."""
    return path.parent / "run"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_package(program: Path, exported: dict, tmp_path: Path) -> None:
    """A package compiled for CUDA runs on the GPU from C++ with the eager outputs."""
    path = aoti.export_run(exported["run"], tmp_path / "model.aoti.pt2", device="cuda").path
    meta = exported["meta"]
    x = example_inputs(meta, n=100, seed=1).numpy()
    write_tensor(tmp_path / "in.bin", x)
    args = ["--model", str(path), "--input", str(tmp_path / "in.bin"), "--device", "cuda"]
    result = run_program(program, *args, "--output", str(tmp_path / "gpu.bin"))
    assert result.returncode == 0, result.stderr
    assert "engine aotinductor (AOTInductor package, cuda)" in result.stderr
    want = eager_outputs(exported["run"], x)
    diff = compare(read_tensor(tmp_path / "gpu.bin"), want, meta["norm_min"], meta["norm_max"])
    assert diff["max_norm_diff"] <= 1e-4, json.dumps(diff)
    result = run_program(program, "--model", str(path), "--bench", "--device", "cpu")
    assert result.returncode == 1 and "compiled for cuda, cannot run on cpu" in result.stderr


def test_residual_variant_equals_python(program: Path, tmp_path: Path) -> None:
    """The helix-correcting variant in the C++ host (TorchScript): Python's eager outputs, and
    the plane z exactly."""
    run = make_run(tmp_path / "run", hidden_sizes=(16, 16), kind="residual")
    meta = export(run, torchscript=tmp_path / "model.ts")["metadata"]
    x = example_inputs(meta, n=500, seed=5).numpy()
    write_tensor(tmp_path / "in.bin", x)
    args = ["--model", str(tmp_path / "model.ts"), "--input", str(tmp_path / "in.bin")]
    result = run_program(program, *args, "--output", str(tmp_path / "out.bin"), "--threads", "1")
    assert result.returncode == 0, result.stderr
    got, want = read_tensor(tmp_path / "out.bin"), eager_outputs(run, x)
    diff = compare(got, want, meta["norm_min"], meta["norm_max"])
    assert diff["max_norm_diff"] <= ROUNDING, json.dumps(diff)
    assert np.array_equal(got[:, 2], want[:, 2])


def test_the_plain_engine_runs_the_propagator_file(program: Path, tmp_path: Path) -> None:
    """model.weights.txt through tracklstm_predict (engine chosen by its first line): the
    TorchScript file's outputs, its metadata, and the plain program built beside it."""
    from tracklstm.export.plain import export_plain

    run = make_run(tmp_path / "run", (32, 32), kind="residual", history=0, covariance=True)
    export(run, torchscript=run / "model.ts")
    meta = export_plain(run, run / "model.ts", run / "model.weights.txt")["metadata"]
    x = example_inputs(meta, n=300, seed=2).numpy()
    write_tensor(tmp_path / "in.bin", x)
    outs = {}
    for name in ("model.ts", "model.weights.txt"):
        out = tmp_path / f"{name}.bin"
        result = run_program(program, "--model", str(run / name), "--input",
                             str(tmp_path / "in.bin"), "--output", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        outs[name] = read_tensor(out)
    assert "engine plain (plain C++ propagator, no libtorch, history 0" in result.stderr
    diff = compare(outs["model.weights.txt"], outs["model.ts"], meta["norm_min"], meta["norm_max"])
    assert diff["max_norm_diff"] <= ROUNDING, json.dumps(diff)
    shown = run_program(program, "--model", str(run / "model.weights.txt"), "--print-metadata")
    assert json.loads(shown.stdout) == meta
    assert (BUILD / "tracklstm_propagate").is_file()


def test_covariances_from_cpp(program: Path, exported: dict, tmp_path: Path) -> None:
    """--covariance: the TorchScript file's, the AOTInductor package's (its second model) and
    the plain propagator's covariances equal Python's forward_with_covariance, and so does the
    package loaded in Python; a package without a covariance head is refused."""
    from tracklstm.export.loading import has_covariance, load_model, predict_with_covariance
    from tracklstm.export.plain import export_plain

    run = make_run(tmp_path / "run", (32, 32), kind="residual", history=0, covariance=True)
    export(run, torchscript=run / "model.ts")
    meta = export_plain(run, run / "model.ts", run / "model.weights.txt")["metadata"]
    report = aoti.export_run(run, run / "model.aoti.pt2")
    assert report.covariance_max_diff is not None and report.covariance_max_diff < 1e-5
    x = torch.from_numpy(example_inputs(meta, n=200, seed=5).numpy())
    write_tensor(tmp_path / "in.bin", x.numpy())
    model, _ = load_physical_model(run)
    with torch.no_grad():
        _, want = model.forward_with_covariance(x)
    sigma = torch.sqrt(torch.diagonal(want, dim1=1, dim2=2)).numpy()

    def relative(got: np.ndarray) -> float:
        return float((np.abs(got - want.numpy()) / (sigma[:, :, None] * sigma[:, None, :])).max())

    for name in ("model.ts", "model.aoti.pt2", "model.weights.txt"):
        cov = tmp_path / f"{name}.cov.bin"
        result = run_program(program, "--model", str(run / name), "--input",
                             str(tmp_path / "in.bin"), "--output", str(tmp_path / "o.bin"),
                             "--covariance", str(cov), "--batch", "64")  # fmt: skip
        assert result.returncode == 0, result.stderr
        got = read_tensor(cov)
        assert got.dtype == np.float64 and got.shape == (200, 5, 5)
        assert relative(got) < 1e-5, name
    package, _ = load_model(run / "model.aoti.pt2")
    assert has_covariance(package)
    assert relative(predict_with_covariance(package, x.numpy())[1]) < 1e-5
    refused = run_program(program, "--model", str(exported["aotinductor"]), "--input",
                          str(tmp_path / "in.bin"), "--output", str(tmp_path / "o2.bin"),
                          "--covariance", str(tmp_path / "c2.bin"))  # fmt: skip
    assert refused.returncode == 1 and "holds no covariance" in refused.stderr
    assert not (tmp_path / "c2.bin").exists() and not (tmp_path / "o2.bin").exists()
