"""Reading exported model files back: one loader for every format, one batched predictor.

The export stage writes TorchScript (``model.ts``), ONNX (``model.onnx``) and torch.export
(``model.pt2``) files (``tracklstm.export.formats``) and AOTInductor packages
(``model.aoti.pt2``, ``tracklstm.export.aoti``) that take ``(batch, window, 6)`` states in cm and
GeV/c and return ``(batch, 6)``, each with its metadata as JSON. This module owns the names of
those files' parts (``METADATA_NAME``, ``ONNX_INPUT``, ``ONNX_OUTPUT``, the package metadata
keys) and everything that reads the files: ``read_metadata`` (any of them, without running it),
``load_torchscript``, ``OnnxModel`` (onnxruntime), ``load_package`` (AOTInductor),
``load_model`` (any of them) and ``predict_windows`` (physical-unit windows through a loaded
model, in batches). ``predict``, ``evaluate`` and the parity checks of the export stage all load
and run models through here.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tracklstm.constants import ANSWER_INDEX

#: Name of the JSON metadata inside every exported file (extra file or ONNX metadata key).
METADATA_NAME = "metadata.json"
#: Input and output names of the ONNX graph.
ONNX_INPUT = "states"
ONNX_OUTPUT = "next_state"
#: The second output of the ONNX file of a model with a covariance head: (batch, 5, 5) float64.
ONNX_COVARIANCE = "covariance"
#: Rows per model call: small enough for the LSTM's working set to stay in the CPU caches.
DEFAULT_BATCH = 256
#: Rows per call of ``forward_with_covariance`` (a small network: larger batches pay off).
COVARIANCE_BATCH = 4096

#: File name ending of an AOTInductor package: ``model.aoti.pt2``.
PACKAGE_SUFFIX = ".aoti.pt2"
#: Package metadata key of the whole metadata dict as JSON.
METADATA_KEY = "tracklstm_metadata"
#: Package metadata key of the input shape (``-1`` for the dynamic batch).
INPUT_SHAPE_KEY = "tracklstm_input_shape"
#: The package's second model, of a model with a covariance head: forward_with_covariance.
COVARIANCE_MODEL = "covariance"
#: Prefix of the flat (one item, as text) package metadata keys.
FLAT_PREFIX = "tracklstm."
_AOTI_DIR = "data/aotinductor/"

#: A loaded model: (batch, window, 6) float32 tensor in physical units -> (batch, 6).
Model = Callable[[torch.Tensor], torch.Tensor]


class ModelFileError(ValueError):
    """A file that is not an exported model this project can load; the message names it."""


class PackageError(RuntimeError):
    """A compile that failed, a package that does not reproduce the eager module, or one that
    cannot run here (a CUDA package without CUDA)."""


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Hide torch's deprecation notice for TorchScript: C++ hosts load it with torch::jit::load.

    The same model also goes out as a torch.export program (model.pt2), TorchScript's successor.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def _metadata(path: str | Path, text: str | None, required: bool) -> dict[str, Any]:
    """The parsed metadata of ``path``; {} or a ModelFileError when the file has none."""
    if text:
        return json.loads(text)
    if required:
        raise ModelFileError(f"{path}: no {METADATA_NAME} inside; not a tracklstm export")
    return {}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored inside an exported file (TorchScript, ONNX, torch.export program or
    AOTInductor package), read without running the model."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        return json.loads(props[METADATA_NAME])
    if path.name.endswith(PACKAGE_SUFFIX) or is_aoti_package(path):
        return _package_tracklstm_metadata(path, read_package_metadata(path))
    extra = {METADATA_NAME: ""}
    if path.suffix == ".pt2":
        torch.export.load(str(path), extra_files=extra)
    else:
        with quiet_jit():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_NAME])


def load_torchscript(
    path: str | Path, device: str | torch.device = "cpu", *, require_metadata: bool = True
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript model (in eval mode) and its metadata.

    Without ``require_metadata`` a file without metadata loads with ``{}``.
    """
    extra = {METADATA_NAME: ""}
    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as err:
        raise ModelFileError(f"{path}: not a TorchScript model ({err})") from err
    return module.eval(), _metadata(path, extra[METADATA_NAME], require_metadata)


