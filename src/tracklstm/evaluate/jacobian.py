"""Transport Jacobians: d(next state) / d(current state) of x, y, px, py, pz, for a track fit.

A Kalman filter carries a covariance from plane to plane as C' = J C J^T + Q; J is the
derivative of the propagation. Three of them, on the same states:

- ``model_jacobian``: a trained propagator's, by autograd through the model (the window's last
  state is the current state; for a one-state model, ``residual_markov``, it is the whole input);
- ``helix_jacobian``: the nominal helix's, by autograd through its closed form (exact);
- ``field_jacobian``: the simulator's field map's (Runge-Kutta, no material), by central finite
  differences: the reference (owned by ``physics.transport``, which the training uses too).

``relative_difference`` (``physics.transport``) compares two of them the way
``benchmarks/jacobian.py`` reports them: J - I (what the step adds), momenta in units of
10 MeV/c so that the blocks weigh alike, by the Frobenius norm of the difference over that of the
reference's J - I.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tracklstm.physics.helix_field import NOMINAL_FIELD
from tracklstm.physics.helix_prior import field_tables, helix_step
from tracklstm.physics.transport import INDEX, field_jacobian, relative_difference

__all__ = ["field_jacobian", "helix_jacobian", "model_jacobian", "relative_difference"]


def model_jacobian(model: nn.Module, windows: np.ndarray) -> np.ndarray:
    """(N, 5, 5) derivatives of the model's next x, y, px, py, pz with respect to the last
    state's x, y, px, py, pz, for windows (N, window, 6) in cm and GeV/c: an exported file's
    ``jacobian`` method where it has one, else autograd through the (eager) model."""
    # gradients here even under torch.no_grad (a TorchScript file used under inference mode may
    # have made constants there that autograd cannot use: evaluate.calibration avoids it)
    with torch.enable_grad():
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if hasattr(model, "jacobian"):
            return model.jacobian(x).to(torch.float64).numpy()
        out = np.empty((len(x), len(INDEX), len(INDEX)))
        for row, i in enumerate(INDEX):
            inputs = x.clone().requires_grad_(True)
            pred = model(inputs)
            grads = torch.autograd.grad(pred[:, i].sum(), inputs)[0]
            out[:, row] = grads[:, -1, INDEX].to(torch.float64).numpy()
    return out


def helix_jacobian(
    states: np.ndarray, z_target: np.ndarray, field: Sequence[Sequence[float]] = NOMINAL_FIELD
) -> np.ndarray:
    """(N, 5, 5) Jacobian of the helix from ``states`` (N, 6) to ``z_target`` (N,), exact."""
    field_z, field_qbz = field_tables(field)
    s = torch.from_numpy(np.asarray(states, dtype=np.float64)).clone().requires_grad_(True)
    zt = torch.from_numpy(np.asarray(z_target, dtype=np.float64))
    end = helix_step(s, zt, field_z, field_qbz)
    out = np.empty((len(s), len(INDEX), len(INDEX)))
    for row, i in enumerate(INDEX):
        grads = torch.autograd.grad(end[:, i].sum(), s, retain_graph=True)[0]
        out[:, row] = grads[:, INDEX].numpy()
    return out


#: Test states the evaluation compares the Jacobians on (``jacobian_metrics``).
EVALUATED_STATES: int = 400


def jacobian_metrics(
    model: nn.Module,
    windows: np.ndarray,
    targets: np.ndarray,
    field: Sequence[Sequence[float]] = NOMINAL_FIELD,
    n: int = EVALUATED_STATES,
    seed: int = 1,
) -> dict[str, float | int]:
    """The model's and the helix's Jacobians against the field map's on ``n`` of the test
    windows (N, window, 6) with their targets (N, 6) (the step to the target's plane): the
    median and 95th percentile of ``relative_difference`` (``metrics.json`` ``jacobian``)."""
    rows = np.random.default_rng(seed).choice(len(windows), min(n, len(windows)), replace=False)
    rows.sort()
    states = np.asarray(windows[rows, -1], dtype=np.float64)
    z_next = np.asarray(targets[rows, 2], dtype=np.float64)
    reference = field_jacobian(states, z_next)
    model_diff = relative_difference(model_jacobian(model, windows[rows]), reference)
    helix_diff = relative_difference(helix_jacobian(states, z_next, field), reference)
    return {
        "states": len(rows),
        "median": round(float(np.median(model_diff)), 5),
        "p95": round(float(np.percentile(model_diff, 95)), 5),
        "helix_median": round(float(np.median(helix_diff)), 5),
        "helix_p95": round(float(np.percentile(helix_diff, 95)), 5),
    }
