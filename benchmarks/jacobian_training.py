"""Training on derivatives: the one-state model taught the field map's Jacobian too (Sobolev).

An experiment, not yet the pipeline's training: the demo's one-state model (``residual_markov``:
MLP 128-128, history 0, the windows of ``results/demo/windows.h5`` with the plane 1-6 steps) is
trained as ``config.yaml`` trains it (40 epochs, Adam 3e-3 with cosine decay, batch 256, MSE),
and again with a second loss term: on 64 windows per batch, drawn from ``--jacobian-windows``
training windows whose field-map Jacobian was computed once by central differences
(``evaluate.jacobian.field_jacobian``), the squared Frobenius norm of the model's Jacobian
(autograd, double backward) minus the field map's, in the units of ``relative_difference``
(momenta in 10 MeV/c), over the mean of the field map's ||J - I||^2, times ``lambda``.

Each model is then judged on the demo's test windows: RMS of x, y, px, py, pz over the field
map's (the noise floor) and the median and 95th percentile of ``relative_difference`` on 400 test
states (the target: a median of 0.01 or less).

    PYTHONPATH=src python benchmarks/jacobian_training.py [--lambdas 0,300,1000]
        [--jacobian-windows 8000] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.constants import ANSWER_FEATURES  # noqa: E402
from tracklstm.evaluate.jacobian import (  # noqa: E402
    INDEX,
    UNITS,
    field_jacobian,
    model_jacobian,
    relative_difference,
)
from tracklstm.files import write_json  # noqa: E402
from tracklstm.models.residual import build_residual  # noqa: E402
from tracklstm.physics.baselines import field_only  # noqa: E402
from tracklstm.train.data import inspect_windows, read_split  # noqa: E402

log = logging.getLogger("jacobian_training")

WINDOWS = ROOT / "results/demo/windows.h5"
#: Windows per batch whose Jacobian is compared.
JACOBIAN_BATCH = 64


def model_jacobian_graph(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """(B, 5, 5) d(next x, y, px, py, pz) / d(last state's), differentiable (float64)."""
    inputs = windows.clone().requires_grad_(True)
    out = model(inputs)
    rows = [
        torch.autograd.grad(out[:, i].sum(), inputs, create_graph=True)[0][:, -1, INDEX]
        for i in INDEX
    ]
    return torch.stack(rows, 1).double()


def train(lam: float, n_jacobian: int, epochs: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """The one-state model trained with weight ``lam`` on the Jacobian term; and the seconds."""
    torch.manual_seed(seed)
    info = inspect_windows(WINDOWS)
    info.normalized, info.inner_steps = False, True
    x, y = read_split(info, "train")
    model = build_residual({"hidden_sizes": [128, 128], "history": 0})
    model.fit_statistics(x, y)
    rng = np.random.default_rng(seed)
    sub = torch.from_numpy(rng.choice(len(x), n_jacobian, replace=False))
    target = torch.from_numpy(
        field_jacobian(x[sub, -1].double().numpy(), y[sub, 2].double().numpy())
    )
    scale = torch.from_numpy(UNITS[:, None] / UNITS[None, :])
    norm = ((target - torch.eye(len(INDEX))) * scale).pow(2).sum((1, 2)).mean()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=3e-5)
    gen = torch.Generator().manual_seed(seed + 1)
    batch = 256
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        jperm = torch.randperm(n_jacobian, generator=gen)
        for b in range(len(perm) // batch):
            idx = perm[b * batch : (b + 1) * batch]
            pred, tgt = model.loss_pair(x[idx], y[idx])
            loss = ((pred - tgt) ** 2).mean()
            if lam > 0:
                start = (b * JACOBIAN_BATCH) % max(n_jacobian - JACOBIAN_BATCH, 1)
                j = jperm[start : start + JACOBIAN_BATCH]
                diff = (model_jacobian_graph(model, x[sub[j]]) - target[j]) * scale
                loss = loss + lam * (diff.pow(2).sum((1, 2)).mean() / norm).float()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval(), time.perf_counter() - t0


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
        model, seconds = train(lam, args.jacobian_windows, args.epochs)
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
