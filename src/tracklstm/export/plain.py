"""The residual model for C++ without libtorch: a text file of its weights, checked in C++.

``python -m tracklstm.export.plain`` (``tracklstm plain``), rule ``export_plain``.

A reconstruction that calls the propagator once per track and plane cannot afford a framework's
20 to 130 us per call. ``cpp/include/tracklstm/propagator.hpp`` is the model in plain C++17 (one
header, no dependency): the float64 helix prior, the features, the MLP body and the covariance
head. It reads ``model.weights.txt``, which this module writes from a training run: every number
the model uses (field, plane table, statistics, layers; float32 weights written so that they
read back exactly) and the export metadata, in a text format a person can read:

    tracklstm-propagator 4
    metadata {...the export metadata, JSON...}
    history H  window W  field R z qbz ...  planes N z ...  curvature 1 c  ...
    step_mean 6 ...  step_std 6 ...  static_mean 16 ...  static_std 16 ...  corr_mean 5 ...
    body L  dense n_in n_out W (row by row) b  ...  covariance 0|1 [max_unit_entry 1 ...
    min_cholesky_diagonal 1 ...  covariance_scale_momentum K ...  covariance_scale 5K ...
    covariance_mixture_weight M ...  covariance_mixture_scale M ...
    covariance_transform 25 ...  covariance_loss_variance 1 ...  covariance_head ...]  end

(The header still reads version 3 files, without the covariance's transform and energy-loss
term, version 2 files, without its scale mixture either, and version 1 files, with one
``covariance_scale 5`` for all |p|.)

Only the residual kind with an MLP body has one (``supported``). Before the file appears under
its name the stage compiles ``cpp/tracklstm_propagate.cpp`` with the machine's C++ compiler
(``$CXX`` or ``c++``), runs it on the parity windows and compares its states with the
TorchScript file's, like every other export (``export.parity``, same tolerance), and, for a
model with a covariance head, its covariances and transport Jacobians (``forward_with_covariance``
and ``jacobian``; ``COVARIANCE_TOLERANCE``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tracklstm import stage_cli
from tracklstm.export.loading import load_model
from tracklstm.export.module import load_physical_model, metadata, run_files
from tracklstm.export.parity import (
    COVARIANCE_TOLERANCE,
    covariance_rows,
    example_inputs,
    failures,
    norm_scale,
    parity_rows,
)
from tracklstm.export.tensor_file import read_tensor, write_tensor
from tracklstm.files import atomic_paths, check_outputs, input_file, write_json
from tracklstm.models.residual import (
    N_STEP_FEATURES,
    STATIC_FEATURES,
    ResidualPropagator,
)
from tracklstm.physics.helix_field import CURVATURE_PER_CM
from tracklstm.physics.helix_prior import SINC_SERIES
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

#: The first line of a propagator file (``cpp/include/tracklstm/propagator.hpp`` reads 1 to 4).
MAGIC = "tracklstm-propagator 4"
#: The C++ folder of this project (the rule passes the workflow's own).
CPP_DIR = Path(__file__).resolve().parents[3] / "cpp"
#: The program the check compiles, in the C++ folder (its headers: ``include/tracklstm/``).
PROGRAM = "tracklstm_propagate.cpp"


class PlainExportError(RuntimeError):
    """A model without a plain C++ form, no compiler, or a C++ result that differs."""


def supported(model: nn.Module) -> bool:
    """Whether ``model`` has a plain C++ form: the residual kind with an MLP body."""
    return isinstance(model, ResidualPropagator) and isinstance(
        getattr(model.body, "net", None), nn.Sequential
    )


def _linears(net: nn.Sequential) -> list[nn.Linear]:
    """The Linear layers of an MLP (SiLU between them, dropout ignored: inference)."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    others = {type(m).__name__ for m in net if not isinstance(m, nn.Linear | nn.SiLU | nn.Dropout)}
    if others:
        raise PlainExportError(f"the MLP has layers plain C++ does not know: {sorted(others)}")
    return layers


def _numbers(values: Iterable[float]) -> str:
    """Each value as the shortest text that reads back as the same float64."""
    return " ".join(repr(float(v)) for v in values)


def _vector(key: str, tensor: Tensor) -> str:
    values = tensor.detach().reshape(-1).tolist()
    return f"{key} {len(values)} {_numbers(values)}"