def _load_program(path: str | Path, require_metadata: bool) -> tuple[Model, dict[str, Any]]:
    """A torch.export program (``.pt2``) as a callable module, and its metadata."""
    extra = {METADATA_NAME: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except (RuntimeError, ValueError, OSError) as err:
        raise ModelFileError(f"{path}: not a torch.export program ({err})") from err
    return program.module(), _metadata(path, extra[METADATA_NAME], require_metadata)


class OnnxModel:
    """An exported ONNX file under onnxruntime, called like the TorchScript module."""

    #: ``predict_windows`` calls it batch after batch: the session has its own threads.
    one_call_at_a_time = True

    def __init__(
        self, path: str | Path, threads: int = 0, *, require_metadata: bool = True
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise ModelFileError(f"{path}: not an ONNX model ({err})") from err
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = _metadata(path, props.get(METADATA_NAME), require_metadata)
        # a file with the covariance output answers forward_with_covariance too (has_covariance)
        if ONNX_COVARIANCE in [o.name for o in self.session.get_outputs()]:
            self.forward_with_covariance = self._forward_with_covariance

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
        return torch.from_numpy(out)

    def _forward_with_covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, cov = self.session.run([ONNX_OUTPUT, ONNX_COVARIANCE], {ONNX_INPUT: x.numpy()})
        return torch.from_numpy(state), torch.from_numpy(cov)


def load_model(
    path: str | Path, threads: int | None = None, *, require_metadata: bool = True
) -> tuple[Model, dict[str, Any]]:
    """Any exported model file and its metadata: ``.onnx`` under onnxruntime (``threads`` intra-op
    threads, default torch's CPU thread count), ``.pt2`` as an AOTInductor package
    (``model.aoti.pt2``; ``model.cuda.aoti.pt2`` runs on the GPU, its answers come back to the
    CPU) or a torch.export program (``model.pt2``), anything else as TorchScript (in eval mode,
    on the CPU).

    Raises ModelFileError naming the file when it is not such a model, or (with
    ``require_metadata``, the default) when it holds no tracklstm metadata.
    """
    suffix = Path(path).suffix
    if suffix == ".onnx":
        threads = torch.get_num_threads() if threads is None else threads
        model = OnnxModel(path, threads, require_metadata=require_metadata)
        return model, model.metadata
    if suffix == ".pt2":
        if is_aoti_package(path):
            return _load_aoti(path)
        return _load_program(path, require_metadata)
    return load_torchscript(path, require_metadata=require_metadata)


def is_aoti_package(path: str | Path) -> bool:
    """Whether ``path`` is an AOTInductor package (a zip with ``data/aotinductor/`` inside)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/data/aotinductor/" in f"/{name}" for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_aoti(path: str | Path) -> tuple[Model, dict[str, Any]]:
    """An AOTInductor package and its metadata, on the kind of device it was compiled for
    (``model.aoti.pt2``: the CPU; ``model.cuda.aoti.pt2``: the current GPU)."""
    try:
        return load_package(path)
    except (ValueError, PackageError) as err:
        raise ModelFileError(str(err)) from None


# --------------------------------------------------------------------------------------------
# AOTInductor packages


def package_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PackageError(f"device {device!r}: CUDA is not available in this torch build")
    return dev


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


def _package_tracklstm_metadata(path: Path, stored: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in stored:
        raise ValueError(f"{path}: no {METADATA_KEY} inside; not written by tracklstm")
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

    def _checked(self, x: Tensor) -> Tensor:
        """``x`` checked against the stored shape, as contiguous float32 on the device."""
        problem = self._bad_shape(x)
        if problem:
            raise ValueError(problem)
        if x.device != self.device or x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(self.device, torch.float32).contiguous()
        if x.size(0) == 0:
            raise ValueError(f"{self.path.name}: empty batch (the package needs 1 row or more)")
        return x

    def __call__(self, x: Tensor) -> Tensor:
        return self._run([self._checked(x)])[0]


class PackagedCovarianceModel(PackagedModel):
    """A package of a model with a covariance head: its second model, ``covariance``, gives
    ``forward_with_covariance`` as the TorchScript file's method does: (the state (batch, 6)
    float32, its covariance (batch, 5, 5) float64)."""

    def __init__(self, path: Path, compiled: Any, covariance: Any, device: torch.device) -> None:
        super().__init__(path, compiled, device)
        self._run_covariance = covariance.loader.run

    def forward_with_covariance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        state, cov = self._run_covariance([self._checked(x)])
        return state, cov


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
    meta = _package_tracklstm_metadata(path, stored)
    built_for = stored.get("AOTI_DEVICE_KEY", "cpu")
    try:
        dev = package_device(built_for if device is None else device)
    except PackageError as err:
        raise PackageError(f"{path}: compiled for {built_for}: {err}") from None
    if built_for != dev.type:
        raise ValueError(f"{path}: compiled for {built_for}, cannot be loaded on {dev}")
    index = dev.index if dev.index is not None else -1
    root, names = _package_root(path)
    with_covariance = any(n.startswith(f"{root}/{_AOTI_DIR}{COVARIANCE_MODEL}/") for n in names)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
            if with_covariance:
                from torch._inductor.package import load_package as load_packaged_model

                covariance = load_packaged_model(str(path), COVARIANCE_MODEL, device_index=index)
                return PackagedCovarianceModel(path, compiled, covariance, dev), meta
    except RuntimeError as err:
        raise ValueError(f"{path}: AOTInductor cannot load the package: {err}") from err
    return PackagedModel(path, compiled, dev), meta


def predict_windows(
    model: Model,
    windows: np.ndarray,
    batch: int = DEFAULT_BATCH,
    workers: int | None = None,
) -> np.ndarray:
    """(N, window, 6) physical windows -> (N, 6) float32 predicted states, in batches.

    A torch model runs on ``workers`` threads (default: torch's CPU thread count), each calling
    it on whole batches with one intra-op thread; ``workers=1`` calls it batch after batch with
    torch's own threads. On 2 cores the threads beat splitting each batch over both cores for
    batches up to about 512 rows, and equal it at 1024 (benchmarks/README.md). Models with
    ``one_call_at_a_time`` (onnxruntime sessions with their own threads; AOTInductor packages,
    whose runner serializes calls) get every batch over torch's threads, one after another.
    """
    out = np.empty((len(windows), windows.shape[-1]), dtype=np.float32)

    def run(start: int) -> None:
        with torch.inference_mode():  # thread-local: entered by every worker
            x = np.ascontiguousarray(windows[start : start + batch], dtype=np.float32)
            out[start : start + batch] = model(torch.from_numpy(x)).cpu().numpy()

    starts = range(0, len(windows), batch)
    workers = torch.get_num_threads() if workers is None else workers
    if workers <= 1 or len(starts) <= 1 or getattr(model, "one_call_at_a_time", False):
        for start in starts:
            run(start)
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, starts))
    finally:
        torch.set_num_threads(threads)
    return out


def has_covariance(model: Any) -> bool:
    """Whether a loaded model predicts a covariance (``forward_with_covariance``)."""
    return hasattr(model, "forward_with_covariance")


def predict_with_covariance(
    model: Any, windows: np.ndarray, batch: int = COVARIANCE_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(states (N, 6), covariances (N, 5, 5)), float64, batch by batch."""
    n = len(ANSWER_INDEX)
    states = np.empty((len(windows), windows.shape[-1]), dtype=np.float64)
    covs = np.empty((len(windows), n, n), dtype=np.float64)
    # no_grad, not inference mode: a TorchScript file optimizes its graph during a call, and
    # constants made under inference mode could not serve the Jacobian's autograd later
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            x = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch], np.float32))
            state, cov = model.forward_with_covariance(x)
            states[start : start + len(x)] = state.to(torch.float64).numpy()
            covs[start : start + len(x)] = cov.to(torch.float64).numpy()
    return states, covs
