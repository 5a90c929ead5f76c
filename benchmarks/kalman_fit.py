"""A Kalman-filter track fit with three propagators: the field map, the helix, the learned one.

The workflow's stage ``tracklstm.evaluate.track_fit`` (rule ``track_fit``, where its method is
described) on demand, with the machine recorded: the simulated test tracks measured in x, y at
planes 1-24 and fitted by the same filter and smoother with the field map, the helix and the
learned one-state model (its state, Jacobian and covariance). Results in
``benchmarks/results/kalman_fit.json``.

    PYTHONPATH=src python benchmarks/kalman_fit.py [--tracks 200] [--resolution 0.02]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import add_model_and_windows, machine  # noqa: E402

from tracklstm.evaluate.track_fit import DEFAULTS, track_fit  # noqa: E402
from tracklstm.files import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_and_windows(parser)
    parser.add_argument("--tracks", type=int, default=DEFAULTS["tracks"])
    parser.add_argument("--resolution", type=float, default=DEFAULTS["resolution_cm"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kalman_fit.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        record = track_fit(args.windows, args.model, Path(tmp) / "fit.json",
                           args.out.with_suffix(".png"), args.tracks, args.resolution)  # fmt: skip
    write_json(args.out, {"benchmark": "kalman_fit", **record, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