def _network(key: str, net: nn.Sequential) -> list[str]:
    layers = _linears(net)
    lines = [f"{key} {len(layers)}"]
    for layer in layers:
        w = layer.weight.detach().to(torch.float32)
        lines.append(f"dense {w.shape[1]} {w.shape[0]}")
        lines += [_numbers(row) for row in w.tolist()]
        lines.append(_numbers(layer.bias.detach().to(torch.float32).tolist()))
    return lines


def weights_text(model: ResidualPropagator, meta: dict[str, Any]) -> str:
    """The propagator file of ``model`` (see the module docstring), with ``meta`` inside."""
    if not supported(model):
        raise PlainExportError("only a residual model with an MLP body has a plain C++ form")
    assert len(STATIC_FEATURES) == 16 and N_STEP_FEATURES == 6  # the header's layout
    regions = list(zip(model.field_z.tolist(), model.field_qbz.tolist(), strict=True))
    lines = [
        MAGIC,
        "metadata " + json.dumps(meta, sort_keys=True),
        f"history {model.body.history}",
        f"window {model.window}",
        f"field {len(regions)} " + " ".join(_numbers(r) for r in regions),
        f"planes {len(model.plane_z)} {_numbers(model.plane_z.tolist())}",
        f"curvature 1 {CURVATURE_PER_CM!r}",
        f"sin_over_x_series_below 1 {SINC_SERIES!r}",
    ]
    for key in ("step", "static", "corr"):
        lines.append(_vector(f"{key}_mean", getattr(model, f"{key}_mean")))
        lines.append(_vector(f"{key}_std", getattr(model, f"{key}_std")))
    lines += _network("body", model.body.net)
    if model.has_covariance:
        head = model.cov_head
        lines += [
            "covariance 1",
            f"max_unit_entry 1 {float(head.max_unit)!r}",
            f"min_cholesky_diagonal 1 {float(head.min_diagonal)!r}",
            _vector("covariance_scale_momentum", model.cov_scale_momentum),
            _vector("covariance_scale", model.cov_scale),
            _vector("covariance_mixture_weight", model.cov_mixture_weight),
            _vector("covariance_mixture_scale", model.cov_mixture_scale),
            _vector("covariance_transform", model.cov_transform),
            _vector("covariance_loss_variance", model.cov_loss_variance),
            *_network("covariance_head", head.net),
        ]
    else:
        lines.append("covariance 0")
    lines.append("end")
    return "\n".join(lines) + "\n"


