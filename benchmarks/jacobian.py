"""Transport Jacobians of the trained propagators against the field map's, on demo test states.

For each of ``--states`` test windows of ``results/demo/windows.h5`` (the last state, and the
next plane's z): the Jacobian of x, y, px, py, pz at the next plane with respect to the current
ones, of the field map (central finite differences of the Runge-Kutta propagation: the
reference), of the nominal helix (exact, autograd) and of each trained model of ``--models``
(autograd). Reported as ``tracklstm.evaluate.jacobian.relative_difference``: J - I with momenta
in 10 MeV/c, Frobenius norm of the difference over the field map's; median and 95th percentile.

    PYTHONPATH=src python benchmarks/jacobian.py [--models residual residual_markov]
        [--states 400] [--out benchmarks/results/jacobian.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.evaluate import jacobian as jac  # noqa: E402
from tracklstm.export.module import load_physical_model  # noqa: E402
from tracklstm.files import write_json  # noqa: E402

log = logging.getLogger("jacobian")


def summary(values: np.ndarray) -> dict[str, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return {"median": round(float(p50), 5), "p95": round(float(p95), 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=Path, default=ROOT / "results/demo/windows.h5")
    parser.add_argument("--runs", type=Path, default=ROOT / "results/demo")
    parser.add_argument("--models", nargs="+", default=["residual", "residual_markov"])
    parser.add_argument("--states", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/jacobian.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with h5py.File(args.windows, "r") as h5:
        windows = h5["test"]["inputs"][: args.states]
        targets = h5["test"]["targets"][: args.states]
    states, z_next = windows[:, -1].astype(np.float64), targets[:, 2].astype(np.float64)
    reference = jac.field_jacobian(states, z_next)
    result = {
        "helix": summary(jac.relative_difference(jac.helix_jacobian(states, z_next), reference))
    }
    for name in args.models:
        model, _ = load_physical_model(args.runs / name)
        result[name] = summary(
            jac.relative_difference(jac.model_jacobian(model, windows), reference)
        )
    record = {
        "benchmark": "jacobian",
        "states": len(states),
        "windows": str(
            args.windows.relative_to(ROOT) if args.windows.is_relative_to(ROOT) else args.windows
        ),
        "measure": "||J - J_field|| / ||J_field - I||, Frobenius, momenta in 10 MeV/c",
        "result": result,
        "machine": machine(),
    }
    write_json(args.out, record)
    log.info("%s", json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
