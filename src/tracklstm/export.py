"""Stage 5: export a trained run as TorchScript, ONNX and torch.export files, checked for parity.

Every exported model takes ``(batch, window, 6)`` states in cm and GeV/c and returns ``(batch, 6)``
in the same units: the normalization lives inside it. What a host needs to use it travels in the
file (plane z list, normalization, window length, feature names and units, training-data
fingerprint, package version), as JSON:

- TorchScript (``model.ts``): extra file ``metadata.json``
  (``torch.jit.load(path, _extra_files={"metadata.json": ""})``, or ``torch::jit::load(path,
  device, extra_files)`` in C++) and module attributes ``window_length``, ``features``,
  ``units``, ``plane_z``, ``norm_min``, ``norm_max``, ``data_fingerprint``, ``version``,
  ``metadata_json``;
- ONNX (``model.onnx``, dynamic batch axis, input ``states``, output ``next_state``): the model's
  ``metadata_props`` (key ``metadata.json`` and one key per scalar item);
- torch.export (``model.pt2``): extra file ``metadata.json`` (``torch.export.load(path,
  extra_files={"metadata.json": ""})``).

Each file is reloaded from disk and compared with the eager model on batches of 1, 7 and 300
windows (ONNX through onnxruntime). All files are written under temporary names and renamed only
when every check passes: a failed check leaves none of them behind. The files are read back
(here for the checks, and by ``predict`` and ``evaluate``) with ``tracklstm.artifacts``, which
also owns the names ``METADATA_NAME``, ``ONNX_INPUT`` and ``ONNX_OUTPUT``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tracklstm
from tracklstm import stage_cli
from tracklstm.artifacts import METADATA_NAME, ONNX_INPUT, ONNX_OUTPUT, load_model, quiet_jit
from tracklstm.constants import FEATURES, PLANE_Z, UNITS
from tracklstm.io import write_json
from tracklstm.model import PhysicalModel, build_model, model_kind, physical_units
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

FORMAT = "tracklstm-export-1"
#: Batch sizes of the parity checks.
CHECK_BATCHES: tuple[int, ...] = (1, 7, 300)
#: Largest allowed |exported - eager| in normalized units (a fraction of each feature's
#: normalization range): about ten float32 rounding steps.
DEFAULT_TOLERANCE: float = defaults("export")["tolerance"]
DEFAULT_OPSET: int = defaults("export")["onnx_opset"]
#: Binary tensor files of the C++ program (see cpp/README.md).
TENSOR_MAGIC = b"TLSTMF32"


class ExportCheckError(RuntimeError):
    """An export that failed, or an exported file that does not reproduce the eager model."""


class ExportInputError(ValueError):
    """A training run folder that cannot be exported (missing file or key)."""


class ExportedTrackModel(nn.Module):
    """The physical-units model with its metadata as attributes and a check of the input shape.

    This is the module that is scripted and exported; its forward is ``PhysicalModel``'s.
    TorchScript infers the attribute types from the values (int, str, List[str], List[float]).
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.window_length = int(meta["window_length"])
        self.n_features = len(meta["features"])
        self.features = list(meta["features"])
        self.units = [meta["units"][f] for f in meta["features"]]
        self.plane_z = [float(z) for z in meta["plane_z"]]
        self.norm_min = [float(v) for v in meta["norm_min"]]
        self.norm_max = [float(v) for v in meta["norm_max"]]
        self.data_fingerprint = str(meta["data_fingerprint"])
        self.version = str(meta["tracklstm_version"])
        self.metadata_json = json.dumps(meta, sort_keys=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, window_length, 6) in cm and GeV/c -> (batch, 6) in cm and GeV/c."""
        if x.dim() != 3 or x.size(1) != self.window_length or x.size(2) != self.n_features:
            raise ValueError(
                f"tracklstm model: expected input (batch, {self.window_length}, "
                f"{self.n_features}) in cm and GeV/c, got {list(x.shape)}"
            )
        # No autograd history on what a host gets back (the weights do not require grad).
        return self.model(x).detach()


def load_physical_model(run_dir: str | Path, weights: str = "best") -> tuple[nn.Module, dict]:
    """The eager model of a training run, in physical units, and its ``training.json``.

    The reference network is wrapped in ``PhysicalModel`` (its normalization); a residual
    propagator works in physical units itself and carries its statistics, field and plane
    table as buffers in its weights.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "training.json"
    weights_path = run_dir / f"weights_{weights}.pt"
    for path in (summary_path, weights_path):
        if not path.is_file():
            raise ExportInputError(f"{path}: no such file (is {run_dir} a training run folder?)")
    summary = json.loads(summary_path.read_text())
    for key in ("settings", "norm_min", "norm_max", "window_length"):
        if key not in summary:
            raise ExportInputError(f"{summary_path}: key {key!r} is missing")
    settings = summary["settings"].get("model", {})
    core = build_model(settings)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        core.load_state_dict(state)
    except Exception as err:  # truncated, corrupt or foreign: one line naming the file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportInputError(
            f"{weights_path}: not the weights of this run's model ({reason})"
        ) from None
    if physical_units(settings):
        return core.eval(), summary
    model = PhysicalModel(
        core, torch.tensor(summary["norm_min"]), torch.tensor(summary["norm_max"])
    )
    return model.eval(), summary


