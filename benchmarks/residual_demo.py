"""Measure the residual propagator (a net correcting a helix step) against the baselines.

Trains ``tracklstm.models.residual.ResidualPropagator`` with the project's trainer
(``tracklstm.train``, the recipe of config.yaml's ``residual`` variant) on the training split of a
windows.h5 (the demo dataset: ``snakemake results/demo/windows.h5``), then reports on the test
split the RMS per feature (x, y, px, py, pz) and the challenge score of the model, the
straight line, the nominal helix (2.0 T) and the field-only propagator (the simulator's field map
without material: the noise floor); the "walk" (planes 0-6 given, planes 7..24 predicted from the
model's own predictions) against the helix walk; and the score on the real track in
``src/tracklstm/data/mlchallenge2_track3.csv`` (17 windows, targets at planes 7..23). ``--sweep``
first trains a list of variants (bodies, sizes, L1 / MSE) and ranks them by their validation score.

    python benchmarks/residual_demo.py [--windows results/demo/windows.h5] [--epochs 40]
        [--body mlp --hidden-sizes 128 128 --loss mse] [--sweep] [--out ...json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tracklstm.constants import (  # noqa: E402
    ANSWER_FEATURES,
    N_PLANES,
    PLANE_Z,
)
from tracklstm.data.challenge import challenge_score  # noqa: E402
from tracklstm.evaluate.real_track import REAL_TRACK_FILE  # noqa: E402
from tracklstm.models.residual import DEFAULTS, build_residual  # noqa: E402
from tracklstm.physics.baselines import field_only  # noqa: E402
from tracklstm.physics.helix import helix, straight_line  # noqa: E402
from tracklstm.physics.helix_field import NOMINAL_FIELD  # noqa: E402
from tracklstm.train.fit import train  # noqa: E402

log = logging.getLogger("residual_demo")

ANSWER = [0, 1, 3, 4, 5]
REAL_TRACK = REAL_TRACK_FILE
WINDOW = 7


@dataclass(frozen=True)
class Variant:
    """One training recipe: model settings, loss, learning rate, batch size, epochs."""

    name: str
    settings: dict[str, Any]
    loss: str = "mse"
    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 40


#: The residual kind's settings left out of a variant: the schema's defaults.
RESIDUAL: dict[str, Any] = DEFAULTS
MLP = {"body": "mlp", "hidden_sizes": [128, 128]}
LSTM = {"body": "lstm", "hidden_sizes": [32], "head_sizes": [64]}
GRU = {"body": "gru", "hidden_sizes": [32], "head_sizes": [64]}
#: The variants of --sweep: bodies, sizes, L1 / MSE, learning rate, batch, epochs.
SWEEP: tuple[Variant, ...] = (
    Variant("mlp128x2-mse", MLP),
    Variant("mlp128x2-l1", MLP, loss="l1"),
    Variant("mlp64x2-mse", {**MLP, "hidden_sizes": [64, 64]}),
    Variant("mlp256x2-mse", {**MLP, "hidden_sizes": [256, 256]}),
    Variant("mlp128x3-mse", {**MLP, "hidden_sizes": [128, 128, 128]}),
    Variant("mlp128x2-history0-mse", {**MLP, "history": 0}),
    Variant("mlp128x2-mse-lr1e-3", MLP, lr=1e-3),
    Variant("mlp128x2-mse-batch1024", MLP, batch_size=1024),
    Variant("mlp128x2-mse-20epochs", MLP, epochs=20),
    Variant("mlp128x2-mse-80epochs", MLP, epochs=80),
    Variant("mlp128x2-mse-300epochs", MLP, epochs=300),
    Variant("lstm32-mse", LSTM),
    Variant("lstm32-l1", LSTM, loss="l1"),
    Variant("lstm64-mse", {**LSTM, "hidden_sizes": [64]}),
    Variant("gru32-mse", GRU),
    Variant("gru64-mse", {**GRU, "hidden_sizes": [64]}),
)


def machine(threads: int) -> dict[str, Any]:
    """Where the numbers come from: the wall-time budget means little without the load."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
    }


