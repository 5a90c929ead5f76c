"""The C++ program (cpp/): built with CMake against the pip wheel's libtorch; Python's outputs.

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

from tracklstm.artifacts import load_torchscript
from tracklstm.export import (
    compare,
    example_inputs,
    export_torchscript,
    read_tensor,
    write_tensor,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "cpp"
BUILD = SOURCE / "build"
ROUNDING = 1e-6

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
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("cpp")
    run = make_run(base / "run", hidden_sizes=(16, 8))
    meta = export_torchscript(run, base / "model.ts")
    return base / "model.ts", meta


def run_program(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_outputs_equal_python(program: Path, model: tuple[Path, dict], tmp_path: Path) -> None:
    path, meta = model
    x = example_inputs(meta, n=1000, seed=4).numpy()
    write_tensor(tmp_path / "in.bin", x)
    # --batch 300: the last of 4 batches is partial.
    result = run_program(
        program, "--model", str(path), "--input", str(tmp_path / "in.bin"),
        "--output", str(tmp_path / "out.bin"), "--batch", "300", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = read_tensor(tmp_path / "out.bin")
    assert got.shape == (1000, 6)
    module, _ = load_torchscript(path)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    assert compare(got, want, meta["norm_min"], meta["norm_max"])["max_norm_diff"] <= ROUNDING
    assert "input (batch, 7, 6)" in result.stderr


def test_bench_table(program: Path, model: tuple[Path, dict]) -> None:
    result = run_program(
        program, "--model", str(model[0]), "--bench", "--bench-batches", "64,300",
        "--bench-seconds", "0", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert header == ["device", "batch", "ms_per_batch", "windows_per_s", "repeats"]
    assert [(r[0], int(r[1])) for r in rows] == [("cpu", 64), ("cpu", 300)]
    for row in rows:
        ms, rate, repeats = float(row[2]), float(row[3]), int(row[4])
        assert ms > 0 and repeats >= 3
        assert rate == pytest.approx(int(row[1]) / (ms / 1e3), rel=0.01)


def test_wrong_input_shape_is_a_clear_error(
    program: Path, model: tuple[Path, dict], tmp_path: Path
) -> None:
    write_tensor(tmp_path / "in.bin", np.zeros((5, 8, 6), np.float32))
    result = run_program(program, "--model", str(model[0]), "--input", str(tmp_path / "in.bin"))
    assert result.returncode == 1
    assert "shape [5, 8, 6], the model needs (N, 7, 6)" in result.stderr


def test_bad_files_and_options(program: Path, model: tuple[Path, dict], tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(b"not a tensor file at all")
    result = run_program(program, "--model", str(model[0]), "--input", str(tmp_path / "junk.bin"))
    assert result.returncode == 1 and "bad magic" in result.stderr

    result = run_program(program, "--model", str(tmp_path / "missing.ts"), "--bench")
    assert result.returncode == 1 and "missing.ts" in result.stderr

    result = run_program(program, "--model", str(model[0]))
    assert result.returncode == 2 and "nothing to do" in result.stderr

    result = run_program(program, "--model", str(model[0]), "--bench", "--threads", "0")
    assert result.returncode == 2 and "--threads" in result.stderr


@pytest.mark.cuda
def test_cuda_device(program: Path, model: tuple[Path, dict], tmp_path: Path) -> None:
    """On a machine without CUDA: a clear error; with CUDA: the same outputs as on the CPU."""
    path, meta = model
    x = example_inputs(meta, n=100, seed=1).numpy()
    write_tensor(tmp_path / "in.bin", x)
    args = ["--model", str(path), "--input", str(tmp_path / "in.bin"), "--device", "cuda"]
    result = run_program(program, *args, "--output", str(tmp_path / "gpu.bin"))
    if not torch.cuda.is_available():
        assert result.returncode == 1
        assert "CUDA is not available" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    module, _ = load_torchscript(path)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    diff = compare(read_tensor(tmp_path / "gpu.bin"), want, meta["norm_min"], meta["norm_max"])
    assert diff["max_norm_diff"] <= 1e-4, json.dumps(diff)