def metadata(summary: dict[str, Any], weights: str) -> dict[str, Any]:
    """What a host needs to use the model correctly, stored inside the exported files."""
    return {
        "format": FORMAT,
        "input": "float32 (batch, window_length, 6): x, y, z [cm], px, py, pz [GeV/c]",
        "output": "float32 (batch, 6): the state at the next plane, same units",
        "onnx_input": ONNX_INPUT,
        "onnx_output": ONNX_OUTPUT,
        "window_length": int(summary["window_length"]),
        "features": list(FEATURES),
        "units": dict(UNITS),
        "plane_z": list(PLANE_Z),
        "norm_min": [float(v) for v in summary["norm_min"]],
        "norm_max": [float(v) for v in summary["norm_max"]],
        "data_fingerprint": summary.get("data_fingerprint", ""),
        "model": summary["settings"].get("model", {}),
        "model_kind": model_kind(summary["settings"].get("model", {})),
        "weights": weights,
        "tracklstm_version": tracklstm.__version__,
        "torch_version": torch.__version__,
    }


def example_inputs(summary: dict[str, Any], n: int = 256, seed: int = 0) -> torch.Tensor:
    """Inputs for the parity checks: spread over the normalization box (the reference kind), or
    helix track segments on consecutive planes inside it (a residual model: its inputs are
    relative to a physics prior, and random boxes of states are far outside what it knows,
    where float32 rounding of huge corrections would decide the check)."""
    # a training.json holds settings.model; an exported file's metadata holds model
    model = (summary.get("settings") or {}).get("model") or summary.get("model") or {}
    if physical_units(model):
        return _track_windows(summary, n, seed)
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(summary["norm_min"], dtype=torch.float32)
    hi = torch.tensor(summary["norm_max"], dtype=torch.float32)
    u = torch.rand(n, int(summary["window_length"]), len(FEATURES), generator=g)
    return lo + u * (hi - lo)


def _track_windows(summary: dict[str, Any], n: int, seed: int) -> torch.Tensor:
    """``n`` windows of helix tracks (nominal field) on consecutive planes, starting states
    drawn inside the normalization box (momenta of real tracks' size)."""
    from tracklstm.baselines import helix

    rng = np.random.default_rng(seed)
    length = int(summary["window_length"])
    lo, hi = np.asarray(summary["norm_min"]), np.asarray(summary["norm_max"])
    first = rng.integers(0, len(PLANE_Z) - length, size=n)
    state = np.empty((n, len(FEATURES)))
    for i in (0, 1):  # x, y: the middle half of the box
        state[:, i] = rng.uniform(0.75 * lo[i] + 0.25 * hi[i], 0.25 * lo[i] + 0.75 * hi[i], n)
    state[:, 2] = np.asarray(PLANE_Z)[first]
    pt, phi = rng.uniform(0.05, 0.4, n), rng.uniform(-np.pi, np.pi, n)
    state[:, 3], state[:, 4] = pt * np.cos(phi), pt * np.sin(phi)
    state[:, 5] = rng.uniform(max(lo[5], 0.5), max(hi[5], 1.0), n)
    windows = [state]
    for k in range(1, length):
        windows.append(helix(windows[-1], np.asarray(PLANE_Z)[first + k]))
    return torch.from_numpy(np.stack(windows, axis=1).astype(np.float32))


def compare(
    got: np.ndarray | torch.Tensor,
    want: np.ndarray | torch.Tensor,
    norm_min: Sequence[float],
    norm_max: Sequence[float],
) -> dict[str, Any]:
    """Largest |got - want|, per feature in physical units and overall in normalized units."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return {"shape": list(got.shape), "expected_shape": list(want.shape), "max_norm_diff": None}
    diff = np.abs(got - want).reshape(-1, len(FEATURES))
    per_feature = diff.max(axis=0) if len(diff) else np.zeros(len(FEATURES))
    scale = np.asarray(norm_max, dtype=np.float64) - np.asarray(norm_min, dtype=np.float64)
    return {
        "max_abs_diff": {f: float(v) for f, v in zip(FEATURES, per_feature, strict=True)},
        "max_norm_diff": float((per_feature / scale).max()),
    }


def _tmp_name(final: Path) -> Path:
    # Keeps the suffix: torch.export.load wants a name ending in .pt2.
    return final.with_name(f".{final.stem}.{os.getpid()}.tmp{final.suffix}")


@contextlib.contextmanager
def _all_or_nothing(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths for ``finals``; all renamed when the block succeeds, all removed if not."""
    tmps = [_tmp_name(p) for p in finals]
    for p in finals:
        p.parent.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:  # a rename failed half-way: take back the ones already renamed
            final.unlink(missing_ok=True)
        raise
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _check(
    name: str,
    run: Callable[[torch.Tensor], Any],
    model: nn.Module,
    inputs: torch.Tensor,
    meta: dict[str, Any],
    tolerance: float,
) -> list[dict[str, Any]]:
    """Compare ``run(x)`` with the eager model on batches of CHECK_BATCHES sizes."""
    rows = []
    for n in CHECK_BATCHES:
        x = inputs[:n].contiguous()
        with torch.no_grad():
            want = model(x).numpy()
        try:
            with torch.no_grad():
                got = np.asarray(run(x))
            result = compare(got, want, meta["norm_min"], meta["norm_max"])
        except Exception as err:  # a runtime that cannot run the file fails its check
            result = {"error": f"{type(err).__name__}: {err}"[:500], "max_norm_diff": None}
        worst = result["max_norm_diff"]
        result.update(format=name, batch=n, passed=worst is not None and worst <= tolerance)
        rows.append(result)
        shown = "n/a" if worst is None else f"{worst:.2e}"
        verdict = "ok" if result["passed"] else "FAILED"
        log.info(
            "%-12s batch %4d: max |exported - eager| = %s (normalized units) %s",
            name, n, shown, verdict,
        )  # fmt: skip
    return rows


