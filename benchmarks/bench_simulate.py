"""Benchmark of the track simulator: simulate_tracks + write_csv for N tracks.

Usage: ``python benchmarks/bench_simulate.py [N] [--seed S] [--results PATH]``
(N defaults to 194,601, the size of the real training file). Writes a JSON record with tracks
per second (wall and CPU time) for the simulation, the CSV writing and both, the peak RSS and
the machine, to ``benchmarks/results/simulate.json``. The speed target of the simulation is
20,000 tracks per second on one core.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tracklstm.data import simulate
from tracklstm.files import write_json
from tracklstm.stage_cli import setup_logging

log = logging.getLogger("bench_simulate")

TARGET_TRACKS_PER_S = 20_000
DEFAULT_RESULTS = Path(__file__).parent / "results" / "simulate.json"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run(n_tracks: int, seed: int) -> dict[str, object]:
    """Time the simulation and the CSV writing of ``n_tracks`` tracks; return the record."""
    simulate.simulate_tracks(100, seed=seed, shard=99)  # warm-up (imports, caches)
    tracks, sim_wall, sim_cpu = _timed(simulate.simulate_tracks, n_tracks, seed=seed, shard=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tracks.csv"
        _, csv_wall, csv_cpu = _timed(simulate.write_csv, tracks, path)
        csv_bytes = path.stat().st_size
    total_wall, total_cpu = sim_wall + csv_wall, sim_cpu + csv_cpu
    record: dict[str, object] = {
        "benchmark": "simulate",
        "n_tracks": n_tracks,
        "seed": seed,
        "simulate": {
            "seconds": round(sim_wall, 3),
            "cpu_seconds": round(sim_cpu, 3),
            "tracks_per_s": round(n_tracks / sim_wall, 1),
            "tracks_per_cpu_s": round(n_tracks / sim_cpu, 1),
        },
        "write_csv": {
            "seconds": round(csv_wall, 3),
            "cpu_seconds": round(csv_cpu, 3),
            "tracks_per_s": round(n_tracks / csv_wall, 1),
            "bytes": csv_bytes,
        },
        "total": {
            "seconds": round(total_wall, 3),
            "cpu_seconds": round(total_cpu, 3),
            "tracks_per_s": round(n_tracks / total_wall, 1),
        },
        "target_simulate_tracks_per_s": TARGET_TRACKS_PER_S,
        "meets_target": n_tracks / sim_wall >= TARGET_TRACKS_PER_S,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_tracks", nargs="?", type=int, default=194_601, help="tracks to time")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output")
    args = parser.parse_args(argv)
    setup_logging()
    if args.n_tracks < 1:
        log.error("n_tracks must be >= 1, got %d", args.n_tracks)
        return 2
    record = run(args.n_tracks, args.seed)
    write_json(args.results, record)
    sim, csv = record["simulate"], record["write_csv"]
    assert isinstance(sim, dict) and isinstance(csv, dict)
    log.info(
        "%d tracks: simulate %.2f s (%.0f tracks/s, %.0f per CPU s), write_csv %.2f s "
        "(%.0f tracks/s), peak RSS %.0f MB -> %s",
        args.n_tracks,
        sim["seconds"],
        sim["tracks_per_s"],
        sim["tracks_per_cpu_s"],
        csv["seconds"],
        csv["tracks_per_s"],
        record["peak_rss_mb"],
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
