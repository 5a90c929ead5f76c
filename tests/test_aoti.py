"""AOTInductor packages (tracklstm.aoti): compile, metadata inside, parity, loading, errors.

The compiles take 10-60 s each on 2 cores (inductor caches make repeats faster): they are marked
slow. Most tests share one package: the shared tiny project's small model (hidden sizes [16, 8])
compiled by the real workflow, `export.aoti: true` running rule export_aoti (which runs
``python -m tracklstm.aoti``); those tests are marked workflow too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import make_run

from tracklstm.constants import FEATURES, PLANE_Z
from tracklstm.export import aoti, loading, parity
from tracklstm.export.formats import export
from tracklstm.export.loading import ModelFileError, load_model, predict_windows
from tracklstm.export.module import ExportedTrackModel, load_physical_model, metadata
from tracklstm.export.parity import example_inputs

#: float32 rounding, in normalized units (a fraction of each feature's range).
ROUNDING = 1e-6


def small_module(run: Path) -> tuple[ExportedTrackModel, dict, torch.Tensor]:
    """The module ``tracklstm export`` builds for a run, its metadata and 300 example windows."""
    eager, summary = load_physical_model(run)
    meta = metadata(summary, "best", eager)
    return ExportedTrackModel(eager, meta).eval(), meta, example_inputs(summary, n=300)


@pytest.fixture(scope="module")
def package(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny project with `export.aoti: true`: what it plans, then the package its real run
    builds (rule export_aoti), with the rule's check report."""
    from conftest import copy_project
    from workflow_runs import parse_jobs, read_config, snakemake, write_config

    work = copy_project(tiny_project, tmp_path_factory.mktemp("aoti") / "project")
    cfg = read_config(work)
    cfg.setdefault("export", {})["aoti"] = True
    write_config(work, cfg)
    planned = parse_jobs(snakemake(work, "-n", "-p", "--cores", "1").stdout)
    snakemake(work, "--cores", "2")
    run = work / "results" / "tiny" / "small"
    return {
        "work": work,
        "planned": planned,
        "run": run,
        "path": run / "model.aoti.pt2",
        "report": json.loads((run / "aoti_checks.json").read_text()),
    }


@pytest.mark.workflow
@pytest.mark.workflow
@pytest.mark.slow
def test_rule_builds_the_package_and_nothing_else(package: dict) -> None:
    """Turning `export.aoti` on plans model.aoti.pt2 in its own rule, and re-runs nothing built."""
    from workflow_runs import snakemake

    planned = [job for job in package["planned"] if job.rule != "all"]
    assert [job.rule for job in planned] == ["export_aoti"], planned
    assert planned[0].outputs[0] == "results/tiny/small/model.aoti.pt2"
    report = package["report"]
    assert report["freezing"] is True and report["device"] == "cpu"
    assert report["diff_units"] == "normalized" and report["check_batches"] == [1, 7, 300]
    assert 0 <= report["max_diff"] <= ROUNDING
    assert report["seconds"]["compile"] > 0
    assert report["package_metadata"]["AOTI_DEVICE_KEY"] == "cpu"
    # The package's folder inside the archive is named after the final file, not a temporary.
    with zipfile.ZipFile(package["path"]) as zf:
        roots = {n.split("/", 1)[0] for n in zf.namelist()}
    assert roots == {"model.aoti"}
    leftovers = [p.name for p in package["run"].iterdir() if "aoti" in p.name]
    assert sorted(leftovers) == ["aoti_checks.json", "model.aoti.pt2"]
    assert "Nothing to be done" in snakemake(package["work"], "-n", "--cores", "1").stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_metadata_travels_inside(package: dict) -> None:
    model, meta = loading.load_package(package["path"])
    eager, summary = load_physical_model(package["run"])
    assert meta == json.loads(json.dumps(metadata(summary, "best", eager)))
    assert meta["plane_z"] == list(PLANE_Z) and meta["window_length"] == 7
    assert meta["data_fingerprint"] == summary["data_fingerprint"] != ""
    assert loading.read_metadata(package["path"]) == meta  # from the archive, no code loaded
    stored = model.package_metadata
    assert stored[loading.INPUT_SHAPE_KEY] == "-1,7,6"
    assert stored["tracklstm.window_length"] == "7"
    assert stored["tracklstm.features"] == ",".join(FEATURES)
    assert [float(v) for v in stored["tracklstm.norm_min"].split(",")] == meta["norm_min"]
    assert "tracklstm.units" not in stored  # a dict: only in the JSON
    assert stored["AOTI_DEVICE_KEY"] == "cpu"


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 2, 300, 1000])
def test_dynamic_batch_matches_eager(package: dict, batch: int) -> None:
    model, meta = loading.load_package(package["path"])
    eager, summary = load_physical_model(package["run"])
    x = example_inputs(summary, n=batch, seed=5)
    with torch.no_grad():
        want = eager(x)
    got = model(x)
    scale = torch.tensor(meta["norm_max"]) - torch.tensor(meta["norm_min"])
    assert got.shape == (batch, 6)
    assert float(((got - want).abs() / scale).max()) <= ROUNDING


