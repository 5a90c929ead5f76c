"""The real Snakemake runs the whole pipeline on a tiny simulated dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import copy_project
from workflow_runs import ROOT, TINY_CONFIG, copy_workflow, snakemake

from tracklstm.constants import COLUMNS, PLANE_Z

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tiny_project: Path) -> Path:
    return tiny_project / "results" / "tiny"


def test_raw_csv_has_training_file_format(tiny_run: Path) -> None:
    for shard in ("shard000", "shard001"):
        lines = (tiny_run / "raw" / f"{shard}.csv").read_text().splitlines()
        assert lines[0].split(",") == list(COLUMNS)
        assert len(lines) == 1 + 150
        row = np.array(lines[1].split(","), dtype=float)
        np.testing.assert_allclose(row[2::6], PLANE_Z, atol=1e-3)


def test_parquet_is_float32_with_all_tracks(tiny_run: Path) -> None:
    table = pq.read_table(tiny_run / "tracks.parquet")
    assert table.num_rows == 300
    assert table.column_names == list(COLUMNS)
    assert all(str(t) == "float" for t in table.schema.types)
    quality = json.loads((tiny_run / "quality" / "shard000.json").read_text())
    assert quality["rows"] == 150


def test_windows_file(tiny_run: Path) -> None:
    with h5py.File(tiny_run / "windows.h5") as h5:
        total = 0
        for split in ("train", "validation", "test"):
            x, y = h5[split]["inputs"][...], h5[split]["targets"][...]
            assert x.shape[1:] == (7, 6) and y.shape[1:] == (6,) and len(x) == len(y) > 0
            assert np.isfinite(x).all() and np.isfinite(y).all()
            total += len(x)
        # every track complete: 18 windows each (targets at planes 7..24)
        assert total == 300 * 18
        tracks = [set(h5["tracks"][s][...]) for s in ("train", "validation", "test")]
        assert not (tracks[0] & tracks[1] or tracks[0] & tracks[2] or tracks[1] & tracks[2])
        lo, hi = h5.attrs["norm_min"], h5.attrs["norm_max"]
        assert lo.shape == hi.shape == (6,) and (hi > lo).all()


def test_training_outputs(tiny_run: Path) -> None:
    run = tiny_run / "small"
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_mae,train_mse,val_mae,val_mse,lr")
    assert len(lines) == 1 + 2
    summary = json.loads((run / "training.json").read_text())
    assert summary["settings"]["model"]["hidden_sizes"] == [16, 8]
    assert summary["settings"]["training"]["epochs"] == 2
    assert not (run / "checkpoint.pt").exists()


def test_exported_model_loads_and_predicts(tiny_run: Path) -> None:
    code = (
        "import sys, torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "x = torch.tensor([[[0., 0., z, 0.1, -0.05, 1.5] for z in "
        f"{list(PLANE_Z[:7])}]])\n"
        "y = m(x)\n"
        "assert y.shape == (1, 6), y.shape\n"
        "assert torch.isfinite(y).all()\n"
        "print(float(y[0, 2]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_run / "small" / "model.ts")],
        capture_output=True,
        text=True,
        check=True,
    )
    # the predicted z is in the detector, physical units (cm)
    assert 60 < float(out.stdout.strip()) < 400


def test_evaluation_outputs(tiny_run: Path) -> None:
    ev = tiny_run / "small" / "evaluation" / "tiny"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_test_windows"] > 0
    for stats in metrics["residuals"].values():
        assert np.isfinite(stats["rms"])
    for png in ev.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ev / "residuals.png").exists() and (ev / "loss_curves.png").exists()


def test_second_run_has_nothing_to_do(tiny_run: Path) -> None:
    result = snakemake(tiny_run.parents[1], "--cores", "1", "-n")
    assert "Nothing to be done" in result.stdout


def test_finished_project_copied_elsewhere_is_up_to_date(
    tiny_project: Path, tmp_path: Path
) -> None:
    """`cp -a` of a finished project to another folder plans nothing there (the module files
    each rule declares are relative paths)."""
    moved = copy_project(tiny_project, tmp_path / "elsewhere" / "project")
    result = snakemake(moved, "--cores", "1", "-n")
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]
    code = snakemake(moved, "--cores", "1", "-n", "-F", "results/tiny/small/model.ts")
    assert "src/tracklstm/train/" in code.stdout and str(tiny_project) not in code.stdout


def test_dry_run_of_default_config_lists_every_stage(tmp_path: Path) -> None:
    """The project's own config, dry-run in a copy (whatever `make run` left in the project)."""
    workdir = copy_workflow(tmp_path / "work", ROOT / "config.yaml")
    out = snakemake(workdir, "-n", "--cores", "2", "--quiet", "rules").stdout
    for rule in ("simulate", "to_parquet", "windows", "train", "export", "evaluate"):
        assert rule in out, out


