"""AOTInductor packages: the model compiled ahead of time, for C++ and Python hosts.

TorchScript is deprecated in torch 2.13; its successor for C++ is torch.export + AOTInductor.
``compile_package`` exports a module with a dynamic batch dimension, compiles it with
``torch._inductor.aoti_compile_and_package`` (inductor's weight freezing on) into one ``.pt2``
package file (``model.aoti.pt2``: not ``model.pt2``, the torch.export program), reloads it and
checks it against the eager module before the file appears under its final name.

C++ loads the package with ``torch::inductor::AOTIModelPackageLoader`` (cpp/tracklstm_predict.cpp),
Python with ``torch._inductor.aoti_load_package`` (``load_package`` here). The package holds
native code for the machine's CPU instruction set (metadata ``AOTI_CPU_ISA``) or CUDA.

Metadata travels inside the package as AOTInductor metadata (``aot_inductor.metadata``), which
holds strings only, read back by ``get_metadata()`` in Python and in C++:

- ``tracklstm_metadata``: the whole metadata dict as JSON (sorted keys);
- ``tracklstm_input_shape``: the input shape, ``-1`` for the dynamic batch (e.g. ``-1,7,6``);
- ``tracklstm.<key>``: every top-level item that is a scalar or a flat list of scalars, as text
  (lists comma-separated; floats written to round-trip), for hosts without a JSON parser.

AOTInductor adds its own keys (``AOTI_DEVICE_KEY``, ``AOTI_CPU_ISA``, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tracklstm.settings import defaults

log = logging.getLogger(__name__)

#: File name ending of a package: ``model.aoti.pt2``.
PACKAGE_SUFFIX = ".aoti.pt2"
#: Metadata key of the whole metadata dict as JSON.
METADATA_KEY = "tracklstm_metadata"
#: Metadata key of the input shape (``-1`` for the dynamic batch).
INPUT_SHAPE_KEY = "tracklstm_input_shape"
#: Prefix of the flat (one item, as text) metadata keys.
FLAT_PREFIX = "tracklstm."
#: Batch sizes of the parity check.
CHECK_BATCHES: tuple[int, ...] = (1, 7, 300)
#: Largest allowed |package - eager|, in normalized units when the metadata has ``norm_min`` and
#: ``norm_max`` (a fraction of each feature's range): the schema's export.tolerance.
DEFAULT_TOLERANCE: float = defaults("export")["tolerance"]
#: Inductor settings of every compile. ``freezing``: fold the weights into the compiled graph.
#: ``cpp.dynamic_threads``: the CPU kernels use the thread count of the moment (torch or
#: at::set_num_threads) instead of the compiling process's (serial for good if it had 1 thread).
BASE_CONFIGS: dict[str, Any] = {"freezing": True, "cpp.dynamic_threads": True}
#: How nn.LSTM/GRU layers are compiled on the CPU: ``onednn``, one fused oneDNN RNN call per
#: layer (inductor's default; best at large batches), or ``decomposed``, matrix products and
#: inductor's own fused cell kernels (lower latency for a few rows, slower for many).
RNN_KERNELS: tuple[str, ...] = ("onednn", "decomposed")
_AOTI_DIR = "data/aotinductor/"


class PackageError(RuntimeError):
    """A compile that failed, or a package that does not reproduce the eager module."""


class ParityError(PackageError):
    """The compiled package's outputs differ from the eager module's beyond the tolerance."""


@dataclass
class PackageReport:
    """What ``compile_with_report`` did: the file, the settings, the times (s), the parity."""

    path: Path
    device: str
    freezing: bool
    rnn_kernels: str
    seconds: dict[str, float]  # export, compile, check
    max_diff: float
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


def _cycled(inputs: Tensor, n: int) -> Tensor:
    """``n`` rows of ``inputs``, cycling through them if there are fewer."""
    if inputs.size(0) >= n:
        return inputs[:n].contiguous()
    idx = torch.arange(n, device=inputs.device) % inputs.size(0)
    return inputs.index_select(0, idx).contiguous()


def check_parity(
    eager: Callable[[Tensor], Tensor],
    loaded: Callable[[Tensor], Tensor],
    inputs: Tensor,
    example_batches: Sequence[int] = CHECK_BATCHES,
    tolerance: float = DEFAULT_TOLERANCE,
    scale: Tensor | None = None,
) -> float:
    """Largest |loaded(x) - eager(x)| over batches of ``example_batches`` rows of ``inputs``.

    With ``scale`` (one value per output feature, e.g. the normalization range) the difference
    is divided by it first. Raises ParityError when it exceeds ``tolerance``, when a shape
    differs, or when an output is not finite. Returns the largest difference.
    """
    if not example_batches:
        raise ValueError("check_parity: no batch sizes given")
    worst = 0.0
    for n in example_batches:
        x = _cycled(inputs, n)
        with torch.no_grad():
            want = eager(x).detach().to("cpu", torch.float64)
            got = loaded(x).detach().to("cpu", torch.float64)
        if got.shape != want.shape:
            raise ParityError(
                f"batch {n}: output shape {list(got.shape)}, eager {list(want.shape)}"
            )
        if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
            raise ParityError(f"batch {n}: the package returned non-finite values")
        diff = (got - want).abs()
        if scale is not None:
            diff = diff / scale.to("cpu", torch.float64)
        batch_worst = float(diff.max()) if diff.numel() else 0.0
        log.info("parity batch %4d: max |package - eager| = %.2e", n, batch_worst)
        worst = max(worst, batch_worst) if not math.isnan(batch_worst) else math.inf
    if worst > tolerance:
        raise ParityError(
            f"max |package - eager| = {worst:.3g} over batches {list(example_batches)}, "
            f"tolerance {tolerance:g}"
        )
    return worst


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PackageError(f"device {device!r}: CUDA is not available in this torch build")
    return dev


def _export(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension (min 1)."""
    if example.size(0) < 2:  # a traced batch of 1 would be specialized to 1
        example = _cycled(example, 2)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weight list while being traced; harmless here.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A path named like ``final`` in a hidden folder beside it; renamed on success, else removed.

    The package's internal folder takes the file's stem, so the temporary file keeps the name.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = final.parent / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder / final.name
        os.replace(folder / final.name, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    dev = _device(device)
    if rnn_kernels not in RNN_KERNELS:
        raise ValueError(f"rnn_kernels {rnn_kernels!r}: not one of {', '.join(RNN_KERNELS)}")
    path = Path(path)
    if not path.name.endswith(".pt2"):
        raise ValueError(f"{path}: an AOTInductor package name must end in .pt2 ({PACKAGE_SUFFIX})")
    module = module.eval().to(dev)
    example = example.to(dev, torch.float32).contiguous()
    shape = [-1, *example.shape[1:]]
    meta_strings = package_metadata(metadata, shape)
    scale = None
    if "norm_min" in metadata and "norm_max" in metadata:
        scale = torch.tensor(metadata["norm_max"], dtype=torch.float64) - torch.tensor(
            metadata["norm_min"], dtype=torch.float64
        )
    configs = {**BASE_CONFIGS, "freezing": freezing, **(inductor_configs or {})}
    configs["aot_inductor.metadata"] = meta_strings

    t0 = time.perf_counter()
    try:
        program = _export(module, example)
    except Exception as err:
        raise PackageError(f"torch.export of the module failed: {err}") from err
    export_seconds = time.perf_counter() - t0
    with _staging(path) as tmp:
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
                    torch._inductor.aoti_compile_and_package(
                        program, package_path=str(tmp), inductor_configs=configs
                    )
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


def _package_root(path: Path) -> tuple[str, list[str]]:
    """The package's root folder and entry names; ValueError naming the file if it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not an AOTInductor package (not a zip archive)") from None
    root = names[0].split("/", 1)[0] if names else ""
    inner = [n[len(root) + 1 :] for n in names if n.startswith(root + "/")]
    if any(n.startswith(_AOTI_DIR) for n in inner):
        return root, names
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        what = "a TorchScript file (load it with torch.jit.load)"
    elif any(n.startswith("models/") for n in inner):
        what = "a torch.export program (torch.export.load), not a compiled package"
    else:
        what = "no data/aotinductor/ folder inside"
    raise ValueError(f"{path}: not an AOTInductor package: {what}")


def read_package_metadata(path: str | Path, model_name: str = "model") -> dict[str, str]:
    """The package's string metadata, read from the archive without loading its code."""
    path = Path(path)
    root, names = _package_root(path)
    prefix = f"{root}/{_AOTI_DIR}{model_name}/"
    candidates = [n for n in names if n.startswith(prefix) and n.endswith("_metadata.json")]
    with zipfile.ZipFile(path) as zf:
        for name in sorted(candidates, key=lambda n: "wrapper" not in n):
            meta = json.loads(zf.read(name))
            if isinstance(meta, dict):
                return {str(k): str(v) for k, v in meta.items()}
    raise ValueError(f"{path}: no metadata for model {model_name!r} in the package")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The tracklstm metadata dict stored in a package (without loading its code)."""
    stored = read_package_metadata(path)
    if METADATA_KEY not in stored:
        raise ValueError(f"{path}: no {METADATA_KEY} inside; not written by tracklstm.aoti")
    return json.loads(stored[METADATA_KEY])


class PackagedModel:
    """A loaded package: ``model(x)`` with x (batch, ...) -> the module's output.

    Checks the input's shape against the one stored in the package (the compiled code does not)
    and moves it to the package's device as contiguous float32.
    """

    #: The package's runner serializes concurrent calls: ``predict_windows`` gives each batch
    #: all of torch's threads instead (twice as fast on 2 cores as two one-thread callers).
    one_call_at_a_time = True

    def __init__(self, path: Path, compiled: Any, device: torch.device) -> None:
        self.path = path
        self.device = device
        self.loader = compiled.loader
        self.package_metadata: dict[str, str] = dict(self.loader.get_metadata())
        shape = self.package_metadata.get(INPUT_SHAPE_KEY, "")
        self.input_shape = [int(d) for d in shape.split(",")] if shape else []
        self._run = self.loader.run

    def _bad_shape(self, x: Tensor) -> str | None:
        if not self.input_shape:
            return None
        if x.dim() != len(self.input_shape) or any(
            want >= 0 and got != want for got, want in zip(x.shape, self.input_shape, strict=True)
        ):
            dims = ", ".join("batch" if d < 0 else str(d) for d in self.input_shape)
            return f"{self.path.name}: expected input ({dims}), got {list(x.shape)}"
        return None

    def __call__(self, x: Tensor) -> Tensor:
        problem = self._bad_shape(x)
        if problem:
            raise ValueError(problem)
        if x.device != self.device or x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(self.device, torch.float32).contiguous()
        if x.size(0) == 0:
            raise ValueError(f"{self.path.name}: empty batch (the package needs 1 row or more)")
        return self._run([x])[0]


def load_package(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[PackagedModel, dict[str, Any]]:
    """A compiled package, callable on tensors, and its tracklstm metadata dict.

    ``device``: where to run it (default: the kind of device it was compiled for, ``cuda``
    meaning the current GPU). Raises FileNotFoundError for a missing file, ValueError naming the
    file for one that is not an AOTInductor package, has no tracklstm metadata, or was compiled
    for another device, and PackageError for a CUDA package where torch has no CUDA.
    """
    path = Path(path)
    stored = read_package_metadata(path)
    if METADATA_KEY not in stored:
        raise ValueError(f"{path}: no {METADATA_KEY} inside; not written by tracklstm.aoti")
    built_for = stored.get("AOTI_DEVICE_KEY", "cpu")
    try:
        dev = _device(built_for if device is None else device)
    except PackageError as err:
        raise PackageError(f"{path}: compiled for {built_for}: {err}") from None
    if built_for != dev.type:
        raise ValueError(f"{path}: compiled for {built_for}, cannot be loaded on {dev}")
    index = dev.index if dev.index is not None else -1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
    except RuntimeError as err:
        raise ValueError(f"{path}: AOTInductor cannot load the package: {err}") from err
    return PackagedModel(path, compiled, dev), json.loads(stored[METADATA_KEY])


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
    from tracklstm import export as exporter

    eager, summary = exporter.load_physical_model(run_dir, weights)
    meta = exporter.metadata(summary, weights)
    module = exporter.ExportedTrackModel(eager, meta).eval()
    inputs = exporter.example_inputs(summary, n=max(CHECK_BATCHES))
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
    from tracklstm import stage_cli
    from tracklstm.io import write_json

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

    return stage_cli.run(body, log, errors=(PackageError, ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
