"""Comparing evaluated models: table, markdown, HTML and overlaid plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import toy_tracks, write_tracks_csv
from test_evaluate import PNG_MAGIC, untrained_model

from tracklstm.data.to_parquet import convert
from tracklstm.data.windows import build
from tracklstm.evaluate import compare as cmp
from tracklstm.evaluate.run import evaluate


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real evaluation folders of untrained models (numbers only), one with a history."""
    d = tmp_path_factory.mktemp("cmp")
    write_tracks_csv(toy_tracks(150, seed=31), d / "t.csv")
    convert(d / "t.csv", d / "t.parquet")
    build(d / "t.parquet", d / "w.h5", seed=2)
    history = d / "metrics.csv"
    history.write_text(
        "epoch,train_mae,train_mse,val_mae,val_mse,lr,seconds,samples_per_s\n"
        "1,0.2,0.05,0.15,0.04,0.001,1,10\n2,0.1,0.02,0.09,0.01,0.001,1,10\n"
        "3,0.08,0.01,0.1,0.012,0.0005,1,10\n"
    )
    folders = []
    for seed, metrics_csv in ((0, history), (1, None)):
        model = untrained_model(d / f"m{seed}.ts", d / "w.h5", seed=seed)
        out = d / f"run{seed}" / "evaluation" / "toy"
        evaluate(
            model,
            d / "w.h5",
            out,
            metrics_csv=metrics_csv,
            model_name=f"toy/m{seed}",
            data_name="toy",
            plots=False,
        )
        folders.append(out)
    return folders


def test_compare_writes_one_row_per_run(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    table = cmp.compare([runs[0], runs[1] / "metrics.json"], out)
    assert table["labels"] == ["toy/m0 on toy", "toy/m1 on toy"]
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == table["labels"]
    m0 = json.loads((runs[0] / "metrics.json").read_text())
    assert float(rows[0]["RMS x [cm]"]) == pytest.approx(m0["residuals"]["x"]["rms"], rel=1e-5)
    assert rows[0]["epochs"] == "3" and float(rows[0]["best validation MAE"]) == 0.09
    assert rows[1]["epochs"] == ""  # no training history for the second run
    assert rows[0]["challenge score"] == ""  # evaluated without the challenge file
    md = (out / "metrics.md").read_text().splitlines()
    assert md[0].startswith("| run | model | data |") and len(md) == 4
    assert "toy/m1 on toy" in (out / "metrics.html").read_text()
    for name in ("loss_curves.png", "residual_widths.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_labels_and_loss_curves_once_per_model(runs: list[Path], tmp_path: Path) -> None:
    m = [cmp.load_run(p) for p in (runs[0], runs[0], runs[1])]
    # the same trained model twice: its history is drawn once; the untrained one has none
    assert cmp.plot_loss_overlay(m, tmp_path / "loss.png") == 1
    table = cmp.compare([runs[0], runs[0]], tmp_path / "o", ["a", "a"])
    assert table["labels"] == ["a (1)", "a (2)"]
    with pytest.raises(cmp.CompareInputError, match="1 labels for 2 runs"):
        cmp.compare(runs, tmp_path / "o", ["only one"])


def test_cli_and_bad_inputs(runs: list[Path], tmp_path: Path, capsys) -> None:
    rc = cmp.main([str(runs[0]), str(runs[1]), "--out", str(tmp_path / "c"), "--labels", "x", "y"])
    assert rc == 0
    assert (tmp_path / "c" / "metrics.csv").read_text().splitlines()[1].startswith("x,")
    rc = cmp.main([str(tmp_path / "missing"), "--out", str(tmp_path / "d")])
    assert rc == 1
    assert "missing: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {}}))
    with pytest.raises(cmp.CompareInputError, match="no 'data'"):
        cmp.load_run(bad)
