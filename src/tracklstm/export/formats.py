"""Stage 5: export a trained run as TorchScript, ONNX and torch.export files, checked for parity.

``python -m tracklstm.export`` (``tracklstm export``), rule ``export``.

Every exported model takes ``(batch, window, 6)`` states in cm and GeV/c and returns ``(batch, 6)``
in the same units: the normalization lives inside it. What a host needs to use it travels in the
file (plane z list, normalization, window length, feature names and units, training-data
fingerprint, package version), as JSON:

- TorchScript (``model.ts``): extra file ``metadata.json``
  (``torch.jit.load(path, _extra_files={"metadata.json": ""})``, or ``torch::jit::load(path,
  device, extra_files)`` in C++) and module attributes ``window_length``, ``features``,
  ``units``, ``plane_z``, ``norm_min``, ``norm_max``, ``data_fingerprint``, ``version``,
  ``metadata_json``;
- ONNX (``model.onnx``, dynamic batch axis, input ``states``, output ``next_state``, and for a
  model with a covariance head a second output ``covariance``, (batch, 5, 5) float64): the model's
  ``metadata_props`` (key ``metadata.json`` and one key per scalar item);
- torch.export (``model.pt2``): extra file ``metadata.json`` (``torch.export.load(path,
  extra_files={"metadata.json": ""})``).

Each file is reloaded from disk and compared with the eager model on batches of 1, 7 and 300
windows (ONNX through onnxruntime; ``tracklstm.export.parity``). All files are written under
temporary names and renamed only when every check passes: a failed check leaves none of them
behind. The files are read back (here for the checks, and by ``predict`` and ``evaluate``) with
``tracklstm.export.loading``, which also owns the names ``METADATA_NAME``, ``ONNX_INPUT``,
``ONNX_OUTPUT`` and ``ONNX_COVARIANCE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import tracklstm
from tracklstm import stage_cli
from tracklstm.export.loading import (
    METADATA_NAME,
    ONNX_COVARIANCE,
    ONNX_INPUT,
    ONNX_OUTPUT,
    load_model,
    quiet_jit,
)
from tracklstm.export.module import (
    CovarianceOutputs,
    ExportedCovarianceModel,
    ExportedTrackModel,
    export_program,
    exported_module,
    load_physical_model,
    metadata,
    run_files,
)
from tracklstm.export.parity import (
    CHECK_BATCHES,
    COVARIANCE_TOLERANCE,
    DEFAULT_TOLERANCE,
    covariance_rows,
    example_inputs,
    failures,
    norm_scale,
    parity_rows,
)
from tracklstm.export.reproducible import canonical_torch_archive, without_source_locations
from tracklstm.files import atomic_paths, check_outputs, write_json
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

DEFAULT_OPSET: int = defaults("export")["onnx_opset"]


class ExportCheckError(RuntimeError):
    """An export that failed, or an exported file that does not reproduce the eager model."""


def _save_torchscript(module: ExportedTrackModel, path: Path, meta: dict[str, Any]) -> None:
    """Through a buffer: the archive's inner folder is then "archive", not the temporary file's
    name; rewritten so that the same weights give the same bytes (``export.reproducible``)."""
    with quiet_jit():
        scripted = torch.jit.script(module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_NAME: json.dumps(meta, sort_keys=True)})
    path.write_bytes(canonical_torch_archive(buffer.getvalue()))


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the exporters' progress messages (they log each optimization pass)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _save_onnx(
    program: torch.export.ExportedProgram,
    inputs: torch.Tensor,
    path: Path,
    meta: dict[str, Any],
    opset: int,
    outputs: tuple[str, ...] = (ONNX_OUTPUT,),
) -> None:
    import onnx

    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            (inputs,),
            input_names=[ONNX_INPUT],
            output_names=list(outputs),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx_program.model_proto
    # The exporter names the batch axis after its symbol (s0, s77, ...): call it "batch".
    batch_symbols = {
        vi.type.tensor_type.shape.dim[0].dim_param
        for vi in [*proto.graph.input, *proto.graph.output]
        if vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_param
    }
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in batch_symbols:
                dim.dim_param = "batch"
    props = {METADATA_NAME: json.dumps(meta, sort_keys=True)}
    props.update({k: str(v) for k, v in meta.items() if isinstance(v, str | int | float)})
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "tracklstm"
    proto.producer_version = tracklstm.__version__
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def export(
    run_dir: str | Path,
    *,
    torchscript: str | Path,
    onnx: str | Path | None = None,
    program: str | Path | None = None,
    report: str | Path | None = None,
    weights: str = "best",
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export a training run and check every file against the eager model.

    ``torchscript``: the TorchScript file (always written); ``onnx``, ``program``: the ONNX and
    torch.export files (skipped when None); ``report``: JSON with the metadata and every check.
    Raises ExportCheckError, leaving none of the files, when a check fails.
    Returns the report.
    """
    eager, summary = load_physical_model(run_dir, weights)
    meta = metadata(summary, weights, eager)
    module = exported_module(eager, meta).eval().requires_grad_(False)
    inputs = example_inputs(summary, n=max(CHECK_BATCHES))
    finals = [Path(torchscript)]
    if onnx is not None:
        finals.append(Path(onnx))
    if program is not None:
        finals.append(Path(program))
    if report is not None:
        finals.append(Path(report))
    scale = norm_scale(meta)
    checks: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}

    def check(name: str, loaded: Any) -> list[dict[str, Any]]:
        return parity_rows(name, loaded, eager, inputs, tolerance=tolerance, scale=scale)

    with atomic_paths(finals) as tmps:
        tmp = dict(zip(finals, tmps, strict=True))

        t0 = time.perf_counter()
        ts_tmp = tmp[Path(torchscript)]
        _save_torchscript(module, ts_tmp, meta)
        reloaded, meta_back = load_model(ts_tmp)
        if meta_back != json.loads(json.dumps(meta)):
            raise ExportCheckError(f"{torchscript}: the metadata read back differs")
        checks += check("torchscript", reloaded)
        if hasattr(reloaded, "forward_with_covariance"):
            checks += covariance_rows("torchscript", reloaded, eager, inputs, tolerance=tolerance)
        seconds["torchscript"] = time.perf_counter() - t0

        if program is not None or onnx is not None:
            t0 = time.perf_counter()
            try:
                exported = without_source_locations(export_program(module, inputs))
            except Exception as err:
                raise ExportCheckError(f"torch.export of the model failed: {err}") from err
            seconds["torch_export"] = time.perf_counter() - t0
            if program is not None:
                pt2_tmp = tmp[Path(program)]
                buffer = io.BytesIO()  # not the temporary name inside the archive
                torch.export.save(
                    exported, buffer, extra_files={METADATA_NAME: json.dumps(meta, sort_keys=True)}
                )
                pt2_tmp.write_bytes(buffer.getvalue())
                loaded, _ = load_model(pt2_tmp)
                checks += check("torch.export", loaded)
                seconds["torch_export"] = time.perf_counter() - t0
            if onnx is not None:
                t0 = time.perf_counter()
                onnx_tmp = tmp[Path(onnx)]
                # a covariance head: the ONNX file's second output (the program keeps forward)
                with_cov = isinstance(module, ExportedCovarianceModel)
                outputs = (ONNX_OUTPUT, ONNX_COVARIANCE) if with_cov else (ONNX_OUTPUT,)
                try:
                    graph = exported
                    if with_cov:
                        graph = export_program(CovarianceOutputs(module), inputs)
                        graph = without_source_locations(graph)
                    _save_onnx(graph, inputs, onnx_tmp, meta, opset, outputs)
                except Exception as err:
                    raise ExportCheckError(f"ONNX export (opset {opset}) failed: {err}") from err
                # threads=0: onnxruntime's own default, as a host would run the file
                onnx_model, _ = load_model(onnx_tmp, threads=0)
                checks += check("onnx", onnx_model)
                if with_cov:
                    checks += covariance_rows(
                        "onnx", onnx_model, eager, inputs, tolerance=COVARIANCE_TOLERANCE
                    )
                seconds["onnx"] = time.perf_counter() - t0

        result = {
            "metadata": meta,
            "tolerance_normalized": tolerance,
            "check_batches": list(CHECK_BATCHES),
            "checks": checks,
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "files": {
                "torchscript": str(torchscript),
                "onnx": None if onnx is None else str(onnx),
                "torch_export": None if program is None else str(program),
            },
            "onnx_opset": opset if onnx is not None else None,
            "passed": all(c["passed"] for c in checks),
        }
        failed = failures(checks, tolerance)
        if failed:
            n_failed = sum(not c["passed"] for c in checks)
            raise ExportCheckError(
                f"{n_failed} parity check(s) failed; no file was written: {failed}"
            )
        if report is not None:
            write_json(tmp[Path(report)], result)
    log.info("wrote %s", ", ".join(str(p) for p in finals))
    return result


