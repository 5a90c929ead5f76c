"""Benchmark of the data stages: simulate, CSV -> Parquet, Parquet -> HDF5 windows, challenge files.

Usage::

    python benchmarks/bench_data.py                 # 194,601 tracks (the real file's size)
    python benchmarks/bench_data.py --scale 10      # 10x: peak memory of each stage < 2 GB?
    python benchmarks/bench_data.py --tracks 20000  # a quick look
    python benchmarks/bench_data.py --repeat 3      # fastest of 3 runs per stage (busy machines)

Each stage runs in its own process (``python -m tracklstm.<stage>``, as the workflow runs it),
so its wall time, CPU time (user + system) and peak resident memory (from ``wait4``) are its
own. On a shared machine the CPU time is the steadier number. At scale 1 the reference
approach is measured in the same run, also one process per step: ``pandas.read_csv`` of the whole
file (the conversion), then ``read_csv``, ``dropna`` and per-offset slicing into NumPy windows
(the windowing). ``--reference`` / ``--no-reference`` overrides that choice.

Results go into ``benchmarks/results/data.json``, one record per scale, with the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FULL_SIZE = 194_601
LIMIT_MB = 2000.0
DEFAULT_RESULTS = Path(__file__).parent / "results" / "data.json"

log = logging.getLogger("bench_data")


def machine() -> dict[str, Any]:
    """The machine the numbers come from."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for mod in ("numpy", "pandas", "pyarrow", "h5py"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


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
    """The reference windowing: read_csv, dropna, then per-offset slicing (offsets 0..16)."""
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(path)
    t1 = time.perf_counter()
    data = df.dropna().to_numpy()
    del df
    t2 = time.perf_counter()
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
                "slicing_seconds": round(t3 - t2, 2),
            }
        )
    )


HELPERS = {
    "toy-csv": _toy_csv,
    "reference-read": _reference_read,
    "reference-windows": _reference_windows,
}


# --- the benchmark ------------------------------------------------------------------------


def run(n_tracks: int, workdir: Path, *, reference: bool, simulator: str) -> dict[str, Any]:
    py = sys.executable
    csv, parquet = workdir / "tracks.csv", workdir / "tracks.parquet"
    h5 = workdir / "windows.h5"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    stages: dict[str, Any] = {}
    if simulator == "auto":
        try:
            import tracklstm.simulate  # noqa: F401

            simulator = "tracklstm"
        except ImportError:
            simulator = "toy"
    if simulator == "tracklstm":
        sim_cmd = [py, "-m", "tracklstm.simulate", "--n-tracks", str(n_tracks), "--seed", "1"]
        sim_cmd += ["--shard", "0", "--out", str(csv)]
    else:
        sim_cmd = [py, __file__, "_helper", "toy-csv", str(n_tracks), str(csv)]
    stages["simulate"] = measure_once("simulate", sim_cmd, logs / "simulate.log", False)
    stages["simulate"]["simulator"] = simulator
    to_parquet = [py, "-m", "tracklstm.to_parquet"]
    quality = workdir / "quality.json"
    challenge = [py, "-m", "tracklstm.challenge"]
    challenge_out = ["--inputs-out", str(workdir / "test_inputs.csv")]
    challenge_out += ["--answers-out", str(workdir / "test_answers.csv")]
    stages["to_parquet"] = measure(
        "to_parquet",
        [*to_parquet, "--csv", str(csv), "--out", str(parquet), "--quality", str(quality)],
        logs / "to_parquet.log",
    )
    stages["windows"] = measure(
        "windows",
        [py, "-m", "tracklstm.windows", "--parquet", str(parquet), "--out", str(h5)],
        logs / "windows.log",
    )
    stages["challenge"] = measure(
        "challenge",
        [*challenge, "--parquet", str(parquet), "--windows", str(h5), *challenge_out],
        logs / "challenge.log",
    )
    import h5py

    with h5py.File(h5) as f:
        windows = json.loads(f.attrs["n_windows"])
    record: dict[str, Any] = {
        "tracks": n_tracks,
        "csv_mb": round(csv.stat().st_size / 2**20, 1),
        "parquet_mb": round(parquet.stat().st_size / 2**20, 1),
        "windows_h5_mb": round(h5.stat().st_size / 2**20, 1),
        "windows": windows,
        "stages": stages,
        "limit_mb": LIMIT_MB,
        "all_stages_under_limit": all(s["peak_rss_mb"] < LIMIT_MB for s in stages.values()),
    }
    if reference:
        ref = {
            "read_csv": measure(
                "reference read",
                [py, __file__, "_helper", "reference-read", str(csv)],
                logs / "reference_read.log",
                parse=True,
            ),
            "read_dropna_slice": measure(
                "reference windows",
                [py, __file__, "_helper", "reference-windows", str(csv)],
                logs / "reference_windows.log",
                parse=True,
            ),
        }
        record["reference"] = ref
        ours = stages["to_parquet"]["seconds"] + stages["windows"]["seconds"]
        ours_peak = max(stages["to_parquet"]["peak_rss_mb"], stages["windows"]["peak_rss_mb"])
        theirs = ref["read_dropna_slice"]
        record["csv_to_windows"] = {
            "ours_seconds": round(ours, 2),
            "ours_cpu_seconds": round(
                stages["to_parquet"]["cpu_seconds"] + stages["windows"]["cpu_seconds"], 2
            ),
            "reference_cpu_seconds": theirs["cpu_seconds"],
            "ours_peak_rss_mb": ours_peak,
            "reference_seconds": theirs["seconds"],
            "reference_peak_rss_mb": theirs["peak_rss_mb"],
            "note": "ours: to_parquet + windows (two processes, windows written to HDF5, "
            "last target plane 24); reference: one process, windows in memory, offsets 0..16",
        }
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
        "--repeat", type=int, default=1, help="runs of each stage after simulate (fastest kept)"
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
        record = run(n_tracks, workdir, reference=reference, simulator=args.simulator)
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
