"""Export: TorchScript, ONNX and torch.export files in physical units, with parity checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import toy_tracks

import tracklstm
from tracklstm.constants import FEATURES, PLANE_Z, UNITS
from tracklstm.export.formats import ExportCheckError, export, export_torchscript, main
from tracklstm.export.loading import METADATA_NAME, load_model, load_torchscript, read_metadata
from tracklstm.export.module import ExportInputError, load_physical_model
from tracklstm.export.parity import compare, example_inputs
from tracklstm.export.tensor_file import read_tensor, write_tensor
from tracklstm.models.build import build_model

#: float32 rounding, in normalized units (a fraction of each feature's range).
ROUNDING = 1e-6


def make_run(
    out: Path,
    hidden_sizes: tuple[int, ...] = (8, 4),
    cell: str = "lstm",
    seed: int = 0,
    window_length: int = 7,
    kind: str = "reference",
    **model: Any,
) -> Path:
    """A training run folder without training: random weights, the files train.py writes (a
    residual model gets its statistics fitted on toy windows, as training would); ``model``:
    more settings of the model (``history``, ``covariance``, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    settings = {
        "model": {
            "kind": kind,
            "cell": cell,
            "hidden_sizes": list(hidden_sizes),
            "dropout": 0.0,
            **model,
        }
    }
    core = build_model(settings["model"])
    tracks = toy_tracks(200, seed=seed)
    if kind == "residual":
        windows = np.concatenate([tracks[:, o : o + window_length + 1] for o in range(10)])
        windows = torch.from_numpy(windows.astype(np.float32))
        core.fit_statistics(windows[:, :-1], windows[:, -1])
    for name in ("weights_best.pt", "weights_last.pt"):
        torch.save(core.state_dict(), out / name)
    states = tracks.reshape(-1, len(FEATURES))
    summary = {
        "settings": settings,
        "norm_min": states.min(axis=0).tolist(),
        "norm_max": states.max(axis=0).tolist(),
        "window_length": window_length,
        "data_fingerprint": f"toy-{seed}",
    }
    (out / "training.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run exported to all three formats (the ONNX export takes several seconds)."""
    base = tmp_path_factory.mktemp("export")
    run = make_run(base / "run")
    files = {
        "run": run,
        "torchscript": base / "out" / "model.ts",
        "onnx": base / "out" / "model.onnx",
        "program": base / "out" / "model.pt2",
        "report": base / "out" / "export_checks.json",
    }
    export(
        run,
        torchscript=files["torchscript"],
        onnx=files["onnx"],
        program=files["program"],
        report=files["report"],
    )
    return files


def eager_outputs(run: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = load_physical_model(run)
    with torch.no_grad():
        return model(x).numpy()


def test_all_files_written_and_checks_reported(exported: dict[str, Path]) -> None:
    out_dir = exported["torchscript"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "export_checks.json",
        "model.onnx",
        "model.pt2",
        "model.ts",
    ]
    report = json.loads(exported["report"].read_text())
    assert report["passed"] is True
    formats = {(c["format"], c["batch"]) for c in report["checks"]}
    assert formats == {(f, n) for f in ("torchscript", "torch.export", "onnx") for n in (1, 7, 300)}
    for check in report["checks"]:
        assert check["passed"] and 0 <= check["max_diff"] <= ROUNDING
        assert check["diff_units"] == "normalized"
        assert set(check["max_abs_diff"]) == set(FEATURES)


@pytest.mark.parametrize("kind", ["torchscript", "onnx", "program"])
def test_metadata_travels_with_each_file(exported: dict[str, Path], kind: str) -> None:
    meta = read_metadata(exported[kind])
    summary = json.loads((exported["run"] / "training.json").read_text())
    assert meta["plane_z"] == list(PLANE_Z)
    assert meta["norm_min"] == pytest.approx(summary["norm_min"])
    assert meta["norm_max"] == pytest.approx(summary["norm_max"])
    assert meta["window_length"] == 7
    assert meta["features"] == list(FEATURES)
    assert meta["units"] == UNITS
    assert meta["data_fingerprint"] == "toy-0"
    assert meta["tracklstm_version"] == tracklstm.__version__


def test_torchscript_attributes(exported: dict[str, Path]) -> None:
    module, meta = load_torchscript(exported["torchscript"])
    assert module.window_length == 7
    assert module.n_features == 6
    assert list(module.features) == list(FEATURES)
    assert list(module.units) == [UNITS[f] for f in FEATURES]
    assert list(module.plane_z) == pytest.approx(PLANE_Z)
    assert list(module.norm_min) == pytest.approx(meta["norm_min"])
    assert module.data_fingerprint == "toy-0"
    assert json.loads(module.metadata_json) == meta


def test_torchscript_rejects_wrong_shape(exported: dict[str, Path]) -> None:
    module, _ = load_torchscript(exported["torchscript"])
    with pytest.raises(torch.jit.Error, match=r"expected input \(batch, 7, 6\).*\[3, 5, 6\]"):
        module(torch.zeros(3, 5, 6))


def test_torchscript_in_fresh_process_matches_eager(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    """Loaded by a Python that imports only torch (not this package), as a host would."""
    summary = json.loads((exported["run"] / "training.json").read_text())
    x = example_inputs(summary, n=500, seed=11)
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import json, sys
import torch
extra = {{"{METADATA_NAME}": ""}}
model = torch.jit.load(sys.argv[1], map_location="cpu", _extra_files=extra)
with torch.inference_mode():
    y = model(torch.load(sys.argv[2]))
torch.save(y, sys.argv[3])
meta = json.loads(extra["{METADATA_NAME}"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tracklstm")
print(json.dumps({{"window_length": meta["window_length"], "tracklstm_modules": loaded}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(exported["torchscript"]), "x.pt", "y.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info == {"window_length": 7, "tracklstm_modules": []}
    got = torch.load(tmp_path / "y.pt").numpy()
    want = eager_outputs(exported["run"], x)
    assert got.shape == (500, 6)
    diff = compare(got, want, summary["norm_min"], summary["norm_max"])
    assert diff["max_norm_diff"] <= ROUNDING


@pytest.mark.parametrize("batch", [1, 33, 1000])
def test_onnx_dynamic_batch_matches_eager(exported: dict[str, Path], batch: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "states"
    assert inp.shape == ["batch", 7, 6]
    assert session.get_outputs()[0].shape == ["batch", 6]
    summary = json.loads((exported["run"] / "training.json").read_text())
    x = example_inputs(summary, n=batch, seed=batch)
    got = session.run(None, {"states": x.numpy()})[0]
    diff = compare(got, eager_outputs(exported["run"], x), summary["norm_min"], summary["norm_max"])
    assert diff["max_norm_diff"] <= ROUNDING


def test_torch_export_program_matches_eager(exported: dict[str, Path]) -> None:
    extra = {METADATA_NAME: ""}
    program = torch.export.load(str(exported["program"]), extra_files=extra)
    assert json.loads(extra[METADATA_NAME])["window_length"] == 7
    summary = json.loads((exported["run"] / "training.json").read_text())
    for batch in (2, 45):
        x = example_inputs(summary, n=batch, seed=batch)
        with torch.no_grad():
            got = program.module()(x).numpy()
        diff = compare(
            got, eager_outputs(exported["run"], x), summary["norm_min"], summary["norm_max"]
        )
        assert diff["max_norm_diff"] <= ROUNDING


def test_physical_units_in_and_out(exported: dict[str, Path]) -> None:
    """The exported model = normalize, core model, denormalize: no normalization left to hosts."""
    module, meta = load_torchscript(exported["torchscript"])
    eager, _ = load_physical_model(exported["run"])
    lo = torch.tensor(meta["norm_min"])
    scale = torch.tensor(meta["norm_max"]) - lo
    x = example_inputs({**meta}, n=20, seed=3)
    with torch.no_grad():
        by_hand = eager.core((x - lo) / scale) * scale + lo
        got = module(x)
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-5)


def test_gru_run_exports(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", hidden_sizes=(6,), cell="gru")
    meta = export_torchscript(run, tmp_path / "model.ts")
    assert meta["model"]["cell"] == "gru"
    module, _ = load_torchscript(tmp_path / "model.ts")
    x = example_inputs(meta, n=9)
    with torch.no_grad():
        assert torch.equal(module(x), torch.from_numpy(eager_outputs(run, x)))


def test_failed_check_leaves_no_file(tmp_path: Path) -> None:
    """A negative tolerance fails every check: none of the files may remain, not even temps."""
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    with pytest.raises(ExportCheckError, match="parity check"):
        export(
            run,
            torchscript=out / "model.ts",
            program=out / "model.pt2",
            report=out / "export_checks.json",
            tolerance=-1.0,
        )
    assert list(out.iterdir()) == []


def test_cli_failure_exit_code_and_no_files(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    # Tolerance 0: onnxruntime's LSTM is not bit-exact, so its parity check fails.
    files = ["--out", str(out / "model.ts"), "--onnx", str(out / "model.onnx")]
    rc = main(["--run", str(run), *files, "--tolerance", "0"])
    assert rc == 1
    assert not (out / "model.ts").exists()
    assert list(out.glob("*")) == []
    assert "parity check(s) failed" in capfd.readouterr().err


def test_cli_refuses_a_negative_tolerance(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    rc = main(["--run", str(run), "--out", str(tmp_path / "model.ts"), "--tolerance", "-1"])
    assert rc == 1 and not (tmp_path / "model.ts").exists()
    assert "export.tolerance: expected a number >= 0, got -1.0" in capfd.readouterr().err


def test_cli_writes_torchscript(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    rc = main(["--run", str(run), "--out", str(tmp_path / "model.ts"), "--weights", "last"])
    assert rc == 0
    assert read_metadata(tmp_path / "model.ts")["weights"] == "last"


def test_missing_run_files_name_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "weights_best.pt").unlink()
    with pytest.raises(ExportInputError, match=r"weights_best\.pt"):
        export(run, torchscript=tmp_path / "model.ts")
    summary = json.loads((run / "training.json").read_text())
    del summary["norm_max"]
    (run / "training.json").write_text(json.dumps(summary))
    with pytest.raises(ExportInputError, match="norm_max"):
        export(run, torchscript=tmp_path / "model.ts", weights="last")


def test_compare_reports_physical_and_normalized_differences() -> None:
    want = np.zeros((4, 6))
    got = want.copy()
    got[2, 2] = 0.5  # z off by 0.5 cm over a 250 cm range
    diff = compare(got, want, [0, 0, 0, 0, 0, 0], [1, 1, 250, 1, 1, 1])
    assert diff["max_abs_diff"]["z"] == 0.5
    assert diff["max_abs_diff"]["x"] == 0.0
    assert diff["max_norm_diff"] == pytest.approx(0.002)


def test_tensor_file_round_trip_and_errors(tmp_path: Path) -> None:
    a = np.arange(2 * 7 * 6, dtype=np.float32).reshape(2, 7, 6) / 3
    write_tensor(tmp_path / "a.bin", a)
    raw = (tmp_path / "a.bin").read_bytes()
    assert raw[:8] == b"TLSTMF32" and len(raw) == 16 + 3 * 8 + a.size * 4
    np.testing.assert_array_equal(read_tensor(tmp_path / "a.bin"), a)
    (tmp_path / "b.bin").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=r"b\.bin"):
        read_tensor(tmp_path / "b.bin")
    (tmp_path / "c.bin").write_bytes(b"NOTMAGIC" + raw[8:])
    with pytest.raises(ValueError, match="bad magic"):
        read_tensor(tmp_path / "c.bin")


@pytest.mark.workflow
@pytest.mark.slow
def test_export_and_predict_rules(tmp_path: Path, tiny_project: Path) -> None:
    """The rules' outputs from a tiny trained run; a failed parity check leaves no export file."""
    from conftest import copy_project
    from workflow_runs import snakemake

    work = copy_project(tiny_project, tmp_path / "work")
    run = work / "results" / "tiny" / "small"
    outputs = ["model.ts", "model.onnx", "model.pt2", "export_checks.json"]
    answers = "results/tiny/small/evaluation/tiny/challenge_predictions.csv"
    snakemake(work, "--cores", "2", f"results/tiny/small/{outputs[1]}", answers)
    assert all((run / name).is_file() for name in outputs)
    inputs = (work / "results" / "tiny" / "challenge" / "test_inputs.csv").read_text()
    predicted = (work / answers).read_text().splitlines()
    assert len(predicted) == len(inputs.splitlines()) > 0
    assert all(len(line.split(",")) == 5 for line in predicted)
    report = json.loads((run / "export_checks.json").read_text())
    assert report["passed"] and report["metadata"]["window_length"] == 7
    assert {c["format"] for c in report["checks"]} == {"torchscript", "torch.export", "onnx"}

    # Tolerance 0: TorchScript and torch.export reproduce the eager model bit for bit here,
    # onnxruntime's LSTM does not; the ONNX check fails after the other files were written.
    strict = work / "strict.yaml"
    strict.write_text("export:\n  tolerance: 0.0\n")
    result = snakemake(
        work, "--cores", "1", "--configfile", "config.yaml", str(strict),
        "--forcerun", "export", f"results/tiny/small/{outputs[0]}", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert not any((run / name).exists() for name in outputs)
    assert [p.name for p in run.glob(".*tmp*")] == []
    log = (work / "results" / "tiny" / "logs" / "export" / "small.log").read_text()
    # which batch's ONNX output differs in the last bit depends on the data drawn
    assert re.search(r"no file was written: onnx batch \d+", log), log


@pytest.mark.slow  # two whole exports, each in a process of its own
def test_exports_are_the_same_bytes_in_two_folders_and_two_processes(tmp_path: Path) -> None:
    """One run exported from two copies of the package (two project folders), in two processes
    with different hash seeds: every file is the same, byte for byte, and holds no path of
    either folder, of the environment, or of a temporary file. The TorchScript output carries
    no autograd history."""
    run = make_run(tmp_path / "run")
    package = Path(tracklstm.__file__).parent
    names = ("model.ts", "model.onnx", "model.pt2")
    made: dict[str, dict[str, bytes]] = {}
    for folder, seed in (("a", "1"), ("b", "2")):
        src = tmp_path / folder / "src"
        shutil.copytree(package, src / "tracklstm", ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": seed}
        where = subprocess.run(
            [sys.executable, "-c", "import tracklstm; print(tracklstm.__file__)"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert where.stdout.startswith(str(src)), where.stdout
        out = tmp_path / folder / "out"
        command = [sys.executable, "-m", "tracklstm.export", "--run", str(run)]
        command += ["--out", str(out / names[0]), "--onnx", str(out / names[1])]
        command += ["--program", str(out / names[2])]
        done = subprocess.run(command, env=env, cwd=tmp_path / folder, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        made[folder] = {name: (out / name).read_bytes() for name in names}
    for name in names:
        data = made["a"][name]
        assert data == made["b"][name], name
        for place in (tmp_path, package, Path(sys.prefix), Path(sys.base_prefix)):
            assert str(place).encode() not in data, (name, place)
        assert b"site-packages" not in data and b".tmp" not in data, name
    model = torch.jit.load(tmp_path / "a" / "out" / "model.ts")
    x = example_inputs(json.loads((run / "training.json").read_text()), n=3)
    y = model(x)
    assert y.grad_fn is None and not y.requires_grad
    assert torch.equal(y, load_physical_model(run)[0](x))


def test_truncated_or_foreign_weights_are_one_line_naming_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path / "run")
    weights = run / "weights_best.pt"
    whole = weights.read_bytes()
    foreign = make_run(tmp_path / "other", hidden_sizes=(5,)) / "weights_best.pt"
    cases = [
        (whole[: len(whole) // 2], "not a readable weights file (", "corrupt or truncated"),
        (b"", "not a readable weights file (", "an empty file"),
        (b"junk" * 100, "not a readable weights file (", "400 bytes, corrupt or truncated"),
        (foreign.read_bytes(), "not the weights of this run's model", "Missing key(s)"),
    ]
    for data, says, why in cases:
        weights.write_bytes(data)
        rc = main(["--run", str(run), "--out", str(tmp_path / "out" / "model.ts")])
        err = capfd.readouterr().err
        assert rc == 1 and not (tmp_path / "out" / "model.ts").exists()
        assert f"{weights}: {says}" in err and why in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # several seconds: whole exports
def test_residual_variant_exports_with_the_plane_z_exactly(tmp_path: Path) -> None:
    """The helix-correcting variant exports like the reference: every file passes its parity
    check, and the z it answers is the next plane's z exactly (float32), in every format."""
    run = make_run(tmp_path / "run", hidden_sizes=(16, 16), kind="residual")
    out = tmp_path / "out"
    report = export(
        run, torchscript=out / "model.ts", onnx=out / "model.onnx", program=out / "model.pt2"
    )
    assert report["passed"] and report["metadata"]["model_kind"] == "residual"
    tracks = toy_tracks(50, seed=9).astype(np.float32)
    x = np.concatenate([tracks[:, o : o + 7] for o in (0, 5, 17)])
    want_z = np.repeat(np.float32([PLANE_Z[7], PLANE_Z[12], PLANE_Z[24]]), 50)
    for name in ("model.ts", "model.onnx", "model.pt2"):
        model, meta = load_model(out / name)
        got = np.asarray(model(torch.from_numpy(x)))
        assert meta["model_kind"] == "residual"
        assert np.array_equal(got[:, 2], want_z), name
        assert np.isfinite(got).all()
