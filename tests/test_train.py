"""Training: settings and input checks, outputs, schedules, data paths, checkpoints and resume."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import toy_tracks

from tracklstm.data.checksums import stamp_checksums
from tracklstm.models.build import build_model
from tracklstm.models.reference import PhysicalModel
from tracklstm.train.checkpoints import CHECKPOINT_NAME, METRIC_COLUMNS
from tracklstm.train.cli import main
from tracklstm.train.config import (
    DEFAULT_MODEL,
    DEFAULT_RUNTIME,
    DEFAULT_TRAINING,
    budget_epochs,
    resolve_settings,
)
from tracklstm.train.data import DeviceWindows, StreamedWindows, inspect_windows
from tracklstm.train.errors import EXIT_INTERRUPTED, TrainingInputError, TrainingInterrupted
from tracklstm.train.fit import train
from tracklstm.train.runtime import Dist, request_stop
from tracklstm.train.trainer import Trainer

#: A tiny model and schedule: a few hundred windows, seconds per run on a small CPU.
TINY: dict[str, Any] = {
    "model": {"hidden_sizes": [8]},
    "training": {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 1.0e-2,
        "scheduler": {"kind": "constant"},
    },
    "runtime": {"eval_batch_size": 64},
}
TIMING = ("seconds", "samples_per_s")


def tiny(**options: Any) -> dict[str, Any]:
    """TINY with some training (or runtime: device, precision, ...) settings replaced."""
    runtime = {k: v for k, v in options.items() if k in DEFAULT_RUNTIME}
    training = {k: v for k, v in options.items() if k not in runtime}
    return {
        **TINY,
        "training": {**TINY["training"], **training},
        "runtime": {**TINY["runtime"], **runtime},
    }


def make_windows_file(
    path: Path,
    n_tracks: int = 60,
    length: int = 7,
    seed: int = 0,
    fingerprint: str = "toy",
    tracks: np.ndarray | None = None,
) -> Path:
    """A windows file in the layout of the windows stage, from ``tracks`` (default: toy
    helices; no other stage): the first 80 % of the tracks train, 10 % validate, 10 % test."""
    tracks = toy_tracks(n_tracks, seed) if tracks is None else tracks
    tracks = tracks.astype(np.float32)
    n_tracks = len(tracks)
    offsets = np.arange(0, 24 - length + 1)
    idx = offsets[:, None] + np.arange(length + 1)[None, :]
    full = tracks[:, idx].reshape(-1, length + 1, 6)
    track = np.repeat(np.arange(n_tracks), len(offsets))
    n_train, n_val = int(0.8 * n_tracks), int(0.1 * n_tracks)
    label = np.where(track < n_train, 0, np.where(track < n_train + n_val, 1, 2))
    lo = tracks[:n_train].reshape(-1, 6).min(axis=0)
    hi = tracks[:n_train].reshape(-1, 6).max(axis=0)
    with h5py.File(path, "w") as h5:
        for i, split in enumerate(("train", "validation", "test")):
            g = h5.create_group(split)
            g["inputs"] = full[label == i, :length]
            g["targets"] = full[label == i, length]
            g["track"] = track[label == i]
            g["target_plane"] = np.tile(offsets + length, n_tracks)[label == i].astype(np.int8)
        h5.attrs.update(
            {
                "norm_min": lo,
                "norm_max": hi,
                "window_length": length,
                "stride": 1,
                "last_target_plane": 24,
                "data_fingerprint": fingerprint,
            }
        )
        stamp_checksums(h5)  # as the windows stage does
    return path


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def same_learning(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    """Two metrics.csv hold the same epochs with identical numbers (timing aside)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {
            k: v for k, v in rb.items() if k not in TIMING
        }


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def wfile(tmp_path: Path) -> Path:
    return make_windows_file(tmp_path / "windows.h5")


# --- settings -------------------------------------------------------------------------------


