"""Evaluation of exported models on held-out test tracks, with baselines, walking and the report.

The models here are TorchScript files built in the test: an "oracle" that propagates the last
state on the exact helix of the toy tracks (so its residuals are float32 rounding), and an
untrained small network. The workflow test runs Snakemake once on a tiny configuration that
evaluates a trained model on its own and on another dataset, an external model file, a comparison
and the HTML report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import toy_tracks, write_tracks_csv
from torch import nn

from tracklstm.constants import FEATURES, PLANE_Z
from tracklstm.data.challenge import write_challenge
from tracklstm.data.to_parquet import convert
from tracklstm.data.windows import build, make_windows
from tracklstm.evaluate.cli import main as evaluate_main
from tracklstm.evaluate.metrics import (
    EvaluationInputError,
    complete_tracks,
    load_model,
    reconstruct_tracks,
    score_challenge_file,
    walk_baseline,
    walk_network,
)
from tracklstm.evaluate.predict import main as predict_main
from tracklstm.evaluate.quality import quality_table
from tracklstm.evaluate.run import evaluate
from tracklstm.files import sha256_file
from tracklstm.models.build import build_model
from tracklstm.models.reference import PhysicalModel
from tracklstm.physics.helix import straight_line

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "residuals.png",
    "truth_vs_prediction.png",
    "resolution_per_plane.png",
    "resolution_vs_momentum.png",
    "resolution_vs_pt.png",
    "walk.png",
)


class HelixOracle(nn.Module):
    """The next plane's state on a helix in q·Bz = 2 T: exact on ``conftest.toy_tracks``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("plane_z", torch.tensor(PLANE_Z, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, -1].double()
        last = self.plane_z.shape[0] - 1
        idx = torch.searchsorted(self.plane_z, s[:, 2] + 0.5).clamp(max=last)
        z1 = self.plane_z[idx]
        dz = z1 - s[:, 2]
        a = -0.006 * dz / s[:, 5]
        half = 0.5 * a
        chord = torch.where(half.abs() > 1e-12, torch.sin(half) / half, torch.ones_like(half))
        step = dz / s[:, 5] * chord
        px, py = s[:, 3], s[:, 4]
        out = torch.stack(
            [
                s[:, 0] + step * (px * torch.cos(half) - py * torch.sin(half)),
                s[:, 1] + step * (px * torch.sin(half) + py * torch.cos(half)),
                z1,
                px * torch.cos(a) - py * torch.sin(a),
                px * torch.sin(a) + py * torch.cos(a),
                s[:, 5],
            ],
            dim=1,
        )
        return out.float()


def save_torchscript(module: nn.Module, path: Path, meta: dict) -> Path:
    torch.jit.script(module.eval()).save(
        str(path), _extra_files={"metadata.json": json.dumps(meta)}
    )
    return path


