"""Reading exported model files back: one loader for every format, one batched predictor.

The export stage (``tracklstm.export``) writes TorchScript (``.ts``), ONNX (``.onnx``) and
torch.export (``.pt2``) files that take ``(batch, window, 6)`` states in cm and GeV/c and return
``(batch, 6)``, each with its metadata as JSON under ``METADATA_NAME``. This module owns those
file-format names and everything that reads the files: ``read_metadata``, ``load_torchscript``,
``OnnxModel`` (onnxruntime), ``load_model`` (any of them, by suffix) and ``predict_windows``
(physical-unit windows through a loaded model, in batches). ``predict``, ``evaluate`` and the
parity checks of ``export`` all load and run models through here.
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

#: Name of the JSON metadata inside every exported file (extra file or ONNX metadata key).
METADATA_NAME = "metadata.json"
#: Input and output names of the ONNX graph.
ONNX_INPUT = "states"
ONNX_OUTPUT = "next_state"
#: Rows per model call: small enough for the LSTM's working set to stay in the CPU caches.
DEFAULT_BATCH = 256

#: A loaded model: (batch, window, 6) float32 tensor in physical units -> (batch, 6).
Model = Callable[[torch.Tensor], torch.Tensor]


class ModelFileError(ValueError):
    """A file that is not an exported model this project can load; the message names it."""


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
    """The metadata stored inside an exported file (.ts TorchScript, .onnx or .pt2)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        return json.loads(props[METADATA_NAME])
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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {ONNX_INPUT: x.numpy()})[0])


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
    from tracklstm.aoti import PackageError, load_package

    try:
        return load_package(path)
    except (ValueError, PackageError) as err:
        raise ModelFileError(str(err)) from None


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