def test_defaults_are_the_reference() -> None:
    s = resolve_settings({})
    t = s["training"]
    reference = {k: s["model"][k] for k in ("kind", "cell", "hidden_sizes", "dropout")}
    assert reference == {
        "kind": "reference",
        "cell": "lstm",
        "hidden_sizes": [128, 64, 32],
        "dropout": 0.0,
    }
    assert (t["epochs"], t["batch_size"], t["learning_rate"], t["grad_clip_value"]) == (
        100,
        1256,
        1.0e-4,
        1.0,
    )
    assert t["scheduler"] == {
        "kind": "plateau",
        "factor": 0.85,
        "patience": 5,
        "threshold": 1.0e-5,
        "min_lr": 1.0e-6,
    }
    assert t["early_stopping"] == {"patience": 20, "min_delta": 0.0, "restore_best": True}
    r = s["runtime"]
    assert (r["precision"], r["tf32"], r["cuda_graphs"]) == ("fp32", False, False)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"batch_size": 2.5}}, "training.batch_size"),
        ({"training": {"learning_rate": -1e-4}}, "training.learning_rate"),
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"grad_clip_value": 0}}, "training.grad_clip_value"),
        ({"training": {"scheduler": {"factor": 1.5}}}, "training.scheduler.factor"),
        ({"training": {"scheduler": {"kind": "step"}}}, "training.scheduler.kind"),
        ({"training": {"early_stopping": {"patience": 0}}}, "training.early_stopping.patience"),
        ({"runtime": {"precision": "fp8"}}, "runtime.precision"),
        ({"runtime": {"cuda_graphs": True, "precision": "fp16"}}, "runtime.cuda_graphs"),
        ({"runtime": {"data_on_device": "maybe"}}, "runtime.data_on_device"),
        ({"runtime": {"device": "gpu7"}}, "runtime.device"),
        ({"training": {"batchsize": 64}}, "training.batchsize"),
        ({"model": {"hidden_sizes": [0]}}, "model.hidden_sizes"),
        ({"model": {"cell": "transformer"}}, "model.cell"),
        ({"window_length": 0}, "window_length"),
        ({"optimizer": "sgd"}, "optimizer"),
    ],
)
def test_bad_settings_stop_before_training(
    settings: dict[str, Any], key: str, wfile: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingInputError, match=key.replace(".", r"\.")):
        resolve_settings(settings)
    with pytest.raises(TrainingInputError):
        train(wfile, tmp_path / "run", settings)
    assert not (tmp_path / "run").exists()


def test_window_length_must_match_the_data(wfile: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match=r"windows of 5 states.*windows of 7"):
        train(wfile, tmp_path / "run", {**TINY, "window_length": 5})
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_device_without_gpu(wfile: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="no CUDA GPU"):
        train(wfile, tmp_path / "run", tiny(device="cuda"))


# --- bad input files ------------------------------------------------------------------------


def _edit(path: Path, fn: Any) -> Path:
    """A windows file the windows stage would have written so (its checksums updated)."""
    with h5py.File(path, "a") as h5:
        fn(h5)
        stamp_checksums(h5)
    return path


def _replace(h5: h5py.File, name: str, value: np.ndarray) -> None:
    del h5[name]
    h5[name] = value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h5: h5["train"]["inputs"].__setitem__((3, 2, 1), np.nan), r"train/inputs.*NaN.*3"),
        (
            lambda h5: h5["validation"]["targets"].__setitem__((5, 0), np.inf),
            r"validation/targets.*NaN or infinite.*window 5",
        ),
        (lambda h5: h5.__delitem__("validation"), r"split 'validation' is missing"),
        (lambda h5: h5["train"].__delitem__("targets"), r"train/targets is missing"),
        (
            lambda h5: _replace(h5, "train/inputs", np.zeros((10, 7, 5), np.float32)),
            r"train/inputs has shape \(10, 7, 5\)",
        ),
        (
            lambda h5: _replace(h5, "train/inputs", np.zeros((10, 6, 6), np.float32)),
            r"expected \(N, 7, 6\)",
        ),
        (
            lambda h5: _replace(h5, "train/targets", np.zeros((3, 6), np.float32)),
            r"train/targets has shape \(3, 6\)",
        ),
        (
            lambda h5: _replace(h5, "validation/inputs", np.zeros((0, 7, 6), np.float32)),
            r"validation/targets has shape|holds no windows",
        ),
        (lambda h5: h5.attrs.__delitem__("norm_min"), r"attribute 'norm_min' is missing"),
        (lambda h5: h5.attrs.__setitem__("norm_max", np.zeros(6)), r"max > min"),
    ],
)
def test_bad_windows_file(edit: Any, message: str, wfile: Path, tmp_path: Path) -> None:
    _edit(wfile, edit)
    for on_device in (True, False):  # checked before training on both data paths
        with pytest.raises(TrainingInputError, match=message) as err:
            train(wfile, tmp_path / "run", tiny(data_on_device=on_device))
        assert str(wfile) in str(err.value)
    assert not (tmp_path / "run").exists()


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    bad = tmp_path / "windows.h5"
    bad.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(TrainingInputError, match="not a readable HDF5 file"):
        train(bad, tmp_path / "run", TINY)
    with pytest.raises(TrainingInputError, match="no such file"):
        train(tmp_path / "missing.h5", tmp_path / "run", TINY)


