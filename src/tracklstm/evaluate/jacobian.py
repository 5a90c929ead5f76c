"""Transport Jacobians: d(next state) / d(current state) of x, y, px, py, pz, for a track fit.

A Kalman filter carries a covariance from plane to plane as C' = J C J^T + Q; J is the
derivative of the propagation. Three of them, on the same states:

- ``model_jacobian``: a trained propagator's, by autograd through the model (the window's last
  state is the current state; for a one-state model, ``residual_markov``, it is the whole input);
- ``helix_jacobian``: the nominal helix's, by autograd through its closed form (exact);
- ``field_jacobian``: the simulator's field map's (Runge-Kutta, no material), by central finite
  differences: the reference.

``relative_difference`` compares two of them the way ``benchmarks/jacobian.py`` reports them:
J - I (what the step adds), momenta in units of 10 MeV/c so that the blocks weigh alike, by the
Frobenius norm of the difference over that of the reference's J - I.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tracklstm.constants import ANSWER_INDEX
from tracklstm.physics.baselines import field_only
from tracklstm.physics.helix_field import NOMINAL_FIELD
from tracklstm.physics.helix_prior import field_tables, helix_step

#: The varied and compared features: x, y, px, py, pz (z is the plane's).
INDEX: list[int] = list(ANSWER_INDEX)
#: Finite-difference steps of the field map's Jacobian: cm for x, y; GeV/c for the momenta.
FD_STEP: tuple[float, ...] = (1e-3, 1e-3, 1e-5, 1e-5, 1e-5)
#: Scale of J - I for the comparison: cm and units of 10 MeV/c.
UNITS: np.ndarray = np.array([1.0, 1.0, 100.0, 100.0, 100.0])


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


def field_jacobian(states: np.ndarray, z_target: np.ndarray) -> np.ndarray:
    """(N, 5, 5) Jacobian of the field map's propagation, by central differences."""
    states = np.asarray(states, dtype=np.float64)
    out = np.empty((len(states), len(INDEX), len(INDEX)))
    for col, (j, h) in enumerate(zip(INDEX, FD_STEP, strict=True)):
        up, down = states.copy(), states.copy()
        up[:, j] += h
        down[:, j] -= h
        diff = field_only(up, z_target) - field_only(down, z_target)
        out[:, :, col] = diff[:, INDEX] / (2 * h)
    return out


def relative_difference(jacobians: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per state: ||J - J_ref|| / ||J_ref - I|| (Frobenius), momenta in 10 MeV/c."""
    scale = UNITS[:, None] / UNITS[None, :]
    eye = np.eye(len(INDEX))
    num = np.linalg.norm((jacobians - reference) * scale, axis=(1, 2))
    return num / np.linalg.norm((reference - eye) * scale, axis=(1, 2))
