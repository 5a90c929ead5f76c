"""AOTInductor packages: the model compiled ahead of time, for C++ and Python hosts.

``python -m tracklstm.aoti`` (``tracklstm aoti``), rules ``export_aoti`` and
``export_aoti_cuda``.

TorchScript is deprecated in torch 2.13; its successor for C++ is torch.export + AOTInductor.
``compile_package`` exports a module with a dynamic batch dimension, compiles it with
``torch._inductor.aoti_compile_and_package`` (inductor's weight freezing on) into one ``.pt2``
package file (``model.aoti.pt2``: not ``model.pt2``, the torch.export program), reloads it and
checks it against the eager module before the file appears under its final name. The package of
a model with a covariance head holds a second model, ``covariance``: its
``forward_with_covariance`` (the state and the (batch, 5, 5) float64 covariance), checked too.

C++ loads the package with ``torch::inductor::AOTIModelPackageLoader`` (cpp/tracklstm_predict.cpp;
the second model by its name, ``"covariance"``), Python with ``torch._inductor.aoti_load_package``
(``tracklstm.export.loading.load_package``, which gives ``forward_with_covariance`` too). The
package holds native code for the machine's CPU instruction set (metadata ``AOTI_CPU_ISA``) or CUDA.

Metadata travels inside the package as AOTInductor metadata (``aot_inductor.metadata``), which
holds strings only, read back by ``get_metadata()`` in Python and in C++:

- ``tracklstm_metadata``: the whole metadata dict as JSON (sorted keys);
- ``tracklstm_input_shape``: the input shape, ``-1`` for the dynamic batch (e.g. ``-1,7,6``);
- ``tracklstm.<key>``: every top-level item that is a scalar or a flat list of scalars, as text
  (lists comma-separated; floats written to round-trip), for hosts without a JSON parser.

AOTInductor adds its own keys (``AOTI_DEVICE_KEY``, ``AOTI_CPU_ISA``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch._inductor.package import package_aoti

from tracklstm import stage_cli
from tracklstm.export.loading import (
    COVARIANCE_MODEL,
    FLAT_PREFIX,
    INPUT_SHAPE_KEY,
    METADATA_KEY,
    PACKAGE_SUFFIX,
    PackageError,
    load_package,
    package_device,
)
from tracklstm.export.module import (
    CovarianceOutputs,
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
    ParityError,
    check_parity,
    covariance_rows,
    example_inputs,
    failures,
    norm_scale,
    parity_rows,
)
from tracklstm.export.reproducible import without_source_locations
from tracklstm.files import atomic_path, check_outputs, write_json

log = logging.getLogger(__name__)

#: Inductor settings of every compile. ``freezing``: fold the weights into the compiled graph.
#: ``cpp.dynamic_threads``: the CPU kernels use the thread count of the moment (torch or
#: at::set_num_threads) instead of the compiling process's (serial for good if it had 1 thread).
BASE_CONFIGS: dict[str, Any] = {"freezing": True, "cpp.dynamic_threads": True}
#: How nn.LSTM/GRU layers are compiled on the CPU: ``onednn``, one fused oneDNN RNN call per
#: layer (inductor's default; best at large batches), or ``decomposed``, matrix products and
#: inductor's own fused cell kernels (lower latency for a few rows, slower for many).
RNN_KERNELS: tuple[str, ...] = ("onednn", "decomposed")


@dataclass
class PackageReport:
    """What ``compile_with_report`` did: the file, the settings, the times (s), the parity."""

    path: Path
    device: str
    freezing: bool
    rnn_kernels: str
    seconds: dict[str, float]  # export, compile, check
    max_diff: float
    # forward_with_covariance against the eager one (None: no covariance head): the larger of
    # the covariance's difference (in units of sigma_i sigma_j, tolerance COVARIANCE_TOLERANCE)
    # and the state's (as ``max_diff``)
    covariance_max_diff: float | None
    diff_units: str  # "normalized" (divided by norm_max - norm_min) or "absolute"
    tolerance: float
    check_batches: list[int]
    package_metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the path as text, times rounded, AOTInductor's own metadata keys only."""
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        meta = self.package_metadata.items()
        out["package_metadata"] = {k: v for k, v in meta if k.startswith("AOTI_")}
        return out