# --- outputs and learning -------------------------------------------------------------------


def test_outputs_and_learning(wfile: Path, tmp_path: Path, caplog: Any) -> None:
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tracklstm.train"):
        summary = train(wfile, run, tiny(epochs=4))
    # Each epoch line says the time spent so far and the time left.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == [f"epoch {e}/4" for e in (1, 2, 3, 4)]
    assert all(re.search(r"\| elapsed \d+s, ETA \d+s$", line) for line in lines), lines
    assert lines[-1].endswith("ETA 0s")
    assert sorted(p.name for p in run.iterdir()) == [
        "metrics.csv",
        "training.json",
        "weights_best.pt",
        "weights_last.pt",
    ]  # the checkpoint is gone once the run is complete
    rows = read_metrics(run / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    val = [float(r["val_mae"]) for r in rows]
    assert val[-1] < 0.6 * val[0]  # it learns
    assert all(float(r["samples_per_s"]) > 0 and float(r["lr"]) == 1e-2 for r in rows)

    meta = json.loads((run / "training.json").read_text())
    assert meta == json.loads(json.dumps(summary, default=str))
    for key in ("settings", "norm_min", "norm_max", "window_length", "data_fingerprint"):
        assert key in meta
    assert meta["window_length"] == 7 and meta["data_fingerprint"] == "toy"
    assert meta["settings"]["model"]["hidden_sizes"] == [8]
    assert meta["settings"]["training"]["batch_size"] == 32
    assert {"torch", "numpy", "h5py", "python", "tracklstm"} <= set(meta["versions"])
    assert meta["device"] and meta["data_placement"] == "device" and meta["processes"] == 1
    assert meta["best_epoch"] == int(np.argmin(val)) + 1
    assert meta["best_val_mae"] == pytest.approx(min(val))
    with h5py.File(wfile) as h5:
        assert meta["norm_min"] == pytest.approx(h5.attrs["norm_min"].tolist())
        assert meta["n_train"] == len(h5["train"]["inputs"])

    best = torch.load(run / "weights_best.pt", weights_only=True)
    last = torch.load(run / "weights_last.pt", weights_only=True)
    model = build_model(meta["settings"]["model"])
    model.load_state_dict(best)
    # The best weights reproduce the best validation MAE.
    with h5py.File(wfile) as h5:
        x = torch.from_numpy(h5["validation"]["inputs"][...])
        y = torch.from_numpy(h5["validation"]["targets"][...])
    phys = PhysicalModel(model, torch.tensor(meta["norm_min"]), torch.tensor(meta["norm_max"]))
    lo, hi = torch.tensor(meta["norm_min"]), torch.tensor(meta["norm_max"])
    with torch.no_grad():
        mae = ((phys.eval()(x) - y) / (hi - lo)).abs().mean().item()
    assert mae == pytest.approx(meta["best_val_mae"], rel=1e-4)
    assert state_equal(last, best) == (meta["best_epoch"] == 4)


def test_windows_from_the_windows_stage(windows_h5: Path, tmp_path: Path) -> None:
    summary = train(windows_h5, tmp_path / "run", {**tiny(epochs=1), "window_length": 7})
    with h5py.File(windows_h5) as h5:
        assert summary["data_fingerprint"] == h5.attrs["data_fingerprint"]
    assert summary["n_train"] > 0 and np.isfinite(summary["best_val_mae"])


def test_same_seed_same_run_other_seed_other_run(wfile: Path, tmp_path: Path) -> None:
    a = read_metrics(train(wfile, tmp_path / "a", tiny(epochs=2)) and tmp_path / "a/metrics.csv")
    b = read_metrics(train(wfile, tmp_path / "b", tiny(epochs=2)) and tmp_path / "b/metrics.csv")
    c = read_metrics(
        train(wfile, tmp_path / "c", tiny(epochs=2, seed=5)) and tmp_path / "c/metrics.csv"
    )
    same_learning(a, b)
    assert a[-1]["val_mae"] != c[-1]["val_mae"]


def test_streamed_data_path(wfile: Path, tmp_path: Path) -> None:
    """Data larger than the device's memory: chunks from the file (forced here)."""
    summary = train(wfile, tmp_path / "run", tiny(epochs=4, data_on_device=False, stream_chunk=50))
    assert summary["data_placement"] == "stream"
    val = [float(r["val_mae"]) for r in read_metrics(tmp_path / "run/metrics.csv")]
    assert val[-1] < 0.6 * val[0]
    # The validation metric is the same computation on both paths.
    model = build_model(summary["settings"]["model"])
    model.load_state_dict(torch.load(tmp_path / "run/weights_last.pt", weights_only=True))
    info = inspect_windows(wfile)
    trainer = Trainer(model, summary["settings"]["training"], torch.device("cpu"))
    dev = DeviceWindows.load(info, "validation", torch.device("cpu"))
    streamed = StreamedWindows(info, "validation", torch.device("cpu"), chunk=7)
    assert trainer.evaluate(dev) == pytest.approx(trainer.evaluate(streamed), rel=1e-6)
    assert trainer.evaluate(streamed)[0] == pytest.approx(val[-1], rel=1e-6)
    streamed.close()


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("source", ["device", "stream"])
def test_each_window_once_per_epoch(wfile: Path, source: str, world: int) -> None:
    info = inspect_windows(wfile)
    cpu = torch.device("cpu")
    dev = DeviceWindows.load(info, "train", cpu)
    want = sorted(map(tuple, dev.x.reshape(dev.n, -1).tolist()))
    seen, batches = [], None
    for rank in range(world):
        src = dev if source == "device" else StreamedWindows(info, "train", cpu, chunk=100)
        gen = torch.Generator().manual_seed(7)
        got = list(src.train_batches(32, gen, Dist(rank=rank, world=world)))
        batches = batches or [b.n_global for b in got]
        assert [b.n_global for b in got] == batches  # the ranks agree on the steps
        seen += [tuple(r) for b in got if b.live for r in b.x.reshape(len(b.x), -1).tolist()]
        src.close()
    assert sorted(seen) == want
    assert sum(batches) == dev.n and len(batches) == -(-dev.n // 32)
    assert all(n == 32 for n in batches[:-1])


def test_gpu_options_are_harmless_on_cpu(wfile: Path, tmp_path: Path, caplog: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    with caplog.at_level(logging.WARNING, logger="tracklstm.train"):
        summary = train(
            wfile, tmp_path / "run", tiny(epochs=1, precision="bf16", tf32=True, cuda_graphs=True)
        )
    assert summary["precision"] == "fp32" and summary["cuda_graphs"] is False
    assert "precision bf16 is for CUDA GPUs" in caplog.text


# --- schedules, early stopping, fine-tuning -------------------------------------------------


def test_plateau_schedule_and_early_stopping(wfile: Path, tmp_path: Path) -> None:
    # A learning rate so small that the validation loss cannot improve by min_delta.
    settings = tiny(
        epochs=10,
        learning_rate=1e-12,
        scheduler={"kind": "plateau", "patience": 0},
        early_stopping={"patience": 3, "min_delta": 1e-6},
    )
    summary = train(wfile, tmp_path / "run", settings)
    rows = read_metrics(tmp_path / "run/metrics.csv")
    assert len(rows) == 4 and summary["stopped_early"] and summary["best_epoch"] == 1
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([1e-12, 1e-12, 0.85e-12, 0.85**2 * 1e-12])
    never = train(
        wfile,
        tmp_path / "run2",
        {
            **settings,
            "training": {**settings["training"], "epochs": 5, "early_stopping": {"patience": None}},
        },
    )
    assert never["epochs_run"] == 5 and not never["stopped_early"]


def test_cosine_schedule(wfile: Path, tmp_path: Path) -> None:
    """The cosine schedule over the epochs; with training.max_steps, over the epochs whose
    steps stay within it (here 8 cut to 4), which the run's settings then say."""
    cosine = {"kind": "cosine", "min_lr": 0.0}
    summary = train(wfile, tmp_path / "run", tiny(epochs=4, scheduler=cosine))
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "run/metrics.csv")]
    assert lrs == pytest.approx([1e-2 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])
    steps = -(-summary["n_train"] // summary["settings"]["training"]["batch_size"])
    cut = train(wfile, tmp_path / "cut", tiny(epochs=8, scheduler=cosine, max_steps=5 * steps - 1))
    assert cut["epochs_run"] == 4 == cut["settings"]["training"]["epochs"]
    assert [float(r["lr"]) for r in read_metrics(tmp_path / "cut/metrics.csv")] == lrs
    assert budget_epochs({"epochs": 8, "max_steps": None, "batch_size": 10}, 95) == 8
    assert budget_epochs({"epochs": 8, "max_steps": 1, "batch_size": 10}, 95) == 1
    assert budget_epochs({"epochs": 8, "max_steps": 20, "batch_size": 10}, 95) == 2


def test_init_from_another_run(wfile: Path, tmp_path: Path) -> None:
    pre = train(wfile, tmp_path / "pre", tiny(epochs=4))
    other = make_windows_file(tmp_path / "other.h5", n_tracks=40, seed=9, fingerprint="other")
    fine = train(other, tmp_path / "fine", tiny(epochs=1, init_from=str(tmp_path / "pre")))
    fresh = train(other, tmp_path / "fresh", tiny(epochs=1))
    assert fine["init_from"] == str(tmp_path / "pre" / "weights_best.pt")
    assert fine["norm_min"] == pre["norm_min"]  # the weights' own normalization
    assert fine["best_val_mae"] < 0.7 * fresh["best_val_mae"]
    with pytest.raises(TrainingInputError, match="does not fit model"):
        train(
            other,
            tmp_path / "bad",
            {**tiny(epochs=1, init_from=str(tmp_path / "pre")), "model": {"hidden_sizes": [4]}},
        )
    with pytest.raises(TrainingInputError, match="init_from"):
        train(other, tmp_path / "bad", tiny(init_from=str(tmp_path / "nothing")))
    (tmp_path / "junk.pt").write_text("not weights")
    with pytest.raises(TrainingInputError, match=r"junk\.pt: not a readable weights file \(11 "):
        train(other, tmp_path / "bad", tiny(init_from=str(tmp_path / "junk.pt")))
    whole = (tmp_path / "pre" / "weights_best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TrainingInputError, match=r"cut\.pt: .* bytes, corrupt or truncated"):
        train(other, tmp_path / "bad", tiny(init_from=str(tmp_path / "cut.pt")))
    assert not (tmp_path / "bad").exists()


# --- checkpoints and resume (in-process; the signal tests are in test_train_resume.py) ------


@pytest.mark.parametrize("on_device", [True, False])
def test_stop_mid_epoch_and_resume_exactly(wfile: Path, tmp_path: Path, on_device: bool) -> None:
    settings = tiny(epochs=3, data_on_device=on_device, stream_chunk=100)
    settings["model"] = {"hidden_sizes": [8], "dropout": 0.2}  # uses the RNG inside epochs
    train(wfile, tmp_path / "ref", settings)
    steps = -(-inspect_windows(wfile).sizes["train"] // 32)

    run = tmp_path / "run"
    request_stop(after_steps=steps + 5)
    with pytest.raises(TrainingInterrupted) as err:
        train(wfile, run, settings)
    assert (err.value.epoch, err.value.step) == (2, 5)
    ckpt = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["state"]["epoch"] == 1 and ckpt["partial"]["step"] == 5
    # the epochs so far, under a name that does not look finished
    assert len(read_metrics(run / "metrics.partial.csv")) == 1
    assert not (run / "metrics.csv").exists()
    assert not (run / "weights_best.pt").exists()

    summary = train(wfile, run, settings)
    assert summary["resumes"] == 1
    assert not (run / "metrics.partial.csv").exists()
    same_learning(read_metrics(run / "metrics.csv"), read_metrics(tmp_path / "ref/metrics.csv"))
    for name in ("weights_best.pt", "weights_last.pt"):
        assert state_equal(
            torch.load(run / name, weights_only=True),
            torch.load(tmp_path / "ref" / name, weights_only=True),
        )
    assert not (run / CHECKPOINT_NAME).exists()


def test_checkpoint_of_other_settings_is_not_resumed(wfile: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    request_stop(after_steps=30)
    with pytest.raises(TrainingInterrupted):
        train(wfile, run, tiny(eval_batch_size=16))
    # A runtime option (evaluation batch) does not invalidate the checkpoint ...
    ckpt = run / CHECKPOINT_NAME
    saved = ckpt.read_bytes()
    assert train(wfile, run, tiny(eval_batch_size=50))["resumes"] == 1
    # ... another learning rate does: the run starts afresh.
    ckpt.write_bytes(saved)
    assert train(wfile, run, tiny(learning_rate=5e-3))["resumes"] == 0
    # Other data as well; and a damaged checkpoint is not fatal.
    ckpt.write_bytes(saved)
    other = make_windows_file(tmp_path / "other.h5", seed=1, fingerprint="other")
    assert train(other, run, tiny(eval_batch_size=16))["resumes"] == 0
    ckpt.write_bytes(saved[:100])
    assert train(wfile, run, tiny(eval_batch_size=16))["resumes"] == 0


def test_cli_exit_codes(wfile: Path, tmp_path: Path, capsys: Any) -> None:
    out = str(tmp_path / "run")
    assert main(["--windows", str(wfile), "--out", out, "--settings", "{not json"]) == 1
    bad = json.dumps(tiny(batch_size=0))
    assert main(["--windows", str(wfile), "--out", out, "--settings", bad]) == 1
    err = capsys.readouterr().err
    assert "ERROR tracklstm.train: --settings is not valid JSON" in err
    assert "ERROR tracklstm.train: training.batch_size: expected an integer >= 1, got 0" in err
    assert "Traceback" not in err
    yml = tmp_path / "s.yaml"
    yml.write_text("training:\n  epochs: 1\n")
    good = json.dumps(TINY)
    args = ["--windows", str(wfile), "--out", out, "--settings", good, "--settings-file", str(yml)]
    request_stop(after_steps=3)
    assert main([*args, "--checkpoint", str(tmp_path / "ck.pt")]) == EXIT_INTERRUPTED
    assert (tmp_path / "ck.pt").exists()
    assert main([*args, "--checkpoint", str(tmp_path / "ck.pt")]) == 0
    assert len(read_metrics(tmp_path / "run/metrics.csv")) == 1
    assert not (tmp_path / "ck.pt").exists()


def test_a_second_process_on_the_same_run_is_refused(wfile: Path, tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "checkpoint.pt.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TrainingInputError, match="another training process"):
            train(wfile, run, TINY)
    assert not (run / "metrics.csv").exists()
    train(wfile, run, tiny(epochs=1))  # free again
    assert not (run / "checkpoint.pt.lock").exists()


def test_schema_defaults_match_the_code() -> None:
    import yaml

    schema = yaml.safe_load(
        (Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )

    def defaults(node: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, sub in node["properties"].items():
            out[key] = defaults(sub) if sub.get("type") == "object" else sub["default"]
        return out

    assert defaults(schema["properties"]["training"]) == DEFAULT_TRAINING
    assert defaults(schema["properties"]["model"]) == DEFAULT_MODEL


def test_every_configured_run_has_valid_settings() -> None:
    import yaml

    from tracklstm.settings import resolve_section

    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    for dataset in config["datasets"]:
        for model in config["models"]:
            settings = {
                s: resolve_section(config, s, dataset, model) for s in ("model", "training")
            }
            resolved = resolve_settings(settings)
            # The configured values are taken as they are (config.yaml spells out every key).
            assert resolved["training"]["batch_size"] == settings["training"]["batch_size"]
            assert resolved["training"] == settings["training"]
            assert resolved["model"] == settings["model"]
    assert config["training"] == DEFAULT_TRAINING  # config.yaml spells out the defaults
    assert config["model"] == DEFAULT_MODEL


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
@pytest.mark.slow  # several seconds: two training processes
def test_granted_gpu_without_cuda_torch_fails_at_once(wfile: Path, tmp_path: Path) -> None:
    """A job Slurm gave a GPU never trains quietly on the CPU with `device: auto`."""
    env = {**os.environ, "SLURM_JOB_GPUS": "0", "SLURM_GPUS_ON_NODE": "1"}
    cmd = [sys.executable, "-m", "tracklstm.train", "--windows", str(wfile)]
    cmd += ["--out", str(tmp_path / "run"), "--settings", json.dumps(TINY)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "granted a GPU (SLURM_JOB_GPUS=0)" in done.stderr
    assert "CUDA build of torch" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    # with the CPU chosen explicitly, it trains
    cpu = {**TINY, "runtime": {**TINY["runtime"], "device": "cpu"}, "training": {"epochs": 1}}
    cmd[-1] = json.dumps(cpu)
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=120).returncode == 0


@pytest.mark.parametrize("source", ["device", "stream"])
def test_one_state_sources_hold_every_plane_step(wfile: Path, source: str) -> None:
    """A one-state model also trains on the steps inside each track's first window (plane 1
    to 2, ..., 5 to 6: its window of the one state repeated, the next plane's state its
    target), which the challenge's windows never target; both sources hold the same set."""
    info = inspect_windows(wfile)
    info.normalized, info.inner_steps = False, True
    cpu = torch.device("cpu")
    tracks = toy_tracks(60, 0).astype(np.float32)[:48]  # make_windows_file's training tracks
    src = (DeviceWindows.load(info, "train", cpu) if source == "device"
           else StreamedWindows(info, "train", cpu, chunk=100))  # fmt: skip
    assert src.n == info.sizes["train"] + 48 * 5
    rows = [
        (tuple(x.reshape(-1).tolist()), tuple(y.tolist()))
        for xs, ys in src.eval_batches(64, Dist())
        for x, y in zip(xs, ys, strict=True)
    ]
    src.close()
    assert len(rows) == src.n
    want = {
        (tuple(np.repeat(t[j][None], 7, axis=0).reshape(-1).tolist()), tuple(t[j + 1].tolist()))
        for t in tracks
        for j in range(1, 6)
    }
    assert want <= set(rows)
    origin_steps = [r for r in rows if len(set(r[0])) == 6 and r[0][2] == tracks[0, 0, 2]]
    assert not origin_steps  # the origin's step is not a plane's


def test_one_state_training_needs_the_target_planes(wfile: Path, tmp_path: Path) -> None:
    settings = {**tiny(epochs=1), "model": {"kind": "residual", "history": 0, "hidden_sizes": [8]}}
    summary = train(wfile, tmp_path / "run", settings)
    assert summary["n_train"] == inspect_windows(wfile).sizes["train"] + 48 * 5
    with h5py.File(wfile, "a") as h5:
        del h5["train/target_plane"]
    with pytest.raises(TrainingInputError, match=r"train/target_plane is missing"):
        train(wfile, tmp_path / "other", settings)
