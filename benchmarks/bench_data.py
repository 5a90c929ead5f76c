"""Benchmark of the data stages: simulate, CSV -> Parquet, Parquet -> HDF5 windows, challenge files.

Usage::

    python benchmarks/bench_data.py                 # 194,601 tracks (the real file's size)
    python benchmarks/bench_data.py --pairs 5       # 5 interleaved pairs (ours, reference)
    python benchmarks/bench_data.py --scale 10      # 10x: peak memory of each stage < 2 GB?
    python benchmarks/bench_data.py --tracks 20000  # a quick look

Each stage runs in its own process (``python -m tracklstm.<stage>``, as the workflow runs it),
so its wall time, CPU time (user + system, all threads) and peak resident memory (from
``wait4``) are its own.

The headline is CSV -> windows: our path (``to_parquet`` then ``windows``, two processes, the
windows written to HDF5) against the reference path (one process: ``pandas.read_csv``,
``dropna``, min-max normalization over all data, 17 offset slices into NumPy windows; writes
nothing), run in ``--pairs`` interleaved pairs (ours, reference, ours, reference, ...), ours on
fresh outputs each time (a run's outputs are removed after it, before the next). Reported:
every run, the medians of wall time, CPU time and peak memory of each path, the ratio of the
median wall times and the median of the per-pair ratios (the load of the moment affects a
pair's two runs alike). On a shared machine the CPU times are the steadier numbers; the load
average is recorded with every run. At scale 10 the reference (all windows in memory, about
12 GB) is skipped unless ``--reference``.

Results go into ``benchmarks/results/data.json``, one record per scale, with the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FULL_SIZE = 194_601
LIMIT_MB = 2000.0
#: The targets of CSV -> windows at scale 1: wall time against the reference, peak memory.
TARGET_RATIO = 2.0
TARGET_PEAK_MB = 500.0
DEFAULT_RESULTS = Path(__file__).parent / "results" / "data.json"

log = logging.getLogger("bench_data")


REPEAT = 1


def measure(name: str, cmd: list[str], log_path: Path, parse: bool = False) -> dict[str, Any]:
    """The fastest of REPEAT runs of ``cmd`` (the highest peak memory of them)."""
    runs = [measure_once(name, cmd, log_path, parse) for _ in range(REPEAT)]
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    if REPEAT > 1:
        best["all_seconds"] = [r["seconds"] for r in runs]
    return best


def measure_once(name: str, cmd: list[str], log_path: Path, parse: bool) -> dict[str, Any]:
    """Run ``cmd`` in its own process; its wall time (s) and peak RSS (MB, from wait4).

    With ``parse``, the JSON object the command prints is added to the record.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    start = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}); see {log_path}")
    peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    record: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    if parse:
        record.update(json.loads(stdout))
    log.info(
        "%-18s %8.1f s  %8.1f s CPU  %8.1f MB",
        name,
        seconds,
        record["cpu_seconds"],
        peak_mb,
    )
    return record


# --- helpers run in their own process -----------------------------------------------------