def untrained_model(path: Path, windows: Path, length: int = 7, seed: int = 0) -> Path:
    """A TorchScript of an untrained small PhysicalModel, with the export's metadata keys."""
    torch.manual_seed(seed)
    with h5py.File(windows) as h5:
        lo, hi = np.asarray(h5.attrs["norm_min"]), np.asarray(h5.attrs["norm_max"])
    model = PhysicalModel(build_model({"hidden_sizes": [8]}), torch.tensor(lo), torch.tensor(hi))
    meta = {
        "window_length": length,
        "norm_min": lo.tolist(),
        "norm_max": hi.tolist(),
        "plane_z": list(PLANE_Z),
        "features": list(FEATURES),
    }
    return save_torchscript(model, path, meta)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy tracks (uniform 2 T helices): windows, challenge files, models, predictions."""
    d = tmp_path_factory.mktemp("toy")
    csv_path = write_tracks_csv(toy_tracks(300, seed=11), d / "tracks.csv")
    convert(csv_path, d / "tracks.parquet")
    build(d / "tracks.parquet", d / "windows.h5", seed=5)
    write_challenge(d / "tracks.parquet", d / "windows.h5", d / "inputs.csv", d / "answers.csv")
    with h5py.File(d / "windows.h5") as h5:
        lo, hi = h5.attrs["norm_min"].tolist(), h5.attrs["norm_max"].tolist()
    oracle = save_torchscript(
        HelixOracle(), d / "oracle.ts", {"window_length": 7, "norm_min": lo, "norm_max": hi}
    )
    rc = predict_main(
        ["--model", str(oracle), "--inputs", str(d / "inputs.csv"), "--out", str(d / "pred.csv")]
    )
    assert rc == 0
    return {
        "dir": d,
        "windows": d / "windows.h5",
        "inputs": d / "inputs.csv",
        "answers": d / "answers.csv",
        "oracle": oracle,
        "predictions": d / "pred.csv",
    }


@pytest.fixture(scope="module")
def oracle_eval(toy: dict[str, Path]) -> tuple[dict, Path]:
    out = toy["dir"] / "eval_oracle"
    metrics_csv = toy["dir"] / "metrics.csv"
    metrics_csv.write_text(
        "epoch,train_mae,train_mse,val_mae,val_mse,lr,seconds,samples_per_s\n"
        "1,0.1,0.01,0.08,0.009,0.001,1.0,100\n2,0.05,0.004,0.06,0.005,0.0005,1.0,100\n"
    )
    result = evaluate(
        toy["oracle"],
        toy["windows"],
        out,
        metrics_csv=metrics_csv,
        bins=40,
        challenge_inputs=toy["inputs"],
        challenge_answers=toy["answers"],
        challenge_predictions=toy["predictions"],
        model_name="toy/oracle",
        data_name="toy",
    )
    return result, out


def test_oracle_residuals_are_rounding_and_baselines_are_scored(oracle_eval) -> None:
    result, out = oracle_eval
    with h5py.File(out.parent / "windows.h5") as h5:
        n_windows = len(h5["test"]["targets"])
        n_tracks = len(np.unique(h5["test"]["track"][...]))
    assert result["n_test_windows"] == n_windows
    assert result["data"]["n_test_tracks"] == n_tracks
    res = result["residuals"]
    assert res["x"]["rms"] < 1e-3 and res["y"]["rms"] < 1e-3  # cm
    assert res["px"]["rms"] < 1e-5 and res["pz"]["rms"] < 1e-5  # GeV/c
    assert res["x"]["q16"] <= 0 <= res["x"]["q84"]
    # the helix baseline in the nominal 2 T field is exact on these tracks (up to the 6 digits
    # of the CSV and the float32 of windows.h5); the straight line is not
    assert result["baselines"]["helix"]["residuals"]["px"]["rms"] < 1e-5
    assert result["baselines"]["helix"]["residuals"]["x"]["rms"] < 1e-3
    straight = result["baselines"]["straight"]
    assert straight["residuals"]["x"]["rms"] > 0.01
    assert straight["score_windows"] > 100 * result["score_windows"]
    assert result["baseline_over_network"]["straight"]["score_windows"] > 100
    assert any("straight line" in v and "lower (better)" in v for v in result["verdict"])


def test_challenge_file_is_scored_for_network_and_baselines(oracle_eval, toy) -> None:
    result, _ = oracle_eval
    ch = result["challenge"]
    assert ch["n_tracks"] == len(toy["answers"].read_text().splitlines())
    assert ch["network"]["score"] < 0.05
    assert ch["straight"]["score"] > 20 * ch["network"]["score"]
    assert result["baseline_over_network"]["straight"]["challenge_score"] > 20
    # the straight line's answers written as a "network" prediction file score the same
    states = [np.array(r.split(","), float) for r in toy["inputs"].read_text().splitlines()]
    last = np.stack([r[:-1].reshape(-1, 6)[-1] for r in states])
    pred = straight_line(last, np.array([r[-1] for r in states]))[:, [0, 1, 3, 4, 5]]
    path = toy["dir"] / "straight_pred.csv"
    np.savetxt(path, pred, delimiter=",", fmt="%.9g")
    again = score_challenge_file(toy["inputs"], toy["answers"], path, {})
    assert again["network"]["score"] == pytest.approx(ch["straight"]["score"], rel=1e-6)


def test_per_plane_momentum_and_walk_numbers(oracle_eval) -> None:
    result, _ = oracle_eval
    pp = result["per_plane"]
    assert pp["planes"] == list(range(7, 25))
    assert sum(pp["network"]["n"]) == result["n_test_windows"]
    # the straight line fails most across the gaps between plane groups (targets 7, 13, 19)
    rms = dict(zip(pp["planes"], pp["straight"]["x"]["rms"], strict=True))
    assert min(rms[7], rms[13], rms[19]) > 10 * max(rms[p] for p in (8, 9, 10, 14, 20))
    for var in ("p", "pt"):
        b = result["vs_momentum"][var]
        assert sum(b["network"]["n"]) == result["n_test_windows"]
        assert len(b["edges"]) == len(b["centers"]) + 1 == 9
        assert np.all(np.diff(b["edges"]) > 0)
    walk = result["walk"]
    assert walk["n_tracks"] == result["data"]["n_test_tracks"]
    assert walk["planes"] == list(range(7, 25))
    assert max(walk["network"]["x"]["rms"]) < 0.01  # the oracle stays on the track
    # the straight line's error grows along the walk
    assert walk["straight"]["x"]["rms"][-1] > walk["straight"]["x"]["rms"][0]
    assert walk["straight"]["score"][-1] > 100 * walk["network"]["score"][-1]
    assert result["training"]["best_epoch"] == 2
    assert result["training"]["history"]["val_mae"] == [0.08, 0.06]


def test_outputs_written(oracle_eval) -> None:
    result, out = oracle_eval
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["residuals"]["x"]["rms"] == pytest.approx(result["residuals"]["x"]["rms"])
    for f in FEATURES:  # the histograms behind residuals.png hold every window
        h = on_disk["histograms"][f]
        assert len(h["edges"]) == len(h["counts"]) + 1 == 41
        assert sum(h["counts"]) + h["underflow"] + h["overflow"] == result["n_test_windows"]
    for name in (*PLOTS, "loss_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    page = (out / "summary.html").read_text()
    for text in ("toy/oracle", "helix, nominal field", "straight line", "Challenge score"):
        assert text in page
    assert not list(out.glob(".*.tmp"))


def test_model_with_other_window_length_gets_rebuilt_windows(toy, tmp_path) -> None:
    model = untrained_model(tmp_path / "m5.ts", toy["windows"], length=5)
    result = evaluate(model, toy["windows"], tmp_path / "out", n_momentum_bins=3, plots=False)
    n_tracks = result["data"]["n_test_tracks"]
    # complete tracks: windows of 5 with targets at planes 5..24
    assert result["n_test_windows"] == n_tracks * 20
    assert result["per_plane"]["planes"] == list(range(5, 25))
    assert result["walk"]["planes"] == list(range(5, 25))
    assert "challenge" not in result and "training" not in result
    assert len(result["vs_momentum"]["pt"]["centers"]) == 3
    assert (tmp_path / "out" / "metrics.json").exists()
    assert (tmp_path / "out" / "summary.html").exists()
    assert not list((tmp_path / "out").glob("*.png"))


def test_reconstruct_tracks_round_trip() -> None:
    tracks = toy_tracks(12, seed=2).astype(np.float32)
    tracks[3, 20:] = np.nan  # an incomplete track: windows up to target plane 19
    inputs, targets, idx, plane = make_windows(tracks, 7)
    ids, rebuilt = reconstruct_tracks(inputs, targets, idx + 100, plane)
    assert ids.tolist() == [i + 100 for i in range(12)]
    np.testing.assert_array_equal(rebuilt[np.isfinite(rebuilt)], tracks[np.isfinite(tracks)])
    assert np.isnan(rebuilt[3, 20:]).all()
    assert len(complete_tracks(rebuilt, 24)) == 11


def test_walk_helpers() -> None:
    tracks = toy_tracks(8, seed=9)
    oracle = torch.jit.script(HelixOracle())
    walked = walk_network(oracle, tracks, 7)
    np.testing.assert_array_equal(walked[:, :7], tracks[:, :7].astype(np.float32))
    np.testing.assert_allclose(walked[:, 7:], tracks[:, 7:], atol=2e-3)
    helix_walk = walk_baseline(lambda s, z: straight_line(s, z), tracks, 7)
    direct = straight_line(tracks[:, 6], tracks[:, 24, 2])
    np.testing.assert_allclose(helix_walk[:, 24], direct, atol=1e-9)


def test_cli_names_bad_inputs(toy, tmp_path, capsys) -> None:
    out = str(tmp_path / "o")
    rc = evaluate_main(
        ["--model", str(toy["oracle"]), "--windows", str(tmp_path / "no.h5"), "--out", out]
    )
    assert rc == 1 and "no.h5: no such file" in capsys.readouterr().err
    rc = evaluate_main(
        ["--model", str(toy["oracle"]), "--windows", str(toy["windows"]), "--out", out,
         "--helix-field", "[[100, 2], [50, 1]]"]
    )  # fmt: skip
    assert rc == 1 and "--helix-field" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("\n".join(toy["predictions"].read_text().splitlines()[:3]) + "\n")
    with pytest.raises(ValueError, match=r"short\.csv: 3 predictions"):
        score_challenge_file(toy["inputs"], toy["answers"], short, {})
    not_model = tmp_path / "model.ts"
    not_model.write_text("not a model")
    with pytest.raises(EvaluationInputError, match=r"model\.ts"):
        load_model(not_model)
    with pytest.raises(SystemExit):
        evaluate_main(
            ["--model", "m", "--windows", "w", "--out", out, "--challenge-inputs", "x.csv"]
        )


def test_quality_table(tracks_csv, tmp_path) -> None:
    a = tmp_path / "shard000.json"
    convert(tracks_csv, tmp_path / "a.parquet", a)
    b = tmp_path / "shard001.json"
    b.write_text(
        json.dumps(
            {
                "rows": 10,
                "complete_rows": 7,
                "rows_with_nulls": 3,
                "skipped_rows": {"non_numeric": 2},
                "skipped_examples": [{"line": 5, "reason": "non_numeric", "message": "bad"}],
                "ranges": {"x": {"min": -99.0, "max": 1.0}},
            }
        )
    )
    out = tmp_path / "quality.html"
    rc = evaluate_main(["quality", "--out", str(out), "--dataset", "toy", str(a), str(b)])
    assert rc == 0
    page = out.read_text()
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells[cells.index("all") : cells.index("all") + 6] == [
        "all",
        "210",
        "207",
        "3",
        "2",
        "2",
    ]
    assert "-99" in page and "Data quality: toy" in page and "non_numeric" in page
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EvaluationInputError, match=r"bad\.json: no key 'rows'"):
        quality_table([bad], out)


@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_evaluations_comparison_and_report(tmp_path: Path, tiny_project: Path) -> None:
    """One tiny run (a copy of the shared finished one): a trained model on its own and another
    dataset, an external model file, a comparison, and ``snakemake --report``."""
    from conftest import copy_project
    from workflow_runs import snakemake as project_snakemake

    work = copy_project(tiny_project, tmp_path / "wf")
    write_tracks_csv(toy_tracks(120, seed=21), tmp_path / "toy.csv")
    # an exported file that was never trained here, with the metadata predict needs
    build_dir = tmp_path / "ext"
    build_dir.mkdir()
    write_tracks_csv(toy_tracks(40, seed=22), build_dir / "t.csv")
    convert(build_dir / "t.csv", build_dir / "t.parquet")
    build(build_dir / "t.parquet", build_dir / "w.h5")
    external = untrained_model(tmp_path / "external.ts", build_dir / "w.h5")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["datasets"]["tiny"]["evaluation"] = {"also_on": ["toy"]}
    config["datasets"]["toy"] = {
        "source": "path",
        "path": str(tmp_path / "toy.csv"),
        "sha256": sha256_file(tmp_path / "toy.csv"),
    }
    config["evaluation"] = {
        "bins": 30,
        "momentum_bins": 4,
        "external_models": {"ext": str(external)},
    }
    config["compare"] = {
        "both": [
            {"dataset": "tiny", "model": "small"},
            {"dataset": "tiny", "model": "small", "data": "toy", "label": "on toy"},
            {"external": "ext", "data": "tiny"},
        ]
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    project_snakemake(work, "--cores", "2")
    res = work / "results"
    for folder in ("tiny/small/evaluation/tiny", "tiny/small/evaluation/toy"):
        metrics = json.loads((res / folder / "metrics.json").read_text())
        assert metrics["model"]["name"] == "tiny/small"
        assert metrics["challenge"]["network"]["score"] > 0
        assert (res / folder / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    cross = json.loads((res / "tiny/small/evaluation/toy/metrics.json").read_text())
    assert cross["data"]["name"] == "toy" and cross["same_data_as_training"] is False
    ext = json.loads((res / "external/ext/evaluation/tiny/metrics.json").read_text())
    assert ext["model"]["name"] == "external/ext" and "training" not in ext
    assert not (res / "external/ext/evaluation/tiny/loss_curves.png").exists()
    assert (res / "tiny/quality/summary.html").exists() and (
        res / "toy/quality/summary.html"
    ).exists()
    table = (res / "compare/both/metrics.csv").read_text().splitlines()
    assert len(table) == 4
    assert [row.split(",")[0] for row in table[1:]] == [
        "tiny/small on tiny",
        "on toy",
        "external/ext on tiny",
    ]
    for name in ("loss_curves.png", "residual_widths.png"):
        assert (res / "compare/both" / name).read_bytes()[:8] == PNG_MAGIC
    assert "| run |" in (res / "compare/both/metrics.md").read_text()

    project_snakemake(work, "--cores", "1", "--report", "report.html")
    html = (work / "report.html").read_text()
    for text in (
        "walk.png",
        "residuals.png",
        "summary.html",
        "residual_widths.png",
        "What to look for",
        "Walking a track",
        "external/ext on tiny",
        "Data quality of dataset",
    ):
        assert text in html, text


def test_evaluation_plan_targets_and_checks() -> None:
    from tracklstm import evaluation_plan as plan
    from tracklstm.settings import ConfigError, check_names, stage_defaults, stage_settings

    config = {
        "build": {"datasets": ["a"], "models": ["m"]},
        "datasets": {
            "a": {
                "source": "simulate",
                "simulate": {"shards": 2},
                "evaluation": {"also_on": ["b"]},
            },
            "b": {"source": "url"},
        },
        "models": {"m": {}},
        "evaluation": {"external_models": {"x": "/models/x.ts"}},
        "compare": {
            "c": [{"dataset": "a", "model": "m", "data": "b"}, {"external": "x", "data": "a"}]
        },
    }
    check_names(config)
    targets = plan.targets(config)
    assert "results/a/m/evaluation/a/loss_curves.png" in targets
    assert "results/a/m/evaluation/b/walk.png" in targets
    assert not any(t.endswith("calibration.png") for t in targets)  # no covariance head
    config["models"]["m"] = {"model": {"kind": "residual", "covariance": True}}
    assert {"results/a/m/evaluation/a/calibration.png", "results/a/m/evaluation/b/calibration.png"
            } <= set(plan.targets(config))  # fmt: skip
    config["models"]["m"] = {}
    assert "results/external/x/evaluation/a/metrics.json" in targets
    assert "results/external/x/evaluation/b/metrics.json" not in targets  # build datasets only
    assert "results/external/x/evaluation/a/loss_curves.png" not in targets  # never trained
    assert {"results/a/quality/summary.html", "results/b/quality/summary.html"} <= set(targets)
    assert "results/compare/c/residual_widths.png" in targets
    assert plan.compare_runs(config, "c") == [
        ("results/a/m/evaluation/b", "a/m on b"),
        ("results/external/x/evaluation/a", "external/x on a"),
    ]
    assert plan.quality_jsons(config, "a") == [
        "results/a/quality/shard000.json",
        "results/a/quality/shard001.json",
    ]
    given = stage_settings(config, "evaluate", "a", "m")  # what the rule hands the CLI
    assert stage_defaults("evaluate", given)["evaluation"]["helix_field"] == [[65.0, 2.0]]
    assert re.fullmatch(plan.name_pattern([]), "anything") is None
    config["compare"]["c"][1]["external"] = "y"
    with pytest.raises(ConfigError, match=r"compare\.c\[1\]\.external: 'y'"):
        check_names(config)
    config["datasets"]["a"]["evaluation"]["also_on"] = ["nope"]
    with pytest.raises(ConfigError, match=r"also_on .* 'nope' is not a dataset"):
        check_names(config)
    config["datasets"]["compare"] = {"source": "url"}
    with pytest.raises(ConfigError, match="'compare' is a reserved name"):
        check_names(config)