@pytest.mark.workflow
@pytest.mark.slow
def test_inputs_checked_and_converted(package: dict) -> None:
    model, meta = loading.load_package(package["path"])
    x = example_inputs(meta, n=4, seed=2)
    with pytest.raises(ValueError, match=r"expected input \(batch, 7, 6\), got \[4, 8, 6\]"):
        model(torch.zeros(4, 8, 6))
    with pytest.raises(ValueError, match="got \\[7, 6\\]"):
        model(torch.zeros(7, 6))
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.zeros(0, 7, 6))
    # Not contiguous, float64: converted first, same answer.
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    assert torch.equal(model(strided), model(x))
    assert torch.allclose(model(x.double()), model(x))


@pytest.mark.workflow
@pytest.mark.slow
def test_loads_in_fresh_process(package: dict, tmp_path: Path) -> None:
    """Another process loads the package alone: no state of the compiling process is needed."""
    meta = loading.read_metadata(package["path"])
    x = example_inputs(meta, n=50, seed=3)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import json, sys, torch; from tracklstm.export.loading import load_package; "
        "m, meta = load_package(sys.argv[1]); "
        "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); print(meta['window_length'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(package["path"]), "x.pt", "y.pt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"
    eager, _ = load_physical_model(package["run"])
    with torch.no_grad():
        want = eager(x)
    scale = torch.tensor(meta["norm_max"]) - torch.tensor(meta["norm_min"])
    got = torch.load(tmp_path / "y.pt")
    assert float(((got - want).abs() / scale).max()) <= ROUNDING


@pytest.mark.slow
def test_failed_parity_leaves_no_file(tmp_path: Path) -> None:
    module, meta, x = small_module(make_run(tmp_path / "run", hidden_sizes=(16, 8)))
    out = tmp_path / "out" / "model.aoti.pt2"
    with pytest.raises(parity.ParityError, match="tolerance -1"):
        aoti.compile_package(module, x, out, meta, tolerance=-1.0)
    assert list(out.parent.iterdir()) == []  # neither the package nor the staging folder


def generated_code(path: Path, kind: str = "wrapper") -> str:
    """The generated C++ inside a CPU package: ``wrapper`` or ``kernel``."""
    with zipfile.ZipFile(path) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(f".{kind}.cpp")]
        return zf.read(name).decode()


@pytest.mark.workflow
@pytest.mark.slow
def test_rnn_kernels_decomposed(package: dict, tmp_path: Path) -> None:
    """``decomposed``: no oneDNN RNN call in the code, the same outputs; default: oneDNN's.

    Compiled in a process limited to 1 thread: the kernels still follow the thread count of
    the moment (OpenMP regions without a fixed number of threads).
    """
    assert "mkldnn_rnn_layer" in generated_code(package["path"])
    module, meta, x = small_module(package["run"])
    out = tmp_path / "model.aoti.pt2"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = aoti.compile_with_report(module, x, out, meta, rnn_kernels="decomposed")
    finally:
        torch.set_num_threads(threads)
    assert report.rnn_kernels == "decomposed" and report.max_diff <= ROUNDING
    assert "mkldnn_rnn_layer" not in generated_code(out)
    kernels = generated_code(out, "kernel")
    assert "#pragma omp parallel" in kernels and "num_threads(" not in kernels
    model, _ = loading.load_package(out)
    with torch.no_grad():
        assert float((model(x) - module(x)).abs().max()) < 1e-3


