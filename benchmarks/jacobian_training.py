"""Training on derivatives: the one-state model taught the field map's Jacobian too (Sobolev).

The demo's one-state model (``residual_markov`` of ``config.yaml``: MLP 128-128, history 0, 40
epochs, Adam 3e-3 with cosine decay, batch 256, MSE, on ``results/demo/windows.h5`` with the plane
1-6 steps) is trained by the pipeline's trainer (``train.fit.train``) once per weight of
``training.jacobian_weight`` (``--lambdas``; 0 is the model without the term; the covariance head
is left out, it does not change the state or J). The term (``train.jacobian``): on 64 windows
per step, drawn from ``--jacobian-windows`` training windows whose field-map Jacobian was computed
once by central differences, the squared Frobenius norm of the model's Jacobian minus the field
map's, in the units of ``relative_difference`` (momenta in 10 MeV/c), over the mean of the field
map's ||J - I||^2, times lambda.

Each model is then judged on the demo's test windows: RMS of x, y, px, py, pz over the field
map's (the noise floor) and the median and 95th percentile of ``relative_difference`` on 400 test
states (the target: a median of 0.01 or less); and the training's wall time.

    PYTHONPATH=src python benchmarks/jacobian_training.py [--lambdas 0,300,1000]
        [--jacobian-windows 8000] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.constants import ANSWER_FEATURES  # noqa: E402
from tracklstm.evaluate.jacobian import model_jacobian  # noqa: E402
from tracklstm.files import write_json  # noqa: E402
from tracklstm.models.build import build_model  # noqa: E402
from tracklstm.physics.baselines import field_only  # noqa: E402
from tracklstm.physics.transport import INDEX, field_jacobian, relative_difference  # noqa: E402
from tracklstm.train.fit import train as train_run  # noqa: E402

log = logging.getLogger("jacobian_training")

WINDOWS = ROOT / "results/demo/windows.h5"


def train(lam: float, n_jacobian: int, epochs: int, out: Path) -> tuple[torch.nn.Module, float]:
    """The one-state model trained with ``training.jacobian_weight`` ``lam``; and the seconds."""
    variant = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["residual_markov"]
    model_cfg = {**variant["model"], "covariance": False}
    training = {**variant["training"], "epochs": epochs}
    training |= {"jacobian_weight": lam, "jacobian_windows": n_jacobian}
    t0 = time.perf_counter()
    train_run(WINDOWS, out, {"model": model_cfg, "training": training})
    seconds = time.perf_counter() - t0
    model = build_model(model_cfg, 7)
    model.load_state_dict(torch.load(out / "weights_best.pt", weights_only=True))
    return model.eval(), seconds


def judge(model: torch.nn.Module) -> dict:
    """RMS over the field map's on the demo's test windows; the Jacobian on 400 of them."""
    with h5py.File(WINDOWS) as h5:
        inputs, targets = h5["test/inputs"][:], h5["test/targets"][:]
    with torch.no_grad():
        pred = model(torch.from_numpy(inputs)).numpy()
    floor = field_only(inputs[:, -1].astype(np.float64), targets[:, 2].astype(np.float64))
    index = list(INDEX)
    rms = np.sqrt(((pred - targets)[:, index] ** 2).mean(0))
    rms_floor = np.sqrt(((floor - targets)[:, index] ** 2).mean(0))
    rows = np.random.default_rng(1).choice(len(inputs), 400, replace=False)
    states = inputs[rows, -1].astype(np.float64)
    diff = relative_difference(
        model_jacobian(model, inputs[rows]), field_jacobian(states, targets[rows, 2].astype(float))
    )
    return {
        "rms_over_floor": {
            f: round(float(v), 4) for f, v in zip(ANSWER_FEATURES, rms / rms_floor, strict=True)
        },
        "jacobian_median": round(float(np.median(diff)), 4),
        "jacobian_p95": round(float(np.percentile(diff, 95)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", default="0,300,1000")
    parser.add_argument("--jacobian-windows", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/jacobian_training.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = {}
    for lam in (float(v) for v in args.lambdas.split(",")):
        out = Path(tempfile.mkdtemp(prefix="jacobian_training_"))
        model, seconds = train(lam, args.jacobian_windows, args.epochs, out)
        shutil.rmtree(out)
        results[f"lambda_{lam:g}"] = {"training_seconds": round(seconds, 1), **judge(model)}
        log.info("lambda %g: %s", lam, json.dumps(results[f"lambda_{lam:g}"]))
    write_json(
        args.out,
        {
            "benchmark": "jacobian_training",
            "jacobian_windows": args.jacobian_windows,
            "epochs": args.epochs,
            "machine": machine(),
            "result": results,
        },
    )
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
