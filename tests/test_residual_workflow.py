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


#: The one-state variant with a covariance head and the Jacobian term: what a track fit uses
#: (rule track_fit).
MARKOV = {
    "description": "a small one-state propagator with its covariance",
    "model": {**RESID["model"], "history": 0, "covariance": True},
    "training": {**RESID["training"], "covariance_epochs": 10, "jacobian_weight": 1000},
}


@pytest.fixture(scope="module")
def with_residual(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The finished tiny project with the variants added to the build: (folder, jobs run)."""
    work = copy_project(tiny_project, tmp_path_factory.mktemp("resid") / "project")
    cfg = read_config(work)
    cfg["models"]["resid"] = RESID
    cfg["models"]["markov"] = MARKOV
    cfg["build"]["models"] = ["small", "resid", "markov"]
    write_config(work, cfg)
    out = snakemake(work, "--cores", "2").stdout
    return work, {job.rule for job in parse_jobs(out)}


def test_adding_the_variant_runs_only_its_own_jobs(with_residual: tuple) -> None:
    _, rules = with_residual
    assert {"train", "export", "export_plain", "predict", "evaluate", "models_table"} <= rules
    assert "track_fit" in rules
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
        "markov",
        "straight line",
        "helix, nominal field",
        "field map, no material (noise floor on simulated tracks)",
    ]
    best = (res / "summary" / "models.html").read_text()
    assert "Best model: resid" in best or "Best model: markov" in best  # a helix-correcting one


def test_the_one_state_variant_learns_the_field_maps_jacobian(with_residual: tuple) -> None:
    """training.jacobian_weight through the workflow: the run says how close its Jacobian came
    on its training windows; the evaluation measures it on test states, beside the helix's, in
    metrics.json and on the summary page (a windowed model gets no such section)."""
    work, _ = with_residual
    res = work / "results" / "tiny"
    term = json.loads((res / "markov" / "training.json").read_text())["jacobian_term"]
    assert term["weight"] == 1000 and term["windows"] > 0
    jac = json.loads((res / "markov" / "evaluation" / "tiny" / "metrics.json").read_text())
    jac = jac["jacobian"]
    assert jac["states"] > 0 and jac["median"] <= jac["p95"]
    assert jac["median"] < jac["helix_median"], jac
    assert (
        "Transport Jacobian"
        in (res / "markov" / "evaluation" / "tiny" / "summary.html").read_text()
    )
    resid = json.loads((res / "resid" / "evaluation" / "tiny" / "metrics.json").read_text())
    assert "jacobian" not in resid
    assert json.loads((res / "resid" / "training.json").read_text())["jacobian_term"] is None


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


def test_the_plain_file_and_the_track_fit(with_residual: tuple) -> None:
    """Both residual variants get model.weights.txt, checked in C++ by the workflow; the
    one-state variant with a covariance is also fitted as a track fit uses it, beside the field
    map and the helix (the reference LSTM gets neither)."""
    work, _ = with_residual
    res = work / "results" / "tiny"
    for model, n_checks in (("resid", 3), ("markov", 9)):
        report = json.loads((res / model / "plain_checks.json").read_text())
        assert report["passed"] and len(report["checks"]) == n_checks
        assert (res / model / "model.weights.txt").read_text().startswith("tracklstm-propagator")
    assert not (res / "small" / "model.weights.txt").exists()
    assert not (res / "resid" / "track_fit").exists()
    fit = json.loads((res / "markov" / "track_fit" / "fit.json").read_text())
    assert set(fit["result"]) == {"field map", "helix", "learned"} and fit["tracks"] >= 2
    field = fit["result"]["field map"]
    assert 0.5 < field["chi2_ndf_mean"] < 2 and field["p_resolution_core"] < 0.1
    assert fit["result"]["learned"]["ms_per_track"] > 0
    assert (res / "markov" / "track_fit" / "fit.png").stat().st_size > 10_000


def test_the_calibration_plot_of_the_model_with_a_covariance(with_residual: tuple) -> None:
    """Only the variant that predicts its covariance gets the calibration plot, and its summary
    page has the covariance's table."""
    work, rules = with_residual
    res = work / "results" / "tiny"
    assert "calibration_plot" in rules
    assert (res / "markov" / "evaluation" / "tiny" / "calibration.png").stat().st_size > 30_000
    for model in ("small", "resid"):
        assert not (res / model / "evaluation" / "tiny" / "calibration.png").exists()
    page = (res / "markov" / "evaluation" / "tiny" / "summary.html").read_text()
    assert "Predicted covariance on the test windows" in page and "core width" in page
    assert "Predicted covariance" not in (res / "resid" / "evaluation" / "tiny" / "summary.html"
                                          ).read_text()  # fmt: skip
