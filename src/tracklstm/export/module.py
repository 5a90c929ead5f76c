"""The module every export writes: a trained run's model in physical units, with its metadata.

``load_physical_model`` rebuilds a training run's eager model from its folder (``training.json``
and ``weights_{best,last}.pt``); ``ExportedTrackModel`` wraps it with the metadata a host needs
as attributes and a check of the input shape; ``metadata`` is that metadata, stored inside every
exported file (``tracklstm.export.loading`` reads it back); ``export_program`` is the
torch.export of it, with a dynamic batch, that the torch.export, ONNX and AOTInductor files all
start from.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tracklstm
from tracklstm.constants import ANSWER_INDEX, FEATURES, PLANE_Z, UNITS
from tracklstm.export.loading import ONNX_INPUT, ONNX_OUTPUT
from tracklstm.models.build import (
    WeightsFileError,
    build_model,
    model_kind,
    physical_units,
    read_weights,
)
from tracklstm.models.reference import PhysicalModel
from tracklstm.models.scale_mixture import from_buffers

#: The format of the exported files (their metadata's ``format``).
FORMAT = "tracklstm-export-1"


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
        self.answer_index = list(ANSWER_INDEX)

    def check_input(self, x: torch.Tensor) -> None:
        """A ValueError naming the expected shape and units, for any other input."""
        if x.dim() != 3 or x.size(1) != self.window_length or x.size(2) != self.n_features:
            raise ValueError(
                f"tracklstm model: expected input (batch, {self.window_length}, "
                f"{self.n_features}) in cm and GeV/c, got {list(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, window_length, 6) in cm and GeV/c -> (batch, 6) in cm and GeV/c."""
        self.check_input(x)
        # No autograd history on what a host gets back (the weights do not require grad).
        return self.model(x).detach()


class ExportedCovarianceModel(ExportedTrackModel):
    """An exported model with a covariance head: ``forward`` as any other, and a second method
    (TorchScript) that also returns the covariance of x, y, px, py, pz at the next plane."""

    @torch.jit.export
    def forward_with_covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` as ``forward`` -> (the state (batch, 6) float32, its covariance (batch, 5, 5)
        float64 in cm^2, cm GeV/c and (GeV/c)^2, for x, y, px, py, pz)."""
        self.check_input(x)
        state, cov = self.model.forward_with_covariance(x)
        return state.detach(), cov.detach()

    @torch.jit.export
    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``forward`` -> (batch, 5, 5) float32: the derivatives of the next x, y, px,
        py, pz with respect to the x, y, px, py, pz of the window's last state (the transport
        Jacobian of a one-state model), by autograd; call it with gradients enabled."""
        self.check_input(x)
        inputs = x.detach().requires_grad_(True)
        out = self.model(inputs)
        rows: list[torch.Tensor] = []
        for i in self.answer_index:
            grad = torch.autograd.grad([out[:, i].sum()], [inputs], retain_graph=True)[0]
            assert grad is not None
            rows.append(grad[:, -1][:, self.answer_index])
        return torch.stack(rows, 1).detach()


class CovarianceOutputs(nn.Module):
    """``forward_with_covariance`` as the forward: what the ONNX file of a model with a
    covariance head exports, so that the file has the covariance as its second output."""

    def __init__(self, module: ExportedCovarianceModel) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module.forward_with_covariance(x)


def exported_module(model: nn.Module, meta: dict[str, Any]) -> ExportedTrackModel:
    """The module to export: with ``forward_with_covariance`` when the model has a head."""
    if getattr(model, "has_covariance", False):
        return ExportedCovarianceModel(model, meta)
    return ExportedTrackModel(model, meta)


#: The files of a training run folder an export reads.
RUN_FILES: tuple[str, ...] = ("training.json", "weights_best.pt", "weights_last.pt")


def run_files(run_dir: str | Path) -> list[Path]:
    """The files of a training run folder that an export reads."""
    return [Path(run_dir) / name for name in RUN_FILES]


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
    core = build_model(settings, int(summary["window_length"]))
    try:
        core.load_state_dict(read_weights(weights_path))
    except WeightsFileError as err:
        raise ExportInputError(str(err)) from None
    except (RuntimeError, TypeError, AttributeError) as err:  # another model's weights
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        details = [line for line in lines if not line.endswith(":")] or lines
        reason = details[0] if details else type(err).__name__
        raise ExportInputError(
            f"{weights_path}: not the weights of this run's model ({reason})"
        ) from None
    if physical_units(settings):
        return core.eval(), summary
    model = PhysicalModel(
        core, torch.tensor(summary["norm_min"]), torch.tensor(summary["norm_max"])
    )
    return model.eval(), summary


def covariance_mixture(model: nn.Module) -> dict[str, list[float]] | None:
    """A model with a covariance head: the scale mixture of its covariance that describes its
    errors' shape (``models.scale_mixture``; the weights and scales of its components)."""
    if not hasattr(model, "cov_mixture_weight"):
        return None
    weights, scales = model.cov_mixture_weight, model.cov_mixture_scale
    return from_buffers(weights.detach().cpu().numpy(), scales.detach().cpu().numpy())


def metadata(summary: dict[str, Any], weights: str, model: nn.Module) -> dict[str, Any]:
    """What a host needs to use ``model`` (of the run ``summary``) correctly, stored inside the
    exported files."""
    return {
        "format": FORMAT,
        "input": "float32 (batch, window_length, 6): x, y, z [cm], px, py, pz [GeV/c]",
        "output": "float32 (batch, 6): the state at the next plane, same units",
        "covariance": (
            "TorchScript methods forward_with_covariance: (state, float64 (batch, 5, 5) covariance"
            " of x, y, px, py, pz), and jacobian: float32 (batch, 5, 5) d(next)/d(last state);"
            " the ONNX file's second output, covariance"
            if summary["settings"].get("model", {}).get("covariance")
            else None
        ),
        # errors ~ sum_k weights[k] N(0, scales[k] C): the regions of content q are chi2 =
        # e^T C^-1 e below the mixture's q-quantile (tracklstm.models.scale_mixture)
        "covariance_mixture": covariance_mixture(model),
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


def export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of ``module`` with a dynamic batch dimension (1 and up)."""
    if example.size(0) < 2:  # a traced batch of 1 would be specialized to 1
        idx = torch.arange(2, device=example.device) % example.size(0)
        example = example.index_select(0, idx)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weight list while being traced; harmless here.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
