"""Stage 5: export a trained run as a self-contained TorchScript model in physical units.

The saved module takes (batch, window, 6) states in cm and GeV/c and returns (batch, 6) in the
same units: the normalization lives inside it. ``metadata.json`` travels in the file as an
extra file (plane z list, normalization, window length, features and units, data fingerprint,
package version); ``torch.jit.load(path, _extra_files={"metadata.json": ""})`` reads it back.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

import tracklstm
from tracklstm.constants import FEATURES, PLANE_Z, UNITS
from tracklstm.io import atomic_path, setup_logging
from tracklstm.model import PhysicalModel, build_model

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"


class ExportCheckError(RuntimeError):
    """The exported model does not reproduce the eager model."""


def load_physical_model(run_dir: str | Path, weights: str = "best") -> tuple[PhysicalModel, dict]:
    """The eager model of a training run, in physical units, and its ``training.json``."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "training.json").read_text())
    core = build_model(summary["settings"]["model"])
    state = torch.load(run_dir / f"weights_{weights}.pt", map_location="cpu", weights_only=True)
    core.load_state_dict(state)
    model = PhysicalModel(
        core, torch.tensor(summary["norm_min"]), torch.tensor(summary["norm_max"])
    )
    return model.eval(), summary


def metadata(summary: dict[str, Any], weights: str) -> dict[str, Any]:
    """What a host needs to use the model correctly, stored inside the exported file."""
    return {
        "format": "tracklstm-torchscript-1",
        "input": "float32 (batch, window_length, 6): x, y, z [cm], px, py, pz [GeV/c]",
        "output": "float32 (batch, 6): the state at the next plane, same units",
        "window_length": summary["window_length"],
        "features": list(FEATURES),
        "units": UNITS,
        "plane_z": list(PLANE_Z),
        "norm_min": summary["norm_min"],
        "norm_max": summary["norm_max"],
        "data_fingerprint": summary["data_fingerprint"],
        "model": summary["settings"]["model"],
        "weights": weights,
        "tracklstm_version": tracklstm.__version__,
        "torch_version": torch.__version__,
    }


def example_inputs(summary: dict[str, Any], n: int = 256, seed: int = 0) -> torch.Tensor:
    """Inputs spread over the normalization box, for the parity checks."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(summary["norm_min"])
    hi = torch.tensor(summary["norm_max"])
    u = torch.rand(n, int(summary["window_length"]), len(FEATURES), generator=g)
    return lo + u * (hi - lo)


def export_torchscript(
    run_dir: str | Path, out: str | Path, *, weights: str = "best", atol: float = 1e-5
) -> dict[str, Any]:
    """Script the run's model, check it against the eager one, and save it to ``out``."""
    model, summary = load_physical_model(run_dir, weights)
    meta = metadata(summary, weights)
    scripted = torch.jit.script(model)
    x = example_inputs(summary)
    with torch.no_grad():
        diff = (scripted(x) - model(x)).abs().max().item()
    if not diff <= atol:
        raise ExportCheckError(f"TorchScript differs from the eager model by {diff:.3g} > {atol}")
    with atomic_path(out) as tmp:
        scripted.save(str(tmp), _extra_files={METADATA_NAME: json.dumps(meta)})
        reloaded = torch.jit.load(str(tmp), map_location="cpu")
        with torch.no_grad():
            diff_reload = (reloaded(x) - model(x)).abs().max().item()
        if not diff_reload <= atol:
            raise ExportCheckError(f"the saved TorchScript file differs by {diff_reload:.3g}")
    log.info("wrote %s (max |scripted - eager| = %.2e)", out, max(diff, diff_reload))
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored inside an exported TorchScript file."""
    extra = {METADATA_NAME: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_NAME])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracklstm export", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training run folder")
    parser.add_argument("--out", required=True, help="TorchScript file to write (model.ts)")
    parser.add_argument("--weights", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        export_torchscript(args.run, args.out, weights=args.weights)
    except ExportCheckError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