def _flat(value: Any) -> str | None:
    """One metadata item as text, or None if it is not a scalar or a flat list of scalars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        items = [_flat(v) for v in value]
        if all(isinstance(v, int | float | str) for v in value) and all(
            i is not None and "," not in i for i in items
        ):
            return ",".join(items)  # type: ignore[arg-type]
    return None


def package_metadata(meta: dict[str, Any], input_shape: Sequence[int]) -> dict[str, str]:
    """The string-to-string metadata stored in a package (see the module's docstring)."""
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serializable: {err}") from err
    out = {METADATA_KEY: text, INPUT_SHAPE_KEY: ",".join(str(int(d)) for d in input_shape)}
    for key, value in meta.items():
        flat = _flat(value)
        if flat is not None:
            out[f"{FLAT_PREFIX}{key}"] = flat
    return out


def _compiled_files(program: torch.export.ExportedProgram, configs: dict[str, Any]) -> list[Any]:
    """AOTInductor's files of one program, ready for ``package_aoti`` (what
    ``torch._inductor.aoti_compile_and_package`` does for a package of one model)."""
    args, kwargs = program.example_inputs
    options = {**configs, "aot_inductor.package": True}
    gm = program.module(check_guards=False)
    return torch._inductor.aot_compile(gm, args, kwargs, options=options)  # type: ignore[return-value]


def check_covariance(
    module: nn.Module, loaded: Any, inputs: Tensor, tolerance: float, scale: Tensor | None
) -> float:
    """The package's ``forward_with_covariance`` against the module's: the covariance in units
    of sigma_i sigma_j (``COVARIANCE_TOLERANCE``), the state as ``forward``'s check judges it.
    Raises ParityError; returns the largest difference."""

    def state(x: Tensor) -> Tensor:
        return loaded.forward_with_covariance(x)[0]

    rows = covariance_rows("package", loaded, module, inputs, tolerance=COVARIANCE_TOLERANCE)
    rows += parity_rows("package state", state, module, inputs, tolerance=tolerance, scale=scale)
    failed = failures(rows)
    if failed:
        raise ParityError(failed)
    return max(r["max_diff"] for r in rows)


def compile_with_report(
    module: nn.Module,
    example: Tensor,
    path: str | Path,
    metadata: dict[str, Any],
    device: str | torch.device = "cpu",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    check_inputs: Tensor | None = None,
    freezing: bool = True,
    rnn_kernels: str = "onednn",
    inductor_configs: dict[str, Any] | None = None,
) -> PackageReport:
    """``compile_package`` with the times and the parity it measured (see there)."""
    dev = package_device(device)
    if rnn_kernels not in RNN_KERNELS:
        raise ValueError(f"rnn_kernels {rnn_kernels!r}: not one of {', '.join(RNN_KERNELS)}")
    path = Path(path)
    if not path.name.endswith(".pt2"):
        raise ValueError(f"{path}: an AOTInductor package name must end in .pt2 ({PACKAGE_SUFFIX})")
    module = module.eval().to(dev)
    example = example.to(dev, torch.float32).contiguous()
    shape = [-1, *example.shape[1:]]
    meta_strings = package_metadata(metadata, shape)
    scale = norm_scale(metadata)
    configs = {**BASE_CONFIGS, "freezing": freezing, **(inductor_configs or {})}
    configs["aot_inductor.metadata"] = meta_strings

    # the models of the package: "model" (forward) and, for a model with a covariance head,
    # "covariance" (forward_with_covariance: the state and its covariance)
    modules: dict[str, nn.Module] = {"model": module}
    if hasattr(module, "forward_with_covariance"):
        modules[COVARIANCE_MODEL] = CovarianceOutputs(module)
    t0 = time.perf_counter()
    try:
        programs = {
            name: without_source_locations(export_program(m, example))
            for name, m in modules.items()
        }
    except Exception as err:
        raise PackageError(f"torch.export of the module failed: {err}") from err
    export_seconds = time.perf_counter() - t0
    with atomic_path(path) as tmp:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                # inductor imports torch.utils.mkldnn, which still uses torch.jit.script_method.
                warnings.filterwarnings(
                    "ignore",
                    message=r"`torch\.jit\.\w+` is deprecated",
                    category=DeprecationWarning,
                )
                warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
                # Inductor lowers nn.LSTM/GRU to oneDNN's RNN layer when oneDNN is enabled.
                onednn = rnn_kernels == "onednn" or dev.type != "cpu"
                with torch.backends.mkldnn.flags(enabled=onednn and torch.backends.mkldnn.enabled):
                    files = {name: _compiled_files(p, configs) for name, p in programs.items()}
                package_aoti(str(tmp), files)
        except Exception as err:
            raise PackageError(f"AOTInductor compile for {dev} failed: {err}") from err
        compile_seconds = time.perf_counter() - t0
        log.info(
            "compiled %s for %s in %.1f s (export %.1f s, freezing %s, RNN kernels %s)",
            path.name, dev, compile_seconds, export_seconds, freezing, rnn_kernels,
        )  # fmt: skip
        t0 = time.perf_counter()
        loaded, meta_back = load_package(tmp, dev)
        if meta_back != json.loads(meta_strings[METADATA_KEY]):
            raise PackageError(f"{path}: the metadata read back differs from the one written")
        inputs = example if check_inputs is None else check_inputs.to(dev, torch.float32)
        worst = check_parity(module, loaded, inputs, CHECK_BATCHES, tolerance, scale)
        covariance_diff = None
        if COVARIANCE_MODEL in modules:
            covariance_diff = check_covariance(module, loaded, inputs, tolerance, scale)
        stored = loaded.package_metadata
        del loaded
        check_seconds = time.perf_counter() - t0
    log.info("wrote %s (max |package - eager| %.2e)", path, worst)
    return PackageReport(
        path=path,
        device=str(dev),
        freezing=freezing,
        rnn_kernels=rnn_kernels,
        seconds={"export": export_seconds, "compile": compile_seconds, "check": check_seconds},
        max_diff=worst,
        covariance_max_diff=covariance_diff,
        diff_units="normalized" if scale is not None else "absolute",
        tolerance=tolerance,
        check_batches=list(CHECK_BATCHES),
        package_metadata=stored,
    )


def compile_package(
    module: nn.Module,
    example: Tensor,
    path: str | Path,
    metadata: dict[str, Any],
    device: str | torch.device = "cpu",
    **options: Any,
) -> Path:
    """Compile ``module`` into the AOTInductor package ``path`` (``model.aoti.pt2``).

    ``example``: an input (batch, ...) on any device; its batch dimension becomes dynamic
    (1 and up). ``metadata``: a JSON-serializable dict stored inside the package. ``device``:
    ``cpu`` or ``cuda[:N]`` (``module`` is moved there). The package is compiled under a
    temporary name, reloaded, and compared with ``module`` on batches of 1, 7 and 300 rows of
    ``check_inputs`` (default: ``example``, cycled); it gets its final name only if the largest
    difference is within ``tolerance`` (normalized units when ``metadata`` has
    ``norm_min``/``norm_max``). Raises ParityError or PackageError, leaving no file, otherwise.
    ``options`` (keyword): ``tolerance``, ``check_inputs``, ``freezing`` (default True),
    ``rnn_kernels`` (see RNN_KERNELS), ``inductor_configs`` (more inductor settings).
    Returns ``path``.
    """
    return compile_with_report(module, example, path, metadata, device, **options).path


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    weights: str = "best",
    device: str = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
    freezing: bool = True,
    rnn_kernels: str = "onednn",
) -> PackageReport:
    """Compile a training run folder's model (as ``tracklstm export`` builds it) to ``out``."""
    eager, summary = load_physical_model(run_dir, weights)
    meta = metadata(summary, weights, eager)
    module = exported_module(eager, meta).eval()
    inputs = example_inputs(summary, n=max(CHECK_BATCHES))
    return compile_with_report(
        module,
        inputs,
        out,
        meta,
        device,
        tolerance=tolerance,
        freezing=freezing,
        rnn_kernels=rnn_kernels,
    )


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm aoti", __doc__, stage="export")
    parser.add_argument("--run", required=True, help="training run folder")
    parser.add_argument("--out", required=True, help=f"package to write (model{PACKAGE_SUFFIX})")
    parser.add_argument("--weights", choices=("best", "last"), help="default: best")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--tolerance", type=float, help="parity, normalized units (default 1e-6)")
    parser.add_argument("--no-freezing", action="store_true", help="compile without freezing")
    parser.add_argument("--rnn-kernels", choices=RNN_KERNELS, default="onednn")
    parser.add_argument("--report", help="JSON file of the compile times and the parity check")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)

    def body() -> None:
        check_outputs({"--out": args.out, "--report": args.report}, {"--run": run_files(args.run)})
        options = {"weights": args.weights, "tolerance": args.tolerance}
        cfg = stage_cli.settings("export", args.settings, {"export": options})["export"]
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        report = export_run(
            args.run,
            args.out,
            weights=cfg["weights"],
            device=args.device,
            tolerance=cfg["tolerance"],
            freezing=not args.no_freezing,
            rnn_kernels=args.rnn_kernels,
        )
        if args.report:
            write_json(args.report, report.as_dict())

    return stage_cli.run(body, log, errors=(PackageError,))


if __name__ == "__main__":
    raise SystemExit(main())
