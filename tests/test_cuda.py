"""CUDA: the paths that the farm runs and that no CPU test reaches.

Every test here is marked ``cuda`` and skipped without a CUDA GPU (so the module imports and
skips on the CPU machines of CI). ``bash benchmarks/gpu_check.sh`` runs them on a GPU machine
with ``pytest -m cuda``; each takes seconds there.

What is compared, and how closely:

- **Precisions against the CPU** (``test_short_run_matches_the_cpu``): one step per epoch over
  the whole training split (batch = all 864 training windows), 15 epochs, the same seed. The
  CUDA generator draws other shuffles than the CPU's, so minibatch runs on the two devices
  follow different paths; with the whole split in every batch the shuffle only changes the
  order of a sum, and the runs can be compared epoch by epoch. Measured on the CPU for this
  schedule: a relative perturbation of 1e-6 in the inputs moves the validation MAE by 1e-7
  (the path is stable); bf16 and fp16 autocast emulated on the CPU move it by 1.3e-3 and
  1e-4. The bounds, on the relative difference of every epoch's validation MAE from the
  CPU's: fp32 (TF32 off) 2e-3, a hundred times what float32 rounding of another summation
  order gives, small enough to notice TF32 or a lost step; TF32 2e-2 (10-bit mantissa, like
  fp16's); bf16 10 % (8-bit mantissa; cuDNN may run more of the LSTM in bf16 than the CPU
  emulation did); fp16 25 %: the loss scaler skips a step whose gradients overflow, and one
  skipped full-batch step shifts the whole run by an epoch, about 10 % of the final validation
  MAE of this schedule. CUDA graphs replay the same kernels: the bounds of their precision.
- **CUDA graphs against eager steps on the GPU** (``test_cuda_graphs_replay_the_eager_steps``):
  minibatches of 32 (27 full steps an epoch), the same shuffles on both: 1e-4 (fp32) and 1e-3
  (bf16) relative, well below what one stale or repeated batch would change.
- **Stop and resume on the GPU**: with cuBLAS's workspace fixed (``CUBLAS_WORKSPACE_CONFIG``,
  set below before CUDA's first use; the LSTM's documented condition for determinism), fp32
  steps are deterministic, and the resumed run must equal the uninterrupted one exactly, as
  ``test_train`` asserts on the CPU. With CUDA graphs the resumed process runs 3 eager warm-up
  steps on a side stream before it captures anew where the uninterrupted run replayed: the same
  kernels, but nothing documents their equality across streams, so that case compares the
  metrics at 1e-4 relative (and records whether the weights came out identical).
- **Exported files** of a GPU-trained run: on the CPU as tight as ``test_export`` (1e-6 in
  normalized units); the TorchScript file on the GPU with TF32 off 1e-5; with cuDNN's default
  TF32 (what a host gets unless it turns it off, the C++ program too) the difference is
  recorded and bounded loosely: an emulation of TF32 rounding on the CPU gives 4e-5 to 1.3e-4.

Measured differences go into the JUnit report as properties (``record_property``), which the
GPU check prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_cpp import (
    program,  # noqa: F401  (the fixture that builds cpp/, used by cuda_program)
    run_program,
)
from test_train import make_windows_file, read_metrics, same_learning, state_equal, tiny

from tracklstm.export.formats import export, export_torchscript
from tracklstm.export.loading import load_torchscript
from tracklstm.export.module import load_physical_model
from tracklstm.export.parity import compare, example_inputs
from tracklstm.export.tensor_file import read_tensor, write_tensor
from tracklstm.models.build import build_model
from tracklstm.train.checkpoints import CHECKPOINT_NAME
from tracklstm.train.data import DeviceWindows, StreamedWindows, inspect_windows
from tracklstm.train.errors import TrainingInterrupted
from tracklstm.train.fit import train
from tracklstm.train.runtime import clear_stop, configure_backends, request_stop
from tracklstm.train.trainer import Trainer

# Deterministic cuBLAS: read when its workspaces are made, so before this process's first use
# of CUDA (modules are imported at collection, before any test runs). A value set by the
# caller stays.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

#: Epochs of the full-batch comparison with the CPU (one step each).
FULL_EPOCHS = 15
#: name: (runtime options, relative bound on each epoch's validation MAE against the CPU's).
PRECISIONS: dict[str, tuple[dict[str, Any], float]] = {
    "fp32": ({}, 2e-3),
    "tf32": ({"tf32": True}, 2e-2),
    "bf16": ({"precision": "bf16"}, 0.10),
    "fp16": ({"precision": "fp16"}, 0.25),
    "fp32+graphs": ({"cuda_graphs": True}, 2e-3),
    "bf16+graphs": ({"precision": "bf16", "cuda_graphs": True}, 0.10),
}
METRICS = ("train_mae", "train_mse", "val_mae", "val_mse")
CAPTURED = "captured the training step as a CUDA graph"


# --- helpers and fixtures -------------------------------------------------------------------


def tf32_flags() -> tuple[bool, bool]:
    """(cuBLAS matmuls, cuDNN) TF32 switches of this process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def set_tf32(matmul: bool, cudnn: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


@pytest.fixture(autouse=True)
def _process_state() -> Iterator[None]:
    """Each test starts with this process's TF32 switches as they were, and no stop request
    (``train`` sets the switches process-wide)."""
    flags = tf32_flags()
    clear_stop()
    yield
    clear_stop()
    set_tf32(*flags)


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 toy tracks: 864 training windows (27 batches of 32), 108 validation windows."""
    return make_windows_file(tmp_path_factory.mktemp("cuda") / "windows.h5")


@pytest.fixture(scope="module")
def n_train(windows: Path) -> int:
    return inspect_windows(windows).sizes["train"]


def full_batch(n_train: int, **options: Any) -> dict[str, Any]:
    """FULL_EPOCHS epochs of one step over the whole training split."""
    return tiny(epochs=FULL_EPOCHS, batch_size=n_train, **options)


def column(run: Path, key: str = "val_mae") -> list[float]:
    return [float(r[key]) for r in read_metrics(run / "metrics.csv")]


def max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def assert_finite(run: Path) -> None:
    for row in read_metrics(run / "metrics.csv"):
        for key in METRICS:
            assert math.isfinite(float(row[key])), (key, row)


@pytest.fixture(scope="module")
def cpu_full_batch(
    windows: Path, n_train: int, tmp_path_factory: pytest.TempPathFactory
) -> list[float]:
    """The CPU's validation MAE per epoch of the full-batch schedule."""
    run = tmp_path_factory.mktemp("cpu_full_batch") / "run"
    train(windows, run, full_batch(n_train, device="cpu"))
    return column(run)


@pytest.fixture(scope="module")
def gpu_run(windows: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on the GPU (fp32, minibatches), for the export and C++ tests."""
    run = tmp_path_factory.mktemp("gpu_run") / "run"
    summary = train(windows, run, tiny(epochs=3, device="cuda"))
    assert summary["device"] == torch.cuda.get_device_name(0)
    return run


def cuda_toolkit() -> str | None:
    """Where the CUDA compiler is: CMake needs it to use a CUDA build of libtorch."""
    for name in ("CUDACXX", "CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(name)
        if value and Path(value).exists():
            return value
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


#: What CMake says when a CUDA build of libtorch finds no usable CUDA toolkit.
NO_TOOLKIT = ("cannot find the CUDA libraries", "CUDA cannot be found")


@pytest.fixture
def cuda_program(request: pytest.FixtureRequest) -> Path:
    """test_cpp's build of the C++ program; CMake needs the CUDA toolkit (nvcc, the runtime's
    headers and library) to use a CUDA build of libtorch: without one, a skip that says so."""
    why = "cannot build the C++ program against this CUDA build of libtorch: CMake's "
    if torch.version.cuda and cuda_toolkit() is None:
        pytest.skip(why + "find_package(Torch) needs the CUDA toolkit (no nvcc, CUDA_HOME)")
    try:
        return request.getfixturevalue("program")
    except pytest.fail.Exception as err:
        if any(text in str(err) for text in NO_TOOLKIT):
            pytest.skip(why + "find_package(Torch) finds no usable CUDA toolkit")
        raise


# --- precisions, TF32, CUDA graphs ----------------------------------------------------------


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_short_run_matches_the_cpu(
    name: str,
    windows: Path,
    n_train: int,
    cpu_full_batch: list[float],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    """Full-batch steps in each precision (and with CUDA graphs) learn as on the CPU; see the
    module's docstring for the bounds."""
    options, bound = PRECISIONS[name]
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tracklstm.train"):
        summary = train(windows, run, full_batch(n_train, device="cuda", **options))
    assert_finite(run)
    val = column(run)
    diff = max_rel(val, cpu_full_batch)
    record_property("max_rel_val_mae_vs_cpu", f"{diff:.3g}")
    record_property("val_mae_last", f"{val[-1]:.6g} (cpu {cpu_full_batch[-1]:.6g})")
    assert val[-1] < 0.6 * val[0]  # it learns
    assert diff <= bound, f"{name}: validation MAE {val} against the CPU's {cpu_full_batch}"

    # training.json says what ran
    meta = json.loads((run / "training.json").read_text())
    assert meta == json.loads(json.dumps(summary, default=str))
    assert meta["device"] == torch.cuda.get_device_name(0)
    assert meta["precision"] == options.get("precision", "fp32")
    assert meta["cuda_graphs"] is bool(options.get("cuda_graphs", False))
    assert meta["settings"]["runtime"]["tf32"] is bool(options.get("tf32", False))
    assert meta["data_placement"] == "device" and meta["processes"] == 1
    assert meta["versions"]["cuda"] == torch.version.cuda and meta["versions"]["cudnn"]
    # TF32 exactly as asked, for cuBLAS and cuDNN (cuDNN's own default is on)
    tf32 = bool(options.get("tf32", False))
    assert tf32_flags() == (tf32, tf32)
    if options.get("cuda_graphs"):
        assert CAPTURED in caplog.text
    assert "capture failed" not in caplog.text


@pytest.mark.parametrize(
    ("precision", "bound"), [("fp32", 1e-4), ("bf16", 1e-3)], ids=["fp32", "bf16"]
)
def test_cuda_graphs_replay_the_eager_steps(
    precision: str,
    bound: float,
    windows: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    """Minibatches (27 full steps an epoch): the captured step learns like the eager one."""
    eager = train(windows, tmp_path / "eager", tiny(epochs=3, precision=precision))
    with caplog.at_level(logging.INFO, logger="tracklstm.train"):
        graphs = train(
            windows, tmp_path / "graphs", tiny(epochs=3, precision=precision, cuda_graphs=True)
        )
    assert CAPTURED in caplog.text and "capture failed" not in caplog.text
    assert graphs["cuda_graphs"] is True and eager["cuda_graphs"] is False
    assert graphs["precision"] == eager["precision"] == precision
    assert_finite(tmp_path / "graphs")
    worst = 0.0
    for key in METRICS:
        a, b = column(tmp_path / "graphs", key), column(tmp_path / "eager", key)
        worst = max(worst, max_rel(a, b))
        assert max_rel(a, b) <= bound, (key, a, b)
    record_property("max_rel_graphs_vs_eager", f"{worst:.3g}")
    val = column(tmp_path / "graphs")
    assert val[-1] < 0.8 * val[0]


# --- data on the device or streamed ---------------------------------------------------------


@pytest.mark.parametrize("on_device", [True, False, "auto"], ids=["device", "stream", "auto"])
def test_data_paths_on_the_gpu(windows: Path, tmp_path: Path, on_device: bool | str) -> None:
    """Both data paths train on the GPU; validation is one computation on both and the CPU."""
    run = tmp_path / "run"
    settings = tiny(epochs=4, device="cuda", data_on_device=on_device, stream_chunk=100)
    summary = train(windows, run, settings)
    assert summary["data_placement"] == ("stream" if on_device is False else "device")
    assert_finite(run)
    val = column(run)
    assert val[-1] < 0.6 * val[0]

    info = inspect_windows(windows)
    training, runtime = summary["settings"]["training"], summary["settings"]["runtime"]
    results = {}
    for kind in ("cuda", "cpu"):
        device = torch.device(kind)
        configure_backends(runtime, device)
        model = build_model(summary["settings"]["model"]).to(device)
        model.load_state_dict(torch.load(run / "weights_last.pt", weights_only=True))
        trainer = Trainer(model, training, device, runtime=runtime)
        resident = DeviceWindows.load(info, "validation", device)
        streamed = StreamedWindows(info, "validation", device, chunk=7)
        try:
            results[kind] = trainer.evaluate(resident)
            assert trainer.evaluate(streamed) == pytest.approx(results[kind], rel=1e-5)
        finally:
            streamed.close()
    assert results["cuda"][0] == pytest.approx(val[-1], rel=1e-5)
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-4)


# --- stop and resume ------------------------------------------------------------------------

RESUME_CASES = {
    # name: (model dropout, runtime options, exact)
    "fp32-dropout": (0.2, {"data_on_device": True}, True),
    "fp32-stream": (0.2, {"data_on_device": False, "stream_chunk": 100}, True),
    "bf16+graphs": (0.0, {"precision": "bf16", "cuda_graphs": True}, False),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_stop_mid_epoch_and_resume_on_the_gpu(
    case: str, windows: Path, n_train: int, tmp_path: Path, record_property: Any
) -> None:
    """``request_stop`` in epoch 2, then the rerun: the metrics and weights of a run that was
    never stopped (dropout draws from the CUDA generator, whose state the checkpoint keeps)."""
    dropout, options, exact = RESUME_CASES[case]
    settings = tiny(epochs=3, device="cuda", **options)
    settings["model"] = {"hidden_sizes": [8], "dropout": dropout}
    train(windows, tmp_path / "ref", settings)
    steps = -(-n_train // 32)

    run = tmp_path / "run"
    request_stop(after_steps=steps + 5)
    with pytest.raises(TrainingInterrupted) as err:
        train(windows, run, settings)
    assert (err.value.epoch, err.value.step) == (2, 5)
    # The checkpoint of a GPU run loads on a machine without one.
    ckpt = torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["state"]["epoch"] == 1 and ckpt["partial"]["step"] == 5
    assert ckpt["rng"][0]["cuda"] is not None
    assert len(read_metrics(run / "metrics.partial.csv")) == 1
    assert not (run / "metrics.csv").exists()

    summary = train(windows, run, settings)
    assert summary["resumes"] == 1 and summary["epochs_run"] == 3
    assert not (run / CHECKPOINT_NAME).exists()
    got, want = read_metrics(run / "metrics.csv"), read_metrics(tmp_path / "ref/metrics.csv")
    weights = {
        name: (
            torch.load(run / name, weights_only=True),
            torch.load(tmp_path / "ref" / name, weights_only=True),
        )
        for name in ("weights_best.pt", "weights_last.pt")
    }
    identical = all(state_equal(a, b) for a, b in weights.values())
    record_property("resumed_run_identical", str(identical))
    if exact:
        same_learning(got, want)
        assert identical
        return
    # Not bitwise: compare what the weights do, not the weights (Adam moves a weight whose
    # gradient is rounding noise by a whole step either way).
    for key in METRICS:
        a = [float(r[key]) for r in got]
        b = [float(r[key]) for r in want]
        assert max_rel(a, b) <= 1e-4, (key, a, b)


@pytest.mark.parametrize(("first", "second"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_moves_between_cpu_and_gpu(
    first: str, second: str, windows: Path, n_train: int, tmp_path: Path
) -> None:
    """A run stopped on one device resumes on the other (a retry on another machine)."""
    run = tmp_path / "run"
    request_stop(after_steps=-(-n_train // 32) + 5)
    with pytest.raises(TrainingInterrupted):
        train(windows, run, tiny(epochs=3, device=first))
    first_rows = read_metrics(run / "metrics.partial.csv")
    summary = train(windows, run, tiny(epochs=3, device=second))
    assert summary["resumes"] == 1 and summary["epochs_run"] == 3
    gpu_name = torch.cuda.get_device_name(0)
    assert (summary["device"] == gpu_name) is (second == "cuda")
    assert_finite(run)
    rows = read_metrics(run / "metrics.csv")
    assert rows[0] == first_rows[0]  # the epoch done before the stop, carried over
    assert float(rows[-1]["val_mae"]) < float(rows[0]["val_mae"])
    for name in ("weights_best.pt", "weights_last.pt"):
        state = torch.load(run / name, weights_only=True)
        assert all(t.device.type == "cpu" for t in state.values())


# --- export and the C++ host ----------------------------------------------------------------


def test_export_of_a_gpu_trained_run(gpu_run: Path, tmp_path: Path, record_property: Any) -> None:
    """The weights of a GPU run are plain CPU tensors; every exported file passes its checks
    and runs on the CPU like the eager model; the TorchScript file also runs on the GPU."""
    for name in ("weights_best.pt", "weights_last.pt"):
        state = torch.load(gpu_run / name, weights_only=True)
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())
    out = tmp_path / "out"
    report = export(
        gpu_run,
        torchscript=out / "model.ts",
        onnx=out / "model.onnx",
        program=out / "model.pt2",
        report=out / "export_checks.json",
    )
    assert report["passed"] is True
    assert json.loads((out / "export_checks.json").read_text())["passed"] is True
    assert {c["format"] for c in report["checks"]} == {"torchscript", "torch.export", "onnx"}

    eager, summary = load_physical_model(gpu_run)
    x = example_inputs(summary, n=500, seed=3)
    module, meta = load_torchscript(out / "model.ts")
    with torch.inference_mode():
        want = eager(x).numpy()
        got = module(x).numpy()
    assert np.isfinite(got).all()
    lo, hi = meta["norm_min"], meta["norm_max"]
    assert compare(got, want, lo, hi)["max_norm_diff"] <= 1e-6

    on_gpu, _ = load_torchscript(out / "model.ts", device="cuda")
    diffs = {}
    for label, cudnn_tf32 in (("fp32", False), ("tf32", True)):
        set_tf32(False, cudnn_tf32)
        with torch.inference_mode():
            y = on_gpu(x.cuda()).cpu().numpy()
        assert np.isfinite(y).all()
        diffs[label] = compare(y, want, lo, hi)["max_norm_diff"]
        record_property(f"torchscript_cuda_{label}_max_norm_diff", f"{diffs[label]:.3g}")
    assert diffs["fp32"] <= 1e-5, diffs
    assert diffs["tf32"] <= 1e-2, diffs


def test_cpp_host_on_cuda(
    cuda_program: Path, gpu_run: Path, tmp_path: Path, record_property: Any
) -> None:
    """``tracklstm_predict --device cuda`` on a GPU-trained model: Python's outputs on the same
    GPU (libtorch's defaults: cuDNN may use TF32), close to the CPU's, and a bench table."""
    path = tmp_path / "model.ts"
    meta = export_torchscript(gpu_run, path)
    lo, hi = meta["norm_min"], meta["norm_max"]
    x = example_inputs(meta, n=1000, seed=5).numpy()
    write_tensor(tmp_path / "in.bin", x)
    result = run_program(
        cuda_program, "--model", str(path), "--input", str(tmp_path / "in.bin"),
        "--output", str(tmp_path / "out.bin"), "--device", "cuda", "--batch", "1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "device cuda" in result.stderr
    got = read_tensor(tmp_path / "out.bin")
    assert got.shape == (1000, 6) and np.isfinite(got).all()

    set_tf32(False, True)  # libtorch's defaults, which the program keeps
    on_gpu, _ = load_torchscript(path, device="cuda")
    on_cpu, _ = load_torchscript(path)
    with torch.inference_mode():
        want_gpu = on_gpu(torch.from_numpy(x).cuda()).cpu().numpy()
        want_cpu = on_cpu(torch.from_numpy(x)).numpy()
    same_gpu = compare(got, want_gpu, lo, hi)["max_norm_diff"]
    vs_cpu = compare(got, want_cpu, lo, hi)["max_norm_diff"]
    record_property("cpp_cuda_vs_python_cuda_max_norm_diff", f"{same_gpu:.3g}")
    record_property("cpp_cuda_vs_cpu_max_norm_diff", f"{vs_cpu:.3g}")
    assert same_gpu <= 1e-5
    assert vs_cpu <= 2e-3  # TF32 rounding at most (emulated on the CPU: about 1e-4)

    bench = run_program(
        cuda_program, "--model", str(path), "--device", "cuda", "--bench",
        "--bench-batches", "256,4096", "--bench-seconds", "0",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    header, *rows = [line.split("\t") for line in bench.stdout.strip().splitlines()]
    assert header == ["device", "batch", "ms_per_batch", "windows_per_s", "repeats"]
    assert [int(r[1]) for r in rows] == [256, 4096]
    for row in rows:
        assert row[0].startswith("cuda") and float(row[3]) > 0
        record_property(f"cpp_cuda_windows_per_s_batch_{row[1]}", row[3])


# --- several GPUs ---------------------------------------------------------------------------


@pytest.mark.skipif(GPUS < 2, reason=f"DDP over NCCL needs 2 GPUs ({GPUS} visible)")
def test_two_gpus_learn_like_one(tmp_path: Path) -> None:
    """torchrun with 2 processes, one GPU each (NCCL), against one GPU; as test_train_ddp."""
    data = make_windows_file(tmp_path / "windows.h5", n_tracks=55)
    # 792 training windows = 7 batches of 113 and one of 1 window: rank 1 steps with a stand-in.
    settings = tiny(epochs=4, batch_size=113, learning_rate=2e-2, device="cuda")
    single = train(data, tmp_path / "single", settings)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "tracklstm.train", "--windows", str(data), "--out", str(tmp_path / "ddp"),
        "--settings", json.dumps(settings),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "cuda:0 x2 processes" in done.stderr, done.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert summary["processes"] == 2 and summary["device"] == torch.cuda.get_device_name(0)
    ddp_rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    one_rows = read_metrics(tmp_path / "single" / "metrics.csv")
    assert single["processes"] == 1 and len(ddp_rows) == len(one_rows) == 4
    # The same global batches and mean gradient; each rank's half batch runs other cuBLAS and
    # cuDNN kernels than the whole one, and NCCL sums in another order: 2 % after 4 epochs.
    for a, b in zip(ddp_rows, one_rows, strict=True):
        for key in (*METRICS, "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=2e-2), (key, a, b)
    val = [float(r["val_mae"]) for r in ddp_rows]
    assert val[-1] < 0.8 * val[0]
    state = torch.load(tmp_path / "ddp" / "weights_best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
