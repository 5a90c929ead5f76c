"""One call, one track: the learned propagator from C++ against the Runge-Kutta it would replace.

```sh
make run                                          # the demo's trained and exported models
PYTHONPATH=src python benchmarks/bench_surrogate.py --rounds 5
```

For each residual model of the demo (``--models``: the one-state ``residual_markov`` and the
windowed ``residual``) on the demo's test windows (3,000 plane steps of about 2 cm, 600 long
steps over the 48 cm and 28 cm gaps between plane groups), from C++:

- the plain C++ propagator (``cpp/include/tracklstm/propagator.hpp``, ``model.weights.txt``),
  state only and with its covariance: per call (batch 1), per step at batch 1,024, one thread
  and all threads (``cpp/build/tracklstm_propagate --bench``);
- the field map's C++ Runge-Kutta (``runge_kutta.hpp``) at several longest steps
  (``--rk-max-steps``; 5 cm is the simulator's own), per call, plane and long steps apart;
- the same model as TorchScript (``model.ts``) and as an AOTInductor package
  (``model.aoti.pt2``, compiled here when the demo has none) through ``cpp/build/
  tracklstm_predict --bench`` at batch 1 and 1,024.

Each one's error is the RMS of x, y, px, py, pz against the simulated truth on the same windows
(TorchScript and AOTInductor compute the plain propagator's numbers to 1e-7: one error for the
three). Rounds are interleaved (the order rotates every round) and the ratios are medians of
per-round ratios, so a busy machine moves them less than the times. Results:
``benchmarks/results/surrogate.json`` and the table ``surrogate.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import torch

from tracklstm.export.tensor_file import write_tensor
from tracklstm.files import atomic_path, write_json
from tracklstm.physics.solenoid import field_file_text
from tracklstm.stage_cli import setup_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import bench_rows, machine

log = logging.getLogger("bench_surrogate")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUILD = ROOT / "cpp" / "build"
FEATURES = ("x", "y", "px", "py", "pz")


def build() -> None:
    """cpp/ built with CMake against the wheel's libtorch (both programs)."""
    steps = [
        ["cmake", "-S", str(ROOT / "cpp"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
        ["cmake", "--build", str(BUILD), "--parallel", "2"],
    ]  # fmt: skip
    for cmd in steps:
        subprocess.run(cmd, check=True, capture_output=True, text=True)


def aoti_package(run: Path, out: Path) -> Path:
    """The run's AOTInductor package: the demo's, or one compiled into ``out``."""
    if (run / "model.aoti.pt2").is_file():
        return run / "model.aoti.pt2"
    if not out.is_file():
        log.info("compiling an AOTInductor package of %s (about 30 s)", run)
        cmd = [sys.executable, "-m", "tracklstm.export.aoti", "--run", str(run), "--out", str(out)]
        subprocess.run([*cmd, "--threads", "2"], check=True, capture_output=True, text=True)
    return out


def run_json(cmd: list[str]) -> dict[str, Any]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def torch_bench(model: Path, windows: Path, threads: int, seconds: float) -> dict[str, float]:
    """Microseconds per call at batch 1 and per window at batch 1,024 (tracklstm_predict)."""
    cmd = [str(BUILD / "tracklstm_predict"), "--model", str(model), "--input", str(windows)]
    cmd += ["--bench", "--bench-batches", "1,1024", "--threads", str(threads)]
    cmd += ["--bench-seconds", str(seconds)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    return {
        f"batch_{row['batch']}_us": 1e3 * float(row["ms_per_batch"]) / int(row["batch"])
        for row in bench_rows(result.stdout)
    }


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def bench_model(
    name: str, args: argparse.Namespace, work: Path, windows: Path, truth: Path, field: Path
) -> dict[str, Any]:
    run = ROOT / "results" / args.dataset / name
    weights = run / "model.weights.txt"
    if not weights.is_file():
        raise SystemExit(f"{weights}: missing; run `make run` first (rule export_plain)")
    files = {
        "torchscript": run / "model.ts",
        "aotinductor": aoti_package(run, work / f"{name}.pt2"),
    }
    threads_all = os.cpu_count() or 1
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        jobs = ["plain", "torchscript", "aotinductor"]
        jobs = jobs[r % 3 :] + jobs[: r % 3]
        rec: dict[str, Any] = {}
        for job in jobs:
            if job == "plain":
                cmd = [str(BUILD / "tracklstm_propagate"), "--bench", "--model", str(weights)]
                cmd += ["--field", str(field), "--input", str(windows), "--truth", str(truth)]
                cmd += ["--threads", str(threads_all), "--seconds", str(args.seconds)]
                cmd += ["--rk-max-steps", args.rk_max_steps]
                rec["plain"] = run_json(cmd)
            else:
                for threads in sorted({1, threads_all}):
                    rec[f"{job}_{threads}"] = torch_bench(
                        files[job], windows, threads, args.seconds
                    )
        rounds.append(rec)
        p = rec["plain"]["propagator"]
        log.info(
            "%s round %d: plain %.2f us/call (%.2f with covariance), %.3f us/step at 1,024; "
            "AOTInductor %.1f us/call; TorchScript %.1f us/call; Runge-Kutta %.2f us/call",
            name, r + 1, p["call_us_plane"], p.get("call_us_covariance_plane", float("nan")),
            p["batch_us_per_step"], rec["aotinductor_1"]["batch_1_us"],
            rec["torchscript_1"]["batch_1_us"], rec["plain"]["runge_kutta"][0]["call_us_all"],
        )  # fmt: skip
    return summarize(rounds, threads_all)


def summarize(rounds: list[dict[str, Any]], threads_all: int) -> dict[str, Any]:
    """Medians of the times and of the per-round ratios to the plain propagator's call."""
    first = rounds[0]["plain"]
    prop = [r["plain"]["propagator"] for r in rounds]
    keys = [k for k, v in prop[0].items() if isinstance(v, float | int) and k != "history"]
    out: dict[str, Any] = {
        "windows": {k: first[k] for k in ("windows", "plane_steps", "long_steps")},
        "threads_all": threads_all,
        "plain": {k: median([p[k] for p in prop]) for k in keys},
        "plain_rms": first["propagator"]["rms"],
        "history": first["propagator"]["history"],
    }
    out["plain"]["batch_steps_per_s_one_thread"] = round(1e6 / out["plain"]["batch_us_per_step"])
    call = [p["call_us_plane"] for p in prop]
    for engine in ("torchscript", "aotinductor"):
        for threads in sorted({1, threads_all}):
            recs = [r[f"{engine}_{threads}"] for r in rounds]
            out[f"{engine}_{threads}_threads"] = {
                "call_us": median([x["batch_1_us"] for x in recs]),
                "batch_us_per_step": median([x["batch_1024_us"] for x in recs]),
                "call_ratio_to_plain": median(
                    [x["batch_1_us"] / c for x, c in zip(recs, call, strict=True)]
                ),
            }
    rk_out = []
    for i, rk in enumerate(first["runge_kutta"]):
        per = [r["plain"]["runge_kutta"][i] for r in rounds]
        rk_out.append({
            "max_step_cm": rk["max_step_cm"],
            "rms": rk["rms"],
            **{k: median([p[k] for p in per]) for k in
               ("call_us_plane", "call_us_long", "call_us_all", "call_steps_per_s_all_threads")},
            "plain_call_over_rk_plane": median(
                [r["plain"]["propagator"]["call_us_plane"] / p["call_us_plane"]
                 for r, p in zip(rounds, per, strict=True)]),
            "plain_call_over_rk_long": median(
                [r["plain"]["propagator"]["call_us_long"] / p["call_us_long"]
                 for r, p in zip(rounds, per, strict=True)]),
        })  # fmt: skip
    out["runge_kutta"] = rk_out
    plain = out["plain"]
    out["targets"] = {
        "call_us_state_le_5": plain["call_us_plane"] <= 5.0,
        "call_us_covariance_le_10": plain.get("call_us_covariance_plane", 99) <= 10.0,
        "aoti_ratio_ge_4": out["aotinductor_1_threads"]["call_ratio_to_plain"] >= 4.0,
        "torchscript_ratio_ge_25": out["torchscript_1_threads"]["call_ratio_to_plain"] >= 25.0,
        "batch_steps_per_s_one_thread_ge_1e6": plain["batch_steps_per_s_one_thread"] >= 1e6,
    }
    return out


def table(results: dict[str, Any]) -> str:
    """The side-by-side table (markdown) of every model's record."""
    lines = []
    for name, rec in results["models"].items():
        p, rms = rec["plain"], rec["plain_rms"]
        lines += [
            f"### {name} (history {rec['history']})",
            "",
            "| propagator (C++, one thread) | one call [us] | per step at batch 1,024 [us] | "
            "RMS x, y [um] plane / long step | RMS px, py, pz [MeV/c] plane / long step |",
            "|---|---|---|---|---|",
        ]

        def errs(r: dict[str, list[float]]) -> tuple[str, str]:
            pos = " / ".join(f"{1e4 * (r[s][0] + r[s][1]) / 2:.1f}" for s in ("plane", "long"))
            mom = " / ".join(
                ", ".join(f"{1e3 * v:.2f}" for v in r[s][2:]) for s in ("plane", "long")
            )
            return pos, mom

        pos, mom = errs(rms)
        lines.append(
            f"| plain C++ propagator, state | {p['call_us_plane']:.2f} | "
            f"{p['batch_us_per_step']:.3f} | {pos} | {mom} |"
        )
        if "call_us_covariance_plane" in p:
            lines.append(
                f"| plain C++ propagator, state + covariance | {p['call_us_covariance_plane']:.2f}"
                f" | {p['batch_us_per_step_covariance']:.3f} | same | same |"
            )
        for engine, label in (
            ("aotinductor", "AOTInductor package"),
            ("torchscript", "TorchScript"),
        ):
            e = rec[f"{engine}_1_threads"]
            lines.append(
                f"| {label} (libtorch) | {e['call_us']:.1f} ({e['call_ratio_to_plain']:.0f}x) | "
                f"{e['batch_us_per_step']:.3f} | same | same |"
            )
        for rk in rec["runge_kutta"]:
            pos, mom = errs(rk["rms"])
            lines.append(
                f"| Runge-Kutta in the field map, steps <= {rk['max_step_cm']:g} cm (no "
                f"covariance) | {rk['call_us_plane']:.3f} plane, {rk['call_us_long']:.3f} long "
                f"| (one call per step) | {pos} | {mom} |"
            )
        n = rec["threads_all"]
        rk_rate = rec["runge_kutta"][0]["call_steps_per_s_all_threads"] / 1e6
        lines += [
            "",
            f"All {n} threads: plain propagator {p['batch_steps_per_s_all_threads'] / 1e6:.2f} M "
            f"steps/s at batch 1,024 ({p['call_steps_per_s_all_threads'] / 1e6:.2f} M one call at "
            f"a time); Runge-Kutta {rk_rate:.1f} M steps/s.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--dataset", default="demo", help="results/<dataset>/ (default demo)")
    parser.add_argument("--models", default="residual_markov,residual")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="timed seconds per figure")
    parser.add_argument("--rk-max-steps", default="5,25,50", help="Runge-Kutta longest steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "surrogate.json")
    args = parser.parse_args(argv)
    setup_logging()
    build()
    split = h5py.File(ROOT / "results" / args.dataset / "windows.h5", "r")["test"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        windows, truth, field = work / "windows.bin", work / "truth.bin", work / "field.txt"
        write_tensor(windows, split["inputs"][:])
        write_tensor(truth, split["targets"][:], float64=True)
        field.write_text(field_file_text())
        models = {
            name: bench_model(name, args, work, windows, truth, field)
            for name in args.models.split(",")
        }
    results = {"machine": machine(), "rounds": args.rounds, "models": models}
    write_json(args.out, results)
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(table(results) + "\n")
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