def compile_program(build_dir: str | Path, cpp_dir: str | Path = CPP_DIR) -> Path:
    """``tracklstm_propagate`` compiled from ``cpp_dir`` into ``build_dir`` (-O2, C++17)."""
    cpp_dir = Path(cpp_dir)
    input_file(cpp_dir / PROGRAM, "C++ source")
    input_file(cpp_dir / "include" / "tracklstm" / "propagator.hpp", "C++ header")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise PlainExportError(
            "no C++ compiler (set CXX, or install c++/g++; or set export.plain: false)"
        )
    exe = Path(build_dir) / "tracklstm_propagate"
    cmd = [compiler, "-O2", "-std=c++17", "-pthread", "-I", str(cpp_dir / "include")]
    cmd += [str(cpp_dir / PROGRAM), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise PlainExportError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return exe


class PlainProgram:
    """A propagator file run by the compiled C++ program, called like a loaded model."""

    def __init__(self, exe: Path, weights: Path, work: Path) -> None:
        self.exe, self.weights, self.work = exe, weights, work

    def forward_with_covariance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (batch, window, 6) -> (states (batch, 6), covariances (batch, 5, 5)), float64."""
        return self._run(x, "cov")[:2]

    def jacobian(self, x: Tensor) -> Tensor:
        """``x`` (batch, window, 6) -> d next / d last state (batch, 5, 5), float64."""
        return self._run(x, "jac")[2]

    def __call__(self, x: Tensor) -> Tensor:
        return self._run(x)[0]

    def _run(self, x: Tensor, *extra: str) -> tuple[Tensor, Tensor, Tensor]:
        files = {k: self.work / f"{k}.bin" for k in ("in", "out", "cov", "jac")}
        write_tensor(files["in"], x.detach().cpu().numpy())
        cmd = [str(self.exe), "--model", str(self.weights), "--input", str(files["in"])]
        cmd += ["--output", str(files["out"])]
        options = {"cov": "--covariance", "jac": "--jacobian"}
        for key in extra:
            cmd += [options[key], str(files[key])]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise PlainExportError(f"{' '.join(cmd)}: {result.stderr.strip()[-2000:]}")
        out = [torch.from_numpy(read_tensor(files[k])) if k in extra or k == "out"
               else torch.empty(0) for k in ("out", "cov", "jac")]  # fmt: skip
        return out[0], out[1], out[2]


def jacobian_rows(program: PlainProgram, scripted: Any, inputs: Tensor) -> list[dict[str, Any]]:
    """``parity_rows`` of the Jacobians: C++ (forward mode) against the TorchScript file's
    ``jacobian`` (autograd, float32), each entry divided by its largest size over the inputs
    (plus 1e-3): the step's Jacobian has entries from 1e-3 to 1e2."""
    with torch.enable_grad():
        reference = scripted.jacobian(inputs).double()
    scale = reference.abs().amax(dim=0) + 1e-3

    def scripted_jacobian(x: Tensor) -> Tensor:
        with torch.enable_grad():
            return (scripted.jacobian(x).double() / scale).flatten(1)

    def plain_jacobian(x: Tensor) -> Tensor:
        return (program.jacobian(x) / scale).flatten(1)

    return parity_rows("plain jacobian", plain_jacobian, scripted_jacobian, inputs,
                       tolerance=COVARIANCE_TOLERANCE)  # fmt: skip


def export_plain(
    run_dir: str | Path,
    torchscript: str | Path,
    out: str | Path,
    *,
    report: str | Path | None = None,
    cpp_dir: str | Path = CPP_DIR,
    weights: str = "best",
    tolerance: float = defaults("export")["tolerance"],
) -> dict[str, Any]:
    """Write the propagator file of a training run, checked in C++ against its TorchScript
    file (``torchscript``, from the same run); none of the files is left when a check fails."""
    eager, summary = load_physical_model(run_dir, weights)
    if not supported(eager):
        raise PlainExportError(f"{run_dir}: only a residual model with an MLP body has one")
    meta = metadata(summary, weights, eager)
    meta["engine"] = "plain C++ (cpp/include/tracklstm/propagator.hpp)"
    scripted, _ = load_model(torchscript)
    inputs = example_inputs(summary)
    finals = [Path(out)] + ([Path(report)] if report is not None else [])
    with atomic_paths(finals) as tmps, tempfile.TemporaryDirectory() as work:
        tmps[0].write_text(weights_text(eager, meta))
        exe = compile_program(work, cpp_dir)
        program = PlainProgram(exe, tmps[0], Path(work))
        checks = parity_rows("plain", program, scripted, inputs, tolerance=tolerance,
                             scale=norm_scale(meta))  # fmt: skip
        if eager.has_covariance:
            checks += covariance_rows(
                "plain", program, scripted, inputs, tolerance=COVARIANCE_TOLERANCE
            )
            checks += jacobian_rows(program, scripted, inputs)
        failed = failures(checks)  # each row judged against its own tolerance
        if failed:
            raise PlainExportError(f"the C++ propagator differs from {torchscript}: {failed}")
        result = {"metadata": meta, "tolerance_normalized": tolerance,
                  "covariance_tolerance": COVARIANCE_TOLERANCE, "checks": checks,
                  "passed": True, "file": str(out)}  # fmt: skip
        if report is not None:
            write_json(tmps[1], result)
    log.info("wrote %s (%d values, checked in C++)", out, _count(eager))
    return result


def _count(model: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm plain", __doc__, stage="export")
    parser.add_argument("--run", required=True, help="training run folder")
    parser.add_argument("--torchscript", required=True, help="the run's model.ts (the check)")
    parser.add_argument("--out", required=True, help="propagator file to write")
    parser.add_argument("--report", help="JSON report of the parity checks to write")
    parser.add_argument("--cpp", default=str(CPP_DIR), help="the project's cpp/ folder")
    args = parser.parse_args(argv)

    def body() -> None:
        ins = {"--run": run_files(args.run), "--torchscript": args.torchscript}
        check_outputs({"--out": args.out, "--report": args.report}, ins)
        cfg = stage_cli.settings("export", args.settings)["export"]
        torch.set_num_threads(1)
        export_plain(args.run, args.torchscript, args.out, report=args.report, cpp_dir=args.cpp,
                     weights=cfg["weights"], tolerance=cfg["tolerance"])  # fmt: skip

    return stage_cli.run(body, log, errors=(PlainExportError,))


if __name__ == "__main__":
    raise SystemExit(main())