def load_split(h5: h5py.File, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """inputs (n, 7, 6), targets (n, 6), track (n,), target_plane (n,) of one split."""
    g = h5[split]
    return g["inputs"][:], g["targets"][:], g["track"][:], g["target_plane"][:]


def rms(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMS of truth - prediction per answer feature (x, y, px, py, pz)."""
    d = np.asarray(truth, np.float64)[:, ANSWER] - np.asarray(pred, np.float64)[:, ANSWER]
    return {f: float(v) for f, v in zip(ANSWER_FEATURES, np.sqrt((d * d).mean(0)), strict=True)}


def score(truth: np.ndarray, pred: np.ndarray) -> float:
    return challenge_score(np.asarray(truth, np.float64)[:, ANSWER], np.asarray(pred)[:, ANSWER])


def baseline_predictions(inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Straight line, nominal helix and field-only from each window's last state."""
    last = inputs[:, -1].astype(np.float64)
    z = targets[:, 2].astype(np.float64)
    return {
        "straight": straight_line(last, z),
        "helix": helix(last, z, NOMINAL_FIELD),
        "field_only": field_only(last, z),
    }


def evaluate(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """RMS per feature and challenge score of the model and the baselines on some windows."""
    preds = {"model": predict(model, torch.from_numpy(inputs)).numpy()}
    preds.update(baseline_predictions(inputs, targets))
    return {
        "windows": len(inputs),
        "rms": {k: rms(targets, p) for k, p in preds.items()},
        "score": {k: score(targets, p) for k, p in preds.items()},
    }


def complete_tracks(
    inputs: np.ndarray, targets: np.ndarray, track: np.ndarray, plane: np.ndarray
) -> np.ndarray:
    """(k, 25, 6) tracks of a split whose 25 planes are all in its windows."""
    ids, inverse = np.unique(track, return_inverse=True)
    states = np.full((len(ids), N_PLANES, 6), np.nan, np.float32)
    states[inverse, plane.astype(np.int64)] = targets
    first = plane == WINDOW
    states[inverse[first], :WINDOW] = inputs[first]
    return states[np.isfinite(states).all(axis=(1, 2))]


def walk(model: torch.nn.Module, tracks: np.ndarray) -> dict[str, Any]:
    """Planes 0-6 given; predict 7..24 from the model's own predictions (window of the last 7),
    the helix and the field-only propagator stepping plane to plane from their own; RMS of x
    and y at plane 24."""
    seq = torch.from_numpy(tracks[:, :WINDOW].copy())
    h = tracks[:, WINDOW - 1].astype(np.float64)
    fo = h.copy()
    for p in range(WINDOW, N_PLANES):
        nxt = predict(model, seq[:, -WINDOW:])
        seq = torch.cat([seq, nxt.unsqueeze(1)], dim=1)
        h = helix(h, PLANE_Z[p], NOMINAL_FIELD)
        fo = field_only(fo, PLANE_Z[p])
    truth = tracks[:, -1].astype(np.float64)
    out: dict[str, Any] = {"tracks": len(tracks)}
    for name, last in (("model", seq[:, -1].numpy()), ("helix", h), ("field_only", fo)):
        d = truth[:, :2] - last[:, :2].astype(np.float64)
        out[name] = {
            "x": float(np.sqrt((d[:, 0] ** 2).mean())),
            "y": float(np.sqrt((d[:, 1] ** 2).mean())),
        }
    return out


def real_track(model: torch.nn.Module, path: Path = REAL_TRACK) -> dict[str, Any]:
    """Challenge score of the 17 windows (targets at planes 7..23) of the real track."""
    real = np.genfromtxt(path, delimiter=",", comments="#", skip_header=5)[:, 1:]
    offsets = range(len(real) - WINDOW)
    inputs = np.stack([real[o : o + WINDOW] for o in offsets]).astype(np.float32)
    targets = real[WINDOW:].astype(np.float64)
    res = evaluate(model, inputs, targets)
    return {"windows": len(inputs), "score": res["score"]}


def check_targets(test: dict[str, Any], walk_res: dict[str, Any], real: dict[str, Any]) -> dict:
    """The goals of the residual model, each with its numbers and whether it is met."""
    r = test["rms"]
    goals: dict[str, Any] = {}
    for f in ANSWER_FEATURES:
        m, h, fo = r["model"][f], r["helix"][f], r["field_only"][f]
        goals[f"rms_{f}<=helix/3"] = {"model": m, "limit": h / 3, "met": m <= h / 3}
        goals[f"rms_{f}<=1.25*field_only"] = {"model": m, "limit": 1.25 * fo, "met": m <= 1.25 * fo}
    s = test["score"]
    goals["score<=helix/3"] = {
        "model": s["model"],
        "limit": s["helix"] / 3,
        "met": s["model"] <= s["helix"] / 3,
    }
    for f in ("x", "y"):
        m, h = walk_res["model"][f], walk_res["helix"][f]
        goals[f"walk_{f}<=helix_walk"] = {"model": m, "limit": h, "met": m <= h}
    rs = real["score"]
    goals["real_score<=helix/2"] = {
        "model": rs["model"],
        "limit": rs["helix"] / 2,
        "met": rs["model"] <= rs["helix"] / 2,
    }
    return goals


def predict(model: torch.nn.Module, inputs: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """The model's next states for ``inputs``, in batches, without autograd."""
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def train_variant(
    variant: Variant, args: argparse.Namespace, run_dir: Path
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one variant with the project's trainer (``tracklstm.train``) on the windows file's
    training split, the recipe of config.yaml's ``residual`` variant (Adam, cosine decay to 1 %
    of the learning rate over the epochs, no clipping, the best validation epoch kept); return
    the model with the best weights and the run's summary."""
    settings = {
        "model": {"kind": "residual", **variant.settings},
        "training": {
            "epochs": variant.epochs,
            "batch_size": variant.batch_size,
            "learning_rate": variant.lr,
            "loss": variant.loss,
            "grad_clip_value": None,
            "scheduler": {"kind": "cosine", "min_lr": variant.lr / 100},
            "early_stopping": {"patience": None, "restore_best": True},
            "seed": args.seed,
        },
        "runtime": {"device": "cpu"},
    }
    out = run_dir / f"{variant.name}-seed{args.seed}"
    started = time.perf_counter()
    summary = train(args.windows, out, settings)
    model = build_residual(variant.settings)
    model.load_state_dict(torch.load(out / "weights_best.pt", weights_only=True))
    keys = ("epochs_run", "best_epoch", "best_val_mae", "best_val_mse", "parameters")
    result = {k: summary[k] for k in keys}
    result["seconds"] = round(time.perf_counter() - started, 2)
    return model.eval(), result


def loss_over_seeds(
    args: argparse.Namespace,
    run_dir: Path,
    val: tuple[np.ndarray, ...],
    test: tuple[np.ndarray, ...],
) -> dict[str, Any]:
    """L1 against MSE for the default MLP over ``args.loss_seeds`` seeds: one run each is
    within the spread of the seeds."""
    out: dict[str, Any] = {}
    for loss in ("mse", "l1"):
        scores: dict[str, list[float]] = {"validation": [], "test": []}
        for seed in range(args.loss_seeds):
            seeded = argparse.Namespace(**{**vars(args), "seed": seed})
            model, _ = train_variant(Variant(loss, MLP, loss=loss), seeded, run_dir)
            scores["validation"].append(evaluate(model, val[0], val[1])["score"]["model"])
            scores["test"].append(evaluate(model, test[0], test[1])["score"]["model"])
        out[loss] = {
            **scores,
            **{f"{k}_mean": float(np.mean(v)) for k, v in scores.items()},
            **{f"{k}_std": float(np.std(v)) for k, v in scores.items()},
        }
        log.info("loss %s over %d seeds: %s", loss, args.loss_seeds, out[loss])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", default=str(ROOT / "results/demo/windows.h5"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/residual_demo.json"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on the shared 2-core machine 2 threads ran these small models "
        "2-60x slower per step, the threads waiting on each other)",
    )
    # The defaults: config.yaml's `residual` variant (MLP 128-128, MSE, lr 3e-3, batch 256,
    # 40 epochs); the body's other settings are the schema's.
    p.add_argument("--body", default=MLP["body"], choices=["mlp", "lstm", "gru"])
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=MLP["hidden_sizes"])
    p.add_argument("--head-sizes", type=int, nargs="*", default=RESIDUAL["head_sizes"])
    p.add_argument("--history", type=int, default=RESIDUAL["history"])
    p.add_argument("--loss", default=Variant.loss, choices=["l1", "mse"])
    p.add_argument("--lr", type=float, default=Variant.lr)
    p.add_argument("--batch-size", type=int, default=Variant.batch_size)
    p.add_argument("--epochs", type=int, default=Variant.epochs, help="the cosine decay's span")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also train and rank the SWEEP variants")
    p.add_argument("--loss-seeds", type=int, default=5, help="seeds of the L1/MSE check (--sweep)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(args.threads)
    with h5py.File(args.windows, "r") as h5:
        train, val, test = (load_split(h5, s) for s in ("train", "validation", "test"))
    log.info("windows: train %d, validation %d, test %d", len(train[0]), len(val[0]), len(test[0]))
    result: dict[str, Any] = {"windows_file": args.windows, "machine": machine(args.threads)}
    run_dir = Path(tempfile.mkdtemp(prefix="residual_demo_"))

    if args.sweep:
        rows = []
        for variant in SWEEP:
            log.info("sweep %s", variant)
            model, summary = train_variant(variant, args, run_dir)
            res = evaluate(model, val[0], val[1])
            rows.append(
                {
                    **asdict(variant),
                    **summary,
                    "validation_rms": res["rms"]["model"],
                    "validation_score": res["score"]["model"],
                }
            )
            log.info(
                "sweep %s: validation score %.4f (helix %.4f, field-only %.4f)",
                variant.name,
                res["score"]["model"],
                res["score"]["helix"],
                res["score"]["field_only"],
            )
        rows.sort(key=lambda r: r["validation_score"])
        result["sweep"] = {
            "ranked_by": "validation score (each variant keeps its best validation epoch)",
            "variants": rows,
            "loss_over_seeds": loss_over_seeds(args, run_dir, val, test),
        }

    chosen = Variant(
        "chosen",
        {
            "body": args.body,
            "hidden_sizes": args.hidden_sizes,
            "head_sizes": args.head_sizes,
            "history": args.history,
            "field": [list(r) for r in NOMINAL_FIELD],
        },
        loss=args.loss,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
    )
    log.info("model: %s", chosen)
    t0 = time.perf_counter()
    model, summary = train_variant(chosen, args, run_dir)
    result["model"] = {
        **asdict(chosen),
        "trainer": "tracklstm.train: Adam, cosine lr decay to 1% over the epochs, no "
        "clipping, best validation epoch kept",
        **summary,
    }
    result["validation"] = evaluate(model, val[0], val[1])
    result["test"] = evaluate(model, test[0], test[1])
    result["walk"] = walk(model, complete_tracks(*test))
    result["real_track"] = real_track(model)
    result["targets"] = check_targets(result["test"], result["walk"], result["real_track"])
    result["all_targets_met"] = all(g["met"] for g in result["targets"].values())
    result["seconds_total"] = time.perf_counter() - t0
    result["machine"]["load_average_end"] = os.getloadavg()
    for name, rr in result["test"]["rms"].items():
        log.info(
            "test %-10s score %.4f rms %s",
            name,
            result["test"]["score"][name],
            ", ".join(f"{k} {v:.3g}" for k, v in rr.items()),
        )
    log.info("walk at plane 24: %s", result["walk"])
    log.info("real track scores: %s", result["real_track"]["score"])
    for goal, g in result["targets"].items():
        log.info(
            "%-28s %s  model %.4g, limit %.4g",
            goal,
            "met" if g["met"] else "NOT MET",
            g["model"],
            g["limit"],
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