def _save_torchscript(module: ExportedTrackModel, path: Path, meta: dict[str, Any]) -> None:
    """Through a buffer: the archive's inner folder is then "archive", not the temporary file's
    name, so the same weights give the same bytes."""
    with quiet_jit():
        scripted = torch.jit.script(module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_NAME: json.dumps(meta, sort_keys=True)})
    path.write_bytes(buffer.getvalue())


def _export_program(
    module: ExportedTrackModel, inputs: torch.Tensor
) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weight list while being traced; harmless here.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        return torch.export.export(module, (inputs,), dynamic_shapes={"x": {0: batch}})


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
) -> None:
    import onnx

    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            (inputs,),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
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
    meta = metadata(summary, weights)
    module = ExportedTrackModel(eager, meta).eval().requires_grad_(False)
    inputs = example_inputs(summary, n=max(CHECK_BATCHES))
    finals = [Path(torchscript)]
    if onnx is not None:
        finals.append(Path(onnx))
    if program is not None:
        finals.append(Path(program))
    if report is not None:
        finals.append(Path(report))
    checks: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    with _all_or_nothing(finals) as tmps:
        tmp = dict(zip(finals, tmps, strict=True))

        t0 = time.perf_counter()
        ts_tmp = tmp[Path(torchscript)]
        _save_torchscript(module, ts_tmp, meta)
        reloaded, meta_back = load_model(ts_tmp)
        if meta_back != json.loads(json.dumps(meta)):
            raise ExportCheckError(f"{torchscript}: the metadata read back differs")
        checks += _check("torchscript", reloaded, eager, inputs, meta, tolerance)
        seconds["torchscript"] = time.perf_counter() - t0

        if program is not None or onnx is not None:
            t0 = time.perf_counter()
            try:
                exported = _export_program(module, inputs)
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
                checks += _check("torch.export", loaded, eager, inputs, meta, tolerance)
                seconds["torch_export"] = time.perf_counter() - t0
            if onnx is not None:
                t0 = time.perf_counter()
                onnx_tmp = tmp[Path(onnx)]
                try:
                    _save_onnx(exported, inputs, onnx_tmp, meta, opset)
                except Exception as err:
                    raise ExportCheckError(f"ONNX export (opset {opset}) failed: {err}") from err
                # threads=0: onnxruntime's own default, as a host would run the file
                onnx_model, _ = load_model(onnx_tmp, threads=0)
                checks += _check("onnx", onnx_model, eager, inputs, meta, tolerance)
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
        failed = [c for c in checks if not c["passed"]]
        if failed:
            lines = [
                f"{c['format']} batch {c['batch']}: "
                + (c.get("error") or f"max normalized difference {c['max_norm_diff']:.3g}")
                for c in failed
            ]
            raise ExportCheckError(
                f"{len(failed)} parity check(s) failed (tolerance {tolerance:g} in normalized "
                f"units); no file was written: " + "; ".join(lines)
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


def write_tensor(path: str | Path, array: np.ndarray) -> None:
    """A float32 array in the C++ program's binary format (see cpp/README.md), atomically."""
    from tracklstm.io import atomic_path

    data = np.ascontiguousarray(array, dtype="<f4")
    header = TENSOR_MAGIC + struct.pack("<II", data.ndim, 0)
    header += struct.pack(f"<{data.ndim}q", *data.shape)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(data.tobytes())


def read_tensor(path: str | Path) -> np.ndarray:
    """A float32 array written by ``write_tensor`` or the C++ program."""
    raw = Path(path).read_bytes()
    if raw[:8] != TENSOR_MAGIC or len(raw) < 16:
        raise ValueError(f"{path}: not a tracklstm tensor file (bad magic)")
    ndim, _ = struct.unpack_from("<II", raw, 8)
    shape = struct.unpack_from(f"<{ndim}q", raw, 16)
    start = 16 + 8 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != start + 4 * count:
        raise ValueError(f"{path}: {len(raw) - start} data bytes, expected {4 * count}")
    return np.frombuffer(raw, dtype="<f4", offset=start).reshape(shape).astype(np.float32)


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

    return stage_cli.run(body, log, errors=(ExportCheckError, ExportInputError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
