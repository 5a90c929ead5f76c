"""The parity check of every exported file: reloaded from disk, it must reproduce the eager model.

One check for every format (TorchScript, ONNX, torch.export, AOTInductor): the file, loaded the
way its users load it (``tracklstm.export.loading``), and the eager model run on the same inputs
in batches of ``CHECK_BATCHES`` rows; the largest difference, in normalized units (a fraction of
each feature's normalization range) for a tracklstm model, must stay within the schema's
``export.tolerance``. The inputs are track windows a model meets in use
(:func:`example_inputs`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tracklstm.constants import FEATURES, PLANE_Z
from tracklstm.export.loading import PackageError
from tracklstm.models.build import physical_units
from tracklstm.physics.helix import helix
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

#: Batch sizes of the parity checks.
CHECK_BATCHES: tuple[int, ...] = (1, 7, 300)
#: Largest allowed |exported - eager| in normalized units (a fraction of each feature's
#: normalization range): about ten float32 rounding steps (the schema's export.tolerance).
DEFAULT_TOLERANCE: float = defaults("export")["tolerance"]
#: Largest allowed difference of covariances, in units of sigma_i sigma_j (and of Jacobians,
#: in units of each entry's size), for an engine that computes the covariance head in another
#: order (ONNX, the plain C++ propagator): the head runs in float32, and its own rounding moves
#: the variances by up to 2e-6 (float32 against float64 on the demo), so the state's tolerance
#: (1e-6) would fail on rounding alone.
COVARIANCE_TOLERANCE: float = 1e-5


class ParityError(PackageError):
    """A reloaded file whose outputs differ from the eager model's beyond the tolerance."""


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


def norm_scale(meta: dict[str, Any]) -> Tensor | None:
    """Each feature's normalization range (``norm_max - norm_min``) when ``meta`` has one."""
    if "norm_min" not in meta or "norm_max" not in meta:
        return None
    lo = torch.tensor(meta["norm_min"], dtype=torch.float64)
    return torch.tensor(meta["norm_max"], dtype=torch.float64) - lo


def cycled(inputs: Tensor, n: int) -> Tensor:
    """``n`` rows of ``inputs``, cycling through them if there are fewer."""
    if inputs.size(0) >= n:
        return inputs[:n].contiguous()
    idx = torch.arange(n, device=inputs.device) % inputs.size(0)
    return inputs.index_select(0, idx).contiguous()


def _difference(got: Tensor, want: Tensor, scale: Tensor | None) -> dict[str, Any]:
    """The largest |got - want| (divided by ``scale`` when given), or what prevents it."""
    if got.shape != want.shape:
        return {"error": f"output shape {list(got.shape)}, eager {list(want.shape)}"}
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
        return {"error": "non-finite values"}
    diff = (got - want).abs()
    out: dict[str, Any] = {}
    if got.dim() == 2 and got.size(1) == len(FEATURES) and got.size(0):
        per_feature = diff.max(dim=0).values.tolist()
        out["max_abs_diff"] = dict(zip(FEATURES, per_feature, strict=True))
    if scale is not None:
        diff = diff / scale.to(diff.device)
    worst = float(diff.max()) if diff.numel() else 0.0
    out["max_diff"] = math.inf if math.isnan(worst) else worst
    return out


def parity_rows(
    name: str,
    loaded: Callable[[Tensor], Any],
    eager: Callable[[Tensor], Tensor],
    inputs: Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    scale: Tensor | None = None,
    batches: Sequence[int] = CHECK_BATCHES,
) -> list[dict[str, Any]]:
    """``loaded(x)`` against ``eager(x)`` on batches of ``batches`` rows of ``inputs`` (cycled):
    one row per batch, with the largest difference (``max_diff``, divided by ``scale`` when
    given: ``diff_units``), the per-feature one in physical units, and whether it passed. A file
    that cannot run, or gives another shape or non-finite values, fails its row (``error``)."""
    units = "normalized" if scale is not None else "absolute"
    rows = []
    for n in batches:
        x = cycled(inputs, n)
        with torch.no_grad():
            want = eager(x).detach().to("cpu", torch.float64)
        row: dict[str, Any] = {
            "format": name,
            "batch": n,
            "diff_units": units,
            "tolerance": tolerance,
        }
        try:
            with torch.no_grad():
                got = torch.as_tensor(loaded(x)).detach().to("cpu", torch.float64)
            row.update(_difference(got, want, scale))
        except Exception as err:  # a runtime that cannot run the file fails its check
            row["error"] = f"{type(err).__name__}: {err}"[:500]
        worst = row.setdefault("max_diff", None)
        row["passed"] = worst is not None and worst <= tolerance
        shown = "n/a" if worst is None else f"{worst:.2e}"
        log.info(
            "%-12s batch %4d: max |exported - eager| = %s (%s) %s",
            name, n, shown, units, "ok" if row["passed"] else "FAILED",
        )  # fmt: skip
        rows.append(row)
    return rows


def failures(rows: Sequence[dict[str, Any]], tolerance: float | None = None) -> str | None:
    """What failed in ``rows``, one clause per failed batch (with the tolerance it was judged
    against: the row's own, else ``tolerance``), or None when every one passed."""
    lines = []
    for r in rows:
        if r["passed"]:
            continue
        limit = r.get("tolerance", tolerance)
        what = r.get("error") or f"max |exported - eager| = {r['max_diff']:.3g} {r['diff_units']}"
        lines.append(f"{r['format']} batch {r['batch']}: {what} (tolerance {limit:g})")
    return "; ".join(lines) if lines else None


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
    rows = parity_rows(
        "package", loaded, eager, inputs, tolerance=tolerance, scale=scale, batches=example_batches
    )
    failed = failures(rows, tolerance)
    if failed:
        raise ParityError(failed)
    return max(r["max_diff"] for r in rows)


def covariance_rows(
    name: str, loaded: Any, eager: Any, inputs: Tensor, *, tolerance: float = DEFAULT_TOLERANCE
) -> list[dict[str, Any]]:
    """``parity_rows`` of the covariance of ``forward_with_covariance``: both files' (batch, 5, 5)
    covariances divided by the eager one's sigma_i sigma_j (so every entry weighs alike)."""

    def scaled(method: Callable[[Tensor], Any]) -> Callable[[Tensor], Tensor]:
        def run(x: Tensor) -> Tensor:
            ref = eager.forward_with_covariance(x)[1].to(torch.float64)
            sigma = torch.sqrt(torch.diagonal(ref, dim1=1, dim2=2))
            cov = torch.as_tensor(method(x)[1]).to(torch.float64)
            return (cov / (sigma.unsqueeze(2) * sigma.unsqueeze(1))).flatten(1)

        return run

    return parity_rows(
        f"{name} covariance",
        scaled(loaded.forward_with_covariance),
        scaled(eager.forward_with_covariance),
        inputs,
        tolerance=tolerance,
    )