def _toy_csv(n: int, path: str) -> None:
    """Toy helices (the tests' generator), written 10,000 tracks at a time."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import toy_tracks

    from tracklstm.constants import COLUMNS

    with open(path, "w") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for i, start in enumerate(range(0, n, 10_000)):
            tracks = toy_tracks(min(10_000, n - start), seed=i)
            np.savetxt(fh, tracks.reshape(len(tracks), -1), delimiter=",", fmt="%.6g")


def _reference_read(path: str) -> None:
    """The reference conversion: pandas.read_csv of the whole file into memory."""
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(path)
    print(json.dumps({"rows": len(df), "read_seconds": round(time.perf_counter() - t0, 2)}))


def _reference_windows(path: str) -> None:
    """The reference path: read_csv, dropna, min-max over all data per feature, then
    per-offset slicing (offsets 0..16) into windows in memory."""
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(path)
    t1 = time.perf_counter()
    data = df.dropna().to_numpy()
    del df
    t2 = time.perf_counter()
    states = data.reshape(len(data), -1, 6)
    lo, hi = states.min(axis=(0, 1)), states.max(axis=(0, 1))
    data = ((states - lo) / (hi - lo)).reshape(len(data), -1)
    t_norm = time.perf_counter()
    length, n_offsets = 7, 17
    xs, ys = [], []
    for off in range(n_offsets):
        xs.append(data[:, off * 6 : (off + length) * 6].reshape(-1, length, 6))
        ys.append(data[:, (off + length) * 6 : (off + length + 1) * 6])
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "windows": len(x),
                "dtype": str(x.dtype),
                "windows_mb": round((x.nbytes + y.nbytes) / 2**20, 1),
                "read_seconds": round(t1 - t0, 2),
                "dropna_seconds": round(t2 - t1, 2),
                "minmax_seconds": round(t_norm - t2, 2),
                "slicing_seconds": round(t3 - t_norm, 2),
            }
        )
    )


HELPERS = {
    "toy-csv": _toy_csv,
    "reference-read": _reference_read,
    "reference-windows": _reference_windows,
}


# --- the benchmark ------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "median_seconds": _median(runs, "seconds"),
        "median_cpu_seconds": _median(runs, "cpu_seconds"),
        "median_peak_rss_mb": _median(runs, "peak_rss_mb"),
        "runs": runs,
    }


def _stage_record(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage over the pairs: medians, the highest peak, every wall time."""
    return {
        "seconds": _median(runs, "seconds"),
        "cpu_seconds": _median(runs, "cpu_seconds"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "all_seconds": [r["seconds"] for r in runs],
    }


def run(
    n_tracks: int, workdir: Path, *, reference: bool, simulator: str, pairs: int = 3
) -> dict[str, Any]:
    py = sys.executable
    csv, parquet = workdir / "tracks.csv", workdir / "tracks.parquet"
    h5 = workdir / "windows.h5"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    stages: dict[str, Any] = {}
    if simulator == "auto":
        try:
            import tracklstm.data.simulate  # noqa: F401

            simulator = "tracklstm"
        except ImportError:
            simulator = "toy"
    if simulator == "tracklstm":
        sim_cmd = [py, "-m", "tracklstm.data.simulate", "--n-tracks", str(n_tracks), "--seed", "1"]
        sim_cmd += ["--shard", "0", "--out", str(csv)]
    else:
        sim_cmd = [py, __file__, "_helper", "toy-csv", str(n_tracks), str(csv)]
    stages["simulate"] = measure_once("simulate", sim_cmd, logs / "simulate.log", False)
    stages["simulate"]["simulator"] = simulator
    quality = workdir / "quality.json"
    to_parquet = [py, "-m", "tracklstm.data.to_parquet", "--csv", str(csv), "--out", str(parquet)]
    to_parquet += ["--quality", str(quality)]
    windows = [py, "-m", "tracklstm.data.windows", "--parquet", str(parquet), "--out", str(h5)]
    ref_cmd = [py, __file__, "_helper", "reference-windows", str(csv)]

    def ours(keep: bool) -> dict[str, Any]:
        a = measure("to_parquet", to_parquet, logs / "to_parquet.log")
        b = measure("windows", windows, logs / "windows.log")
        if not keep:  # fresh outputs for the next run, removed before they reach the disk
            for path in (parquet, h5, quality):
                path.unlink(missing_ok=True)
        return {
            "seconds": round(a["seconds"] + b["seconds"], 2),
            "cpu_seconds": round(a["cpu_seconds"] + b["cpu_seconds"], 2),
            "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"]),
            "to_parquet": a,
            "windows": b,
        }

    our_runs: list[dict[str, Any]] = []
    ref_runs: list[dict[str, Any]] = []
    for i in range(pairs):
        our_runs.append(ours(keep=i == pairs - 1))
        if reference:
            ref_runs.append(measure("reference", ref_cmd, logs / "reference.log", parse=True))
            log.info(
                "pair %d: ours %.2f s, reference %.2f s: %.2fx",
                i + 1,
                our_runs[-1]["seconds"],
                ref_runs[-1]["seconds"],
                ref_runs[-1]["seconds"] / our_runs[-1]["seconds"],
            )
    stages["to_parquet"] = _stage_record([r["to_parquet"] for r in our_runs])
    stages["windows"] = _stage_record([r["windows"] for r in our_runs])
    challenge = [
        py,
        "-m",
        "tracklstm.data.challenge",
        "--parquet",
        str(parquet),
        "--windows",
        str(h5),
    ]
    challenge += ["--inputs-out", str(workdir / "test_inputs.csv")]
    challenge += ["--answers-out", str(workdir / "test_answers.csv")]
    stages["challenge"] = measure("challenge", challenge, logs / "challenge.log")
    import h5py

    with h5py.File(h5) as f:
        n_windows = json.loads(f.attrs["n_windows"])
    record: dict[str, Any] = {
        "tracks": n_tracks,
        "csv_mb": round(csv.stat().st_size / 2**20, 1),
        "parquet_mb": round(parquet.stat().st_size / 2**20, 1),
        "windows_h5_mb": round(h5.stat().st_size / 2**20, 1),
        "windows": n_windows,
        "stages": stages,
        "limit_mb": LIMIT_MB,
        "all_stages_under_limit": all(s["peak_rss_mb"] < LIMIT_MB for s in stages.values()),
    }
    c2w: dict[str, Any] = {"pairs": pairs, "ours": _summary(our_runs)}
    if reference:
        c2w["reference"] = _summary(ref_runs)
        ours_s, ref_s = c2w["ours"]["median_seconds"], c2w["reference"]["median_seconds"]
        c2w["ratio_wall"] = round(ref_s / ours_s, 2)
        per_pair = [r["seconds"] / o["seconds"] for o, r in zip(our_runs, ref_runs, strict=True)]
        c2w["ratio_wall_median_of_pairs"] = round(statistics.median(per_pair), 2)
        c2w["ratio_cpu"] = round(
            c2w["reference"]["median_cpu_seconds"] / c2w["ours"]["median_cpu_seconds"], 2
        )
        c2w["target"] = {
            "ratio_wall_at_least": TARGET_RATIO,
            "peak_rss_mb_at_most": TARGET_PEAK_MB,
            "met": c2w["ratio_wall"] >= TARGET_RATIO
            and c2w["ours"]["median_peak_rss_mb"] <= TARGET_PEAK_MB,
        }
    c2w["note"] = (
        "ours: to_parquet + windows (two processes, every check, windows written to HDF5, "
        "last target plane 24); reference: one process, pandas.read_csv, dropna, min-max, "
        "offsets 0..16, windows in memory (float64), nothing written"
    )
    record["csv_to_windows"] = c2w
    return record


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_helper"]:
        HELPERS[argv[1]](*[int(a) if a.isdigit() else a for a in argv[2:]])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=FULL_SIZE, help="tracks at scale 1")
    parser.add_argument("--scale", type=int, default=1, help="multiply the number of tracks")
    parser.add_argument("--simulator", choices=("auto", "tracklstm", "toy"), default="auto")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--reference", dest="reference", action="store_true", default=None)
    ref.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument(
        "--pairs", type=int, default=3, help="interleaved runs of ours and the reference"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each stage in a run (fastest kept)"
    )
    parser.add_argument("--workdir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SRC))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    global REPEAT
    REPEAT = max(1, args.repeat)
    n_tracks = args.tracks * args.scale
    reference = args.scale == 1 if args.reference is None else args.reference
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("%d tracks in %s (reference: %s)", n_tracks, workdir, reference)
    try:
        record = run(
            n_tracks,
            workdir,
            reference=reference,
            simulator=args.simulator,
            pairs=max(1, args.pairs),
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    record["repeat"] = REPEAT
    record["machine"] = machine()
    record["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results: dict[str, Any] = {}
    if args.results.exists():
        results = json.loads(args.results.read_text())
    key = f"scale_{args.scale}" if args.tracks == FULL_SIZE else f"tracks_{n_tracks}"
    results[key] = record
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    log.info("results in %s under %r", args.results, key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
