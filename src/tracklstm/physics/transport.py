"""The field map's transport Jacobian: the reference every other Jacobian is measured against.

A Kalman filter carries a covariance from plane to plane as C' = J C J^T + Q, where J is the
derivative of the next plane's x, y, px, py, pz with respect to the current ones. The simulator's
field map (Runge-Kutta, no material: ``physics.baselines.field_only``) defines the true J; here
it is taken by central finite differences. Two users: the evaluation (``evaluate.jacobian``
compares a trained model's and the helix's with it) and the training, which can teach a model
this Jacobian (``train.jacobian``, ``training.jacobian_weight``).

``relative_difference`` is the one measure of both: J - I (what the step adds), momenta in units
of 10 MeV/c so that the blocks weigh alike (``COMPARISON_UNITS``), the Frobenius norm of the
difference over that of the reference's J - I.
"""

from __future__ import annotations

import numpy as np

from tracklstm.constants import ANSWER_INDEX
from tracklstm.physics.baselines import field_only

#: The varied and compared features: x, y, px, py, pz (z is the plane's).
INDEX: list[int] = list(ANSWER_INDEX)
#: Finite-difference steps of the field map's Jacobian: cm for x, y; GeV/c for the momenta.
FD_STEP: tuple[float, ...] = (1e-3, 1e-3, 1e-5, 1e-5, 1e-5)
#: Scale of J - I for the comparison: cm and units of 10 MeV/c.
COMPARISON_UNITS: np.ndarray = np.array([1.0, 1.0, 100.0, 100.0, 100.0])


def comparison_scale() -> np.ndarray:
    """(5, 5) factors that put J(i, j) in the comparison's units: units_i / units_j."""
    return COMPARISON_UNITS[:, None] / COMPARISON_UNITS[None, :]


def field_jacobian(states: np.ndarray, z_target: np.ndarray) -> np.ndarray:
    """(N, 5, 5) Jacobian of the field map's propagation from ``states`` (N, 6) to ``z_target``
    (N,), by central differences."""
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
    scale = comparison_scale()
    eye = np.eye(len(INDEX))
    num = np.linalg.norm((jacobians - reference) * scale, axis=(1, 2))
    return num / np.linalg.norm((reference - eye) * scale, axis=(1, 2))
