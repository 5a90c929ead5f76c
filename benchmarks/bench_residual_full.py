"""The residual variant at full size: a simulated set as large as the real file, on the CPU.

Runs the real workflow (``snakemake``) in a temporary project on a simulated dataset of 194,601
tracks (the real training file's size, 8 shards), building the ``residual`` model exactly as
config.yaml describes it (its own training settings), with the CPU training time recorded by
Snakemake's benchmark of the train job. Then reads the evaluation: the variant's RMS of x, y,
px, py and pz against the field map's (the noise floor of simulated tracks) and the helix's, on
the same test windows, and the challenge scores.

Target (issue: the helix-correcting network): RMS of x, y, px and py within 1.05 times the
floor's, with a CPU training budget of 20 minutes or less. A model with a covariance head
(``--model residual_markov``) also records its calibration (``metrics.json`` ``covariance``:
pull widths overall and per momentum quartile, chi2/ndf, coverage, the walk), its transport
Jacobian against the field map's (``jacobian``; ``jacobian_term``: the training's term) and its
Kalman track fit (rule ``track_fit``).

    PYTHONPATH=src python benchmarks/bench_residual_full.py [--tracks 194601] [--keep DIR]
    PYTHONPATH=src python benchmarks/bench_residual_full.py --model residual_markov [--epochs N]

Both variants set ``training.max_steps: 168000`` in config.yaml: at full size (an epoch of the
one-state model is 13,988 steps, of the windowed one 10,947) that is 12 and 15 epochs, within
the budget on 2 cores (2026-12-07, the one-state model: 389-429 s wall, 721-797 s CPU, the RMS
at the floor's, 1.0007-1.0028); on the demo they keep their 40. ``--epochs N`` sets another
number (without the budget).

Results: ``benchmarks/results/residual_full.json`` (``residual_full_<model>.json`` for another
model) with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchlib import machine

from tracklstm.files import write_json
from tracklstm.settings import merge

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "residual_full.json"
FULL_SIZE = 194_601
SHARDS = 8
BUDGET_S = 20 * 60
FLOOR_FACTOR = 1.05

log = logging.getLogger("bench_residual_full")


def project(workdir: Path, tracks: int, model: str, epochs: int | None = None) -> Path:
    """A copy of the workflow with a config whose one dataset is the full-size simulated set
    (and, with ``epochs``, the model's epochs set to it, without its step budget)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "src", "profiles", "cpp"):
        shutil.rmtree(workdir / folder, ignore_errors=True)  # a kept folder: this code's copy
        shutil.copytree(
            ROOT / folder,
            workdir / folder,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "build"),
        )
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    per_shard = -(-tracks // SHARDS)
    config["datasets"]["full"] = {
        "description": "simulated, the real file's size",
        "source": "simulate",
        "simulate": {"tracks_per_shard": per_shard, "shards": SHARDS, "seed": 20261130},
        "training": {"covariance_loss_tail": "simulator"},  # simulated, as the demo
    }
    config["build"] = {"datasets": ["full"], "models": [model]}
    if epochs is not None:
        override = {"training": {"epochs": epochs, "max_steps": None}}
        config["models"][model] = merge(config["models"].get(model) or {}, override)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def read_tsv(path: Path) -> dict[str, float]:
    with open(path, newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return {k: float(v) for k, v in row.items() if k not in ("h:m:s",)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=FULL_SIZE)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="folder to build in and keep (default: temp)")
    parser.add_argument("--model", default="residual", help="the model variant of config.yaml")
    parser.add_argument("--out", type=Path, help="default: results/residual_full[_<model>].json")
    parser.add_argument(
        "--epochs", type=int, help="train this many epochs instead of the model's own"
    )
    args = parser.parse_args(argv)
    model = args.model
    if args.out is None:
        args.out = (
            RESULTS if model == "residual" else RESULTS.with_name(f"residual_full_{model}.json")
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = args.keep or Path(tempfile.mkdtemp(prefix="residual_full_"))
    work = project(base, args.tracks, model, args.epochs)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log.info("building %d tracks and the %s model in %s", args.tracks, model, work)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--quiet", "rules"],
        cwd=work,
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t0
    res = work / "results" / "full"
    metrics = json.loads((res / model / "evaluation" / "full" / "metrics.json").read_text())
    train = read_tsv(res / "benchmarks" / "train" / f"{model}.tsv")
    training = json.loads((res / model / "training.json").read_text())
    track_fit = res / model / "track_fit" / "fit.json"
    features = ("x", "y", "px", "py", "pz")
    rms = {
        "residual": {f: metrics["residuals"][f]["rms"] for f in features},
        **{
            m: {f: metrics["baselines"][m]["residuals"][f]["rms"] for f in features}
            for m in ("helix", "field_only")
        },
    }
    over_floor = {f: rms["residual"][f] / rms["field_only"][f] for f in features}
    targets = {
        f"rms_{f}<={FLOOR_FACTOR}*floor": {
            "ratio": round(over_floor[f], 4),
            "met": over_floor[f] <= FLOOR_FACTOR,
        }
        for f in ("x", "y", "px", "py")
    }
    targets["training_cpu_s<=1200"] = {
        "cpu_s": train["cpu_time"],
        "wall_s": train["s"],
        "met": train["cpu_time"] <= BUDGET_S,
    }
    ch = metrics.get("challenge", {})
    record = {
        "model": model,
        "tracks": args.tracks,
        "test_windows": metrics["n_test_windows"],
        "train_windows": training.get("n_train"),
        "epochs": training.get("epochs_run"),
        "rms": rms,
        "residual_over_floor": over_floor,
        "residual_over_helix": {f: rms["residual"][f] / rms["helix"][f] for f in features},
        "challenge_score": {m: ch[m]["score"] for m in ("network", "helix", "field_only")}
        if ch
        else None,
        "real_track": metrics.get("real_track"),
        "walk_last_plane_rms": {
            m: {f: metrics["walk"][m][f]["rms"][-1] for f in ("x", "y")}
            for m in ("network", "helix", "field_only")
        }
        if metrics["walk"].get("n_tracks")
        else None,
        "covariance": metrics.get("covariance"),
        "jacobian": metrics.get("jacobian"),
        "jacobian_term": training.get("jacobian_term"),
        "track_fit": json.loads(track_fit.read_text()) if track_fit.is_file() else None,
        "targets": targets,
        "all_met": all(t["met"] for t in targets.values()),
        "training_job": train,
        "pipeline_wall_s": round(wall, 1),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.out, record)
    for name, t in targets.items():
        log.info("%-28s %s %s", name, "met" if t["met"] else "NOT met", t)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if record["all_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
