"""The simulator against real tracks, on demand (``tracklstm.evaluate.sim_vs_real`` does the work).

What it measures is in that module's notes; this script adds the timing and the machine and
writes ``benchmarks/results/sim_vs_real.json`` and its plot.

    python benchmarks/sim_vs_real.py [--tracks src/tracklstm/data/mlchallenge2_origin_plane24.csv]
        [--draws 1000] [--seed 1] [--out benchmarks/results/sim_vs_real.json] [--plot pulls.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.evaluate import sim_vs_real as svr  # noqa: E402
from tracklstm.files import write_json  # noqa: E402

log = logging.getLogger("sim_vs_real")

DEFAULT_TRACKS = svr.REAL_PAIRS_FILE
# The comparison itself is the package's (the workflow's page uses it too).
read_pairs, predicted, compare, plot = svr.read_pairs, svr.predicted, svr.compare, svr.plot
COMPARED, _INDEX = svr.COMPARED, svr.INDEX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=Path, default=DEFAULT_TRACKS)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sim_vs_real.json")
    parser.add_argument("--plot", type=Path, help="PNG of the pulls (default: beside --out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    origins, real24 = read_pairs(args.tracks)
    t0 = time.perf_counter()
    result = compare(origins, real24, args.draws, args.seed)
    seconds = time.perf_counter() - t0
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(result, plot_path)
    result.pop("_pulls")
    record = {
        "benchmark": "sim_vs_real",
        "tracks_file": str(
            args.tracks.relative_to(ROOT) if args.tracks.is_relative_to(ROOT) else args.tracks
        ),
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "result": result,
        "plot": str(plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path),
    }
    write_json(args.out, record)
    log.info("%s", json.dumps(result, indent=2))
    log.info("wrote %s and %s (%.0f s)", args.out, plot_path, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
