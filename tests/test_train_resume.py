"""Kill the training command after epoch k (SIGTERM, SIGKILL); the rerun starts at epoch k + 1
and ends with the same metrics as a run that was never interrupted (CPU, fixed seed)."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import make_windows_file, read_metrics, same_learning, state_equal

from tracklstm.train.checkpoints import CHECKPOINT_NAME
from tracklstm.train.data import inspect_windows
from tracklstm.train.errors import EXIT_INTERRUPTED
from tracklstm.train.fit import train

#: Small batches, so that an epoch lasts long enough for a signal to land inside it.
SETTINGS: dict[str, Any] = {
    "model": {"hidden_sizes": [8], "dropout": 0.1},
    "training": {
        "epochs": 4,
        "batch_size": 8,
        "learning_rate": 3.0e-3,
        "scheduler": {"kind": "plateau", "patience": 0},
    },
    "runtime": {"eval_batch_size": 256},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The windows file and an uninterrupted run (one thread, like the commands below)."""
    folder = tmp_path_factory.mktemp("resume")
    windows = make_windows_file(folder / "windows.h5", n_tracks=120)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(windows, folder / "ref", SETTINGS)
    finally:
        torch.set_num_threads(threads)
    return windows, folder / "ref"


def start(windows: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tracklstm.train",
        "--windows",
        str(windows),
        "--out",
        str(out),
        "--settings",
        json.dumps(SETTINGS),
        "--threads",
        "1",
    ]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None:
            pytest.fail(
                f"the training ended (rc {proc.returncode}) before {text!r}:\n{log.read_text()}"
            )
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {text!r} after {timeout}s:\n{log.read_text()}")
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_after_epoch_k_resumes_at_k_plus_1(
    reference: tuple[Path, Path], tmp_path: Path, sig: signal.Signals
) -> None:
    windows, ref = reference
    run, log1, log2 = tmp_path / "run", tmp_path / "first.log", tmp_path / "second.log"
    proc = start(windows, run, log1)
    wait_for(log1, "epoch 2/4:", proc)
    time.sleep(0.1)  # most often lands inside epoch 3; the test holds wherever it lands
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)

    ckpt = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    k = ckpt["state"]["epoch"]
    assert k >= 2
    assert len(read_metrics(run / "metrics.partial.csv")) == k
    assert not (run / "metrics.csv").exists()  # nothing that looks like a finished run
    if sig == signal.SIGTERM:
        # The current step was finished and saved: in the middle of epoch k + 1, or at its start.
        assert rc == EXIT_INTERRUPTED
        first = log1.read_text()
        assert "SIGTERM: finishing the current step" in first
        assert "run the same command again" in first
        assert "Traceback" not in first
        stop = re.search(r"stopped in epoch (\d+) after step (\d+)", first)
        assert stop is not None, first
        stopped_at = (int(stop[1]), int(stop[2]))
        if ckpt["partial"] is not None:  # in the middle of epoch k + 1
            assert ckpt["partial"]["epoch"] == k + 1 and ckpt["partial"]["step"] >= 1
            assert stopped_at == (k + 1, ckpt["partial"]["step"])
        else:  # at the end of epoch k, after all its steps
            n_train = inspect_windows(windows).sizes["train"]
            assert stopped_at == (k, math.ceil(n_train / SETTINGS["training"]["batch_size"]))
    else:
        assert rc == -signal.SIGKILL
        assert ckpt["partial"] is None
    assert not (run / "weights_best.pt").exists()

    proc = start(windows, run, log2)
    assert proc.wait(timeout=300) == 0, log2.read_text()
    second = log2.read_text()
    assert "resuming from" in second
    epochs = [int(e) for e in re.findall(r"epoch (\d+)/4:", second)]
    assert epochs == list(range(k + 1, 5))
    same_learning(read_metrics(run / "metrics.csv"), read_metrics(ref / "metrics.csv"))
    for name in ("weights_best.pt", "weights_last.pt"):
        assert state_equal(
            torch.load(run / name, weights_only=True), torch.load(ref / name, weights_only=True)
        )
    summary = json.loads((run / "training.json").read_text())
    assert summary["resumes"] == 1 and summary["epochs_run"] == 4
    assert not (run / CHECKPOINT_NAME).exists()
