"""The helix-correcting variant through the real workflow, beside the reference model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_project
from workflow_runs import parse_jobs, read_config, snakemake, write_config

from tracklstm.constants import PLANE_Z

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

#: A small residual variant, a few seconds of training on the tiny dataset.
RESID = {
    "description": "a small helix-correcting network",
    "model": {"kind": "residual", "body": "mlp", "hidden_sizes": [32, 32]},
    "training": {
        "epochs": 30,
        "batch_size": 128,
        "learning_rate": 3.0e-3,
        "loss": "mse",
        "grad_clip_value": None,
        "scheduler": {"kind": "cosine", "min_lr": 3.0e-5},
        "early_stopping": {"patience": None},
    },
}


@pytest.fixture(scope="module")
def with_residual(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The finished tiny project with the variant added to the build: (folder, jobs run)."""
    work = copy_project(tiny_project, tmp_path_factory.mktemp("resid") / "project")
    cfg = read_config(work)
    cfg["models"]["resid"] = RESID
    cfg["build"]["models"] = ["small", "resid"]
    write_config(work, cfg)
    out = snakemake(work, "--cores", "2").stdout
    return work, {job.rule for job in parse_jobs(out)}


def test_adding_the_variant_runs_only_its_own_jobs(with_residual: tuple) -> None:
    _, rules = with_residual
    assert {"train", "export", "predict", "evaluate", "models_table"} <= rules
    assert not rules & {"simulate", "to_parquet", "windows", "challenge"}


def test_variant_beats_the_helix_and_the_report_table_says_so(with_residual: tuple) -> None:
    work, _ = with_residual
    res = work / "results" / "tiny"
    metrics = json.loads((res / "resid" / "evaluation" / "tiny" / "metrics.json").read_text())
    ratios = metrics["network_over_baseline"]
    # trained for seconds on 150 tracks: already well under the helix's errors
    assert all(r < 1 for r in ratios["helix"]["rms"].values()), ratios["helix"]
    assert ratios["helix"]["challenge_score"] < 1 and ratios["helix"]["score_windows"] < 1
    assert set(ratios) >= {"helix", "field_only", "straight"}
    real = metrics["real_track"]
    assert real["n_windows"] == 17 and real["target_planes"] == [7, 23]
    assert real["network"] < real["helix"]
    table = (res / "summary" / "models.md").read_text().splitlines()
    assert [row.split(" | ")[0].strip("| ") for row in table[2:]] == [
        "small",
        "resid",
        "straight line",
        "helix, nominal field",
        "field map, no material (noise floor on simulated tracks)",
    ]
    assert "Best model: resid" in (res / "summary" / "models.html").read_text()


def test_variant_exports_predicts_and_answers_the_plane_z(with_residual: tuple) -> None:
    work, _ = with_residual
    run = work / "results" / "tiny" / "resid"
    checks = json.loads((run / "export_checks.json").read_text())
    assert checks["passed"] and {c["format"] for c in checks["checks"]} == {
        "torchscript",
        "torch.export",
        "onnx",
    }
    model = torch.jit.load(run / "model.ts")
    x = torch.zeros(3, 7, 6)
    x[:, :, 2] = torch.tensor(PLANE_Z[10:17], dtype=torch.float32)
    x[:, :, 3:] = torch.tensor([0.05, -0.1, 1.5])
    assert torch.equal(model(x)[:, 2], torch.full((3,), float(np.float32(PLANE_Z[17]))))
    answers = run / "evaluation" / "tiny" / "challenge_predictions.csv"
    inputs = work / "results" / "tiny" / "challenge" / "test_inputs.csv"
    assert len(answers.read_text().splitlines()) == len(inputs.read_text().splitlines()) > 0