def export_torchscript(
    run_dir: str | Path,
    out: str | Path,
    *,
    weights: str = "best",
    atol: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Only the TorchScript file (``atol`` in normalized units); returns its metadata."""
    return export(run_dir, torchscript=out, weights=weights, tolerance=atol)["metadata"]


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm export", __doc__, stage="export")
    parser.add_argument("--run", required=True, help="training run folder")
    parser.add_argument("--out", required=True, help="TorchScript file to write (model.ts)")
    parser.add_argument("--onnx", help="ONNX file to write (model.onnx)")
    parser.add_argument("--program", help="torch.export file to write (model.pt2)")
    parser.add_argument("--report", help="JSON report of the parity checks to write")
    parser.add_argument("--weights", choices=("best", "last"), help="default: best")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="largest allowed |exported - eager| in normalized units (default 1e-6)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset version (default 18)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)

    def body() -> None:
        outputs = {"--out": args.out, "--onnx": args.onnx, "--program": args.program}
        check_outputs({**outputs, "--report": args.report}, {"--run": run_files(args.run)})
        options = {"weights": args.weights, "tolerance": args.tolerance, "onnx_opset": args.opset}
        cfg = stage_cli.settings("export", args.settings, {"export": options})["export"]
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        export(
            args.run,
            torchscript=args.out,
            onnx=args.onnx,
            program=args.program,
            report=args.report,
            weights=cfg["weights"],
            tolerance=cfg["tolerance"],
            opset=cfg["onnx_opset"],
        )

    return stage_cli.run(body, log, errors=(ExportCheckError,))


if __name__ == "__main__":
    raise SystemExit(main())