def test_files_that_are_not_packages(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    export(run, torchscript=tmp_path / "model.ts", program=tmp_path / "model.pt2")
    with pytest.raises(ValueError, match=r"model\.ts: not an AOTInductor package: a TorchScript"):
        loading.load_package(tmp_path / "model.ts")
    with pytest.raises(ValueError, match=r"model\.pt2: not an AOTInductor .*torch\.export prog"):
        loading.load_package(tmp_path / "model.pt2")
    (tmp_path / "junk.aoti.pt2").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.aoti\.pt2: not an AOTInductor .*not a zip"):
        loading.load_package(tmp_path / "junk.aoti.pt2")
    with zipfile.ZipFile(tmp_path / "other.aoti.pt2", "w") as zf:
        zf.writestr("other/readme.txt", "hello")
    with pytest.raises(ValueError, match=r"other\.aoti\.pt2: .*no data/aotinductor/"):
        loading.read_metadata(tmp_path / "other.aoti.pt2")
    with pytest.raises(FileNotFoundError, match=r"missing\.aoti\.pt2"):
        loading.load_package(tmp_path / "missing.aoti.pt2")


def test_compile_argument_errors(tmp_path: Path) -> None:
    module, meta, x = small_module(make_run(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"model\.ts: .*must end in \.pt2"):
        aoti.compile_package(module, x, tmp_path / "model.ts", meta)
    with pytest.raises(ValueError, match="JSON-serializable"):
        aoti.compile_package(module, x, tmp_path / "m.aoti.pt2", {**meta, "bad": object()})
    with pytest.raises(ValueError, match="JSON-serializable"):
        aoti.compile_package(module, x, tmp_path / "m.aoti.pt2", {**meta, "bad": float("nan")})
    with pytest.raises(ValueError, match="rnn_kernels 'fast': not one of onednn, decomposed"):
        aoti.compile_package(module, x, tmp_path / "m.aoti.pt2", meta, rnn_kernels="fast")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        aoti.compile_package(module, x, tmp_path / "m.aoti.pt2", meta, device="meta")
    assert list(tmp_path.glob("*.pt2")) == [] and list(tmp_path.glob(".*")) == []


def test_package_metadata_strings() -> None:
    meta = {
        "window_length": 7,
        "ok": True,
        "scale": 0.1,
        "name": "a, b",
        "plane_z": [65.0, 66.25],
        "features": ["x", "y"],
        "units": {"x": "cm"},
        "nested": [[1, 2]],
        "comma_items": ["a,b"],
    }
    stored = aoti.package_metadata(meta, [-1, 7, 6])
    assert json.loads(stored[loading.METADATA_KEY]) == meta
    assert stored[loading.INPUT_SHAPE_KEY] == "-1,7,6"
    assert stored["tracklstm.window_length"] == "7"
    assert stored["tracklstm.ok"] == "true"
    assert float(stored["tracklstm.scale"]) == 0.1
    assert stored["tracklstm.name"] == "a, b"
    assert stored["tracklstm.plane_z"] == "65.0,66.25"
    assert stored["tracklstm.features"] == "x,y"
    for key in ("units", "nested", "comma_items"):
        assert f"tracklstm.{key}" not in stored
    assert all(isinstance(v, str) for v in stored.values())


def test_check_parity() -> None:
    x = torch.rand(10, 7, 6)

    def eager(t: torch.Tensor) -> torch.Tensor:
        return t[:, -1] * 2.0

    assert parity.check_parity(eager, eager, x) == 0.0
    seen: list[int] = []

    def counting(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.size(0))
        return eager(t)

    parity.check_parity(eager, counting, x)  # 10 rows cycled up to 300
    assert seen == [1, 7, 300]
    worst = parity.check_parity(eager, lambda t: eager(t) + 1e-3, x, tolerance=1e-2)
    assert worst == pytest.approx(1e-3, rel=1e-3)
    scaled = parity.check_parity(
        eager, lambda t: eager(t) + 1e-3, x, tolerance=1e-2, scale=torch.full((6,), 10.0)
    )
    assert scaled == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(parity.ParityError, match="tolerance 1e-06"):
        parity.check_parity(eager, lambda t: eager(t) + 1e-3, x)
    with pytest.raises(parity.ParityError, match="output shape"):
        parity.check_parity(eager, lambda t: t[:, -1, :5], x)
    with pytest.raises(parity.ParityError):
        parity.check_parity(eager, lambda t: eager(t) * float("nan"), x)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_package(tmp_path: Path) -> None:
    """Compiled for CUDA through the CLI (as rule export_aoti_cuda runs it): it loads on the GPU
    by default, and predict_windows (predict, evaluate) brings its answers back to the CPU."""
    run = make_run(tmp_path / "run", hidden_sizes=(16, 8))
    out = tmp_path / "model.cuda.aoti.pt2"
    args = ["--run", str(run), "--out", str(out), "--device", "cuda", "--tolerance", "1e-4"]
    assert aoti.main([*args, "--report", str(tmp_path / "report.json")]) == 0
    module, _, x = small_module(run)
    model, meta_back = loading.load_package(out)
    assert meta_back["window_length"] == 7
    assert model.package_metadata["AOTI_DEVICE_KEY"] == "cuda"
    got = model(x)  # CPU input: moved to the GPU
    assert got.device.type == "cuda"
    loaded, _ = load_model(out)
    answers = predict_windows(loaded, x.numpy(), batch=64)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(answers, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="compiled for cuda, cannot be loaded on cpu"):
        loading.load_package(out, device="cpu")


@pytest.mark.workflow
@pytest.mark.slow
def test_cuda_package_without_cuda_is_named(package: dict, tmp_path: Path) -> None:
    """A package compiled for CUDA, on a machine whose torch has no CUDA: an error naming the
    file and why, not a crash. (The package here is the CPU one, relabelled as CUDA's.)"""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    relabelled = tmp_path / "model.cuda.aoti.pt2"
    with zipfile.ZipFile(package["path"]) as src, zipfile.ZipFile(relabelled, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_metadata.json"):
                meta = json.loads(data)
                meta["AOTI_DEVICE_KEY"] = "cuda"
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    assert loading.read_package_metadata(relabelled)["AOTI_DEVICE_KEY"] == "cuda"
    with pytest.raises(ModelFileError, match=r"model\.cuda\.aoti\.pt2: compiled for cuda: .*CUDA"):
        load_model(relabelled)


def test_cuda_unavailable_is_clear(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    module, meta, x = small_module(make_run(tmp_path / "run"))
    with pytest.raises(loading.PackageError, match="CUDA is not available"):
        aoti.compile_package(module, x, tmp_path / "m.aoti.pt2", meta, device="cuda")


@pytest.mark.workflow
@pytest.mark.slow
def test_predict_and_evaluate_take_the_package(package: dict, tmp_path: Path) -> None:
    """`tracklstm predict` and `tracklstm evaluate` take the package as they take model.ts:
    the same answers as the workflow's TorchScript file of the same weights."""
    from tracklstm.evaluate.cli import main as evaluate_main
    from tracklstm.evaluate.predict import main as predict_main

    work = package["work"]
    inputs = work / "results" / "tiny" / "challenge" / "test_inputs.csv"
    answers = {}
    for name, path in (("ts", package["run"] / "model.ts"), ("aoti", package["path"])):
        dest = tmp_path / f"{name}.csv"
        args = ["--model", str(path), "--inputs", str(inputs), "--out", str(dest)]
        assert predict_main(args) == 0
        answers[name] = np.loadtxt(dest, delimiter=",")
    assert answers["ts"].shape[0] > 10
    np.testing.assert_allclose(answers["aoti"], answers["ts"], rtol=1e-5, atol=1e-5)
    ev = tmp_path / "evaluation"
    windows = work / "results" / "tiny" / "windows.h5"
    args = ["--model", str(package["path"]), "--windows", str(windows), "--out", str(ev)]
    assert evaluate_main([*args, "--no-plots"]) == 0
    got = json.loads((ev / "metrics.json").read_text())
    want = json.loads((package["run"] / "evaluation" / "tiny" / "metrics.json").read_text())
    assert got["n_test_windows"] == want["n_test_windows"] > 0
