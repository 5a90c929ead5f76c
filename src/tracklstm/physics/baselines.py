"""Track propagation without a network: the baselines the model is judged against.

Each takes the last known state ``(x, y, z, px, py, pz)`` (cm, GeV/c) and the z of the plane to
reach, and returns the full state there (z set to the target z):

- ``straight``: along the momentum direction, momentum unchanged (``physics.helix``).
- ``helix``: a helix about z in a piecewise-uniform solenoid field, momentum magnitude unchanged
  (``physics.helix``).
- ``field_only``: the simulator's own field map (``physics.solenoid``) without material, the
  noise floor on simulated tracks.

The nominal field (``helix_field.NOMINAL_FIELD``) is one value, q·Bz = 2.0 T everywhere: the GlueX
solenoid's central field. The per-region values implied by the turning of (px, py) in real tracks
(``helix_field.TURNING_FIELD``: 2.3 T up to z = 241 cm, 2.1 T up to 299.4 cm, 0 beyond; region ends
in the middle of the plane groups, where the data cannot tell) are a worse helix field: they absorb
the sideways kicks of the radial field at the magnet's ends. On the real track in
``src/tracklstm/data/mlchallenge2_track3.csv`` the uniform 2.0 T helix scores 3.3 per step
(challenge score over its 23 steps) against 4.0 for the per-region field and 8.5 for the straight
line, and on simulated tracks 1.2 against 2.3 and 9.3.

Everything is vectorised numpy over any leading shape, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracklstm.physics.helix import Propagator, nominal_helix, split_states, straight_line
from tracklstm.physics.helix_field import NOMINAL_FIELD
from tracklstm.physics.solenoid import propagate


def baselines(field: Sequence[Sequence[float]] = NOMINAL_FIELD) -> dict[str, Propagator]:
    """The baselines by name: ``straight``, ``helix`` (in ``field``) and ``field_only`` (the
    simulator's field map, no material: the noise floor on simulated tracks, the best physics
    a user has on real ones)."""
    return {"straight": straight_line, "helix": nominal_helix(field), "field_only": field_only}


def field_only(states: np.ndarray, z_target: np.ndarray | float) -> np.ndarray:
    """The simulator's own field map with no material: the noise floor of a propagator.

    Each state (any leading shape, 6 values last) is followed through
    ``solenoid.GLUEX_FIELD`` (Runge-Kutta, Bz(z) and its radial part) to its own ``z_target``
    with ``solenoid.propagate`` and no material; what remains of the error on simulated
    tracks is the multiple scattering and energy loss that no deterministic propagator can
    know. Rows are grouped by target z (``propagate`` takes one list of planes for all rows).
    Forward in z only (``z_target >= z``), as in the simulator. float64 out, z = ``z_target``.
    """
    s, z1 = split_states(states, z_target)
    flat = s.reshape(-1, 6)
    goal = np.ascontiguousarray(z1).reshape(-1)
    out = np.empty_like(flat)
    for z in np.unique(goal):
        rows = goal == z
        out[rows] = propagate(flat[rows], [float(z)])[:, 0]
    out[:, 2] = goal
    return out.reshape(s.shape)
