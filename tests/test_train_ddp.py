"""Data-parallel training under torchrun: 2 processes on the CPU (gloo) learn like one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import make_windows_file, read_metrics, tiny

from tracklstm.data.simulate import simulate_tracks
from tracklstm.train.fit import train

#: The one-state residual model with the Jacobian term (train.jacobian): its 64 windows per use
#: are shared between the processes as a batch is.
RESIDUAL_JACOBIAN = {
    "model": {"kind": "residual", "hidden_sizes": [16], "history": 0},
    "training": {"jacobian_weight": 100, "jacobian_windows": 500, "loss": "mse"},
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["reference", "residual with the Jacobian term"])
def test_two_processes_learn_like_one(tmp_path: Path, variant: str) -> None:
    tracks = simulate_tracks(55, seed=6) if variant != "reference" else None
    windows = make_windows_file(tmp_path / "windows.h5", n_tracks=55, tracks=tracks)
    # 44 training tracks -> 792 windows = 7 batches of 113 and one of 1 window, so rank 1 has
    # nothing of the last batch (it steps with a stand-in of weight 0).
    settings = tiny(epochs=4, batch_size=113, learning_rate=2e-2)
    if variant != "reference":
        settings["model"] = RESIDUAL_JACOBIAN["model"]
        settings["training"].update(RESIDUAL_JACOBIAN["training"], learning_rate=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(windows, tmp_path / "single", settings)
    finally:
        torch.set_num_threads(threads)

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tracklstm.train",
        "--windows",
        str(windows),
        "--out",
        str(tmp_path / "ddp"),
        "--settings",
        json.dumps(settings),
        "--threads",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "gloo" in done.stderr or "x2 processes" in done.stderr

    summary = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert summary["processes"] == 2 and single["processes"] == 1
    ddp_rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    one_rows = read_metrics(tmp_path / "single" / "metrics.csv")
    assert len(ddp_rows) == len(one_rows) == 4
    # The same global batches and the same mean gradient: equal up to rounding.
    for a, b in zip(ddp_rows, one_rows, strict=True):
        for key in ("train_mae", "train_mse", "val_mae", "val_mse", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3), (key, a, b)
    val = [float(r["val_mae"]) for r in ddp_rows]
    if variant == "reference":
        assert val[-1] < 0.8 * val[0]
    else:  # the same Jacobian term, shared between the processes
        term, one_term = summary["jacobian_term"], single["jacobian_term"]
        assert term["windows"] == one_term["windows"] == 500
        key = "median_relative_difference"
        assert term[key] == pytest.approx(one_term[key], rel=1e-3)
    # Only rank 0 wrote the run folder, and the weights load as usual.
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == ["metrics.csv", "training.json", "weights_best.pt", "weights_last.pt"]
    state = torch.load(tmp_path / "ddp" / "weights_best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