def test_bad_config_key_is_named_before_any_job(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path, TINY_CONFIG)
    cfg = (workdir / "config.yaml").read_text().replace("batch_size: 128", "batch_sise: 128")
    (workdir / "config.yaml").write_text(cfg)
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "batch_sise" in result.stdout
    assert not (workdir / "results").exists()


def test_bad_config_value_is_named(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path, TINY_CONFIG)
    cfg = (workdir / "config.yaml").read_text().replace("batch_size: 128", "batch_size: 0")
    (workdir / "config.yaml").write_text(cfg)
    result = snakemake(workdir, "--cores", "1", "-n", check=False)
    assert result.returncode != 0
    out = result.stdout
    assert "batch_size" in out and "minimum" in out


def test_readme_python_snippets_load_the_exported_files(tiny_project: Path) -> None:
    """The README's TorchScript and ONNX snippets, run as a user would, on a finished run."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    run = tiny_project / "results" / "tiny" / "small"
    ran = 0
    for code in blocks:
        if "aoti_load_package" in code:
            continue  # needs export.aoti: tests/test_aoti.py loads the package
        code = code.replace("results/demo/residual", str(run))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, code + done.stderr
        assert done.stdout.startswith("reference"), done.stdout
        ran += 1
    assert ran == 2


def test_jobs_run_the_python_that_runs_snakemake(tmp_path: Path) -> None:
    """`.venv/bin/snakemake` typed without activating the venv: the jobs must not pick up
    another `python` from PATH (here one that fails), but the one running Snakemake."""
    workdir = copy_workflow(tmp_path / "work", TINY_CONFIG)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 'the wrong python' >&2\nexit 3\n")
    (fake / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE_")}
    env["PATH"] = f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"
    done = snakemake(workdir, "--cores", "1", "results/tiny/raw/shard000.csv", env=env, check=False)
    assert done.returncode == 0, done.stdout[-6000:]
    assert (workdir / "results" / "tiny" / "raw" / "shard000.csv").stat().st_size > 0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            lambda c: (
                c["datasets"]["tiny"].update(windows={"length": 3}),
                c["models"]["small"]["model"].update(kind="residual"),
            ),
            "windows.length",
        ),
        (
            lambda c: c.update(windows={"split": {"train": 0.9, "validation": 0.5, "test": 0.5}}),
            "windows.split",
        ),
        (
            lambda c: c.update(evaluation={"helix_field": [[200, 2.0], [100, 1.0]]}),
            "evaluation.helix_field",
        ),
    ],
)
def test_settings_a_job_would_fail_on_stop_snakemake_before_it_removes_anything(
    tiny_project: Path, tmp_path: Path, edit, key: str
) -> None:
    """A finished project, then settings that only a job would have found wrong: Snakemake
    stops at once with one line naming the key, and the model built before is still there."""
    work = copy_project(tiny_project, tmp_path / "project")
    weights = work / "results" / "tiny" / "small" / "weights_best.pt"
    before = weights.read_bytes()
    config = yaml.safe_load((work / "config.yaml").read_text())
    edit(config)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(work, "--cores", "1", check=False)
    assert result.returncode != 0
    assert key in result.stdout and "Select jobs" not in result.stdout, result.stdout[-3000:]
    assert weights.read_bytes() == before
