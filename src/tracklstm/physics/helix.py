"""Track propagation without a network and without material: the straight line and the helix.

Both take the last known state ``(x, y, z, px, py, pz)`` (cm, GeV/c) and the z of the plane to
reach, and return the full state there (z set to the target z):

- ``straight_line``: along the momentum direction, momentum unchanged.
- ``helix``: a helix about z in a piecewise-uniform solenoid field (``tracklstm.physics.
  helix_field``), momentum magnitude unchanged.

Everything is vectorised numpy over any leading shape, in float64. ``tracklstm.physics.
helix_prior`` is the same helix in torch, for the models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tracklstm.physics.helix_field import CURVATURE_PER_CM, NOMINAL_FIELD, check_field

#: A propagation: (states (..., 6), target z (...)) -> states at the target z (..., 6).
Propagator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def split_states(states: np.ndarray, z_target: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``states`` as float64 (..., 6) and ``z_target`` broadcast to their leading shape."""
    s = np.asarray(states, dtype=np.float64)
    if s.shape[-1] != 6:
        raise ValueError(f"states must have 6 values (x, y, z, px, py, pz) last, got {s.shape}")
    z1 = np.broadcast_to(np.asarray(z_target, dtype=np.float64), s.shape[:-1])
    if (s[..., 5] == 0).any():
        raise ValueError("a state has pz = 0: it cannot be propagated along z")
    return s, z1


def straight_line(states: np.ndarray, z_target: np.ndarray | float) -> np.ndarray:
    """Move each state along its momentum direction to ``z_target``; momentum unchanged."""
    s, z1 = split_states(states, z_target)
    out = s.copy()
    dz = z1 - s[..., 2]
    out[..., 0] += s[..., 3] / s[..., 5] * dz
    out[..., 1] += s[..., 4] / s[..., 5] * dz
    out[..., 2] = z1
    return out


def helix_uniform(
    states: np.ndarray, z_target: np.ndarray | float, qbz: float | np.ndarray
) -> np.ndarray:
    """Exact helix in a uniform field ``qbz`` = q·Bz (T) from each state to ``z_target``.

    The momentum turns about z by ``a = -0.003 qbz dz / pz`` (dz in cm); x and y advance along
    the chord, which stays finite (a straight line) as the field goes to 0.
    """
    s, z1 = split_states(states, z_target)
    x, y, z, px, py, pz = np.moveaxis(s, -1, 0)
    dz = z1 - z
    a = CURVATURE_PER_CM * np.asarray(qbz, dtype=np.float64) * dz / pz
    half = 0.5 * a
    # sin(a/2)/(a/2), finite at 0: the chord is shorter than the arc by this factor.
    chord = np.sinc(half / np.pi)
    c_half, s_half = np.cos(half), np.sin(half)
    step = dz / pz * chord
    out = np.empty_like(s)
    out[..., 0] = x + step * (px * c_half - py * s_half)
    out[..., 1] = y + step * (px * s_half + py * c_half)
    out[..., 2] = z1
    ca, sa = np.cos(a), np.sin(a)
    out[..., 3] = px * ca - py * sa
    out[..., 4] = px * sa + py * ca
    out[..., 5] = pz
    return out


def helix(
    states: np.ndarray,
    z_target: np.ndarray | float,
    field: Sequence[Sequence[float]] = NOMINAL_FIELD,
) -> np.ndarray:
    """Helix through a piecewise-uniform field: one exact helix step per region crossed.

    ``field`` is ((z_from, q·Bz), ...) in cm and T, z_from increasing; the first region extends to
    minus infinity and the last to plus infinity. Propagation backwards in z works too.
    """
    regions = check_field(field)
    s, z1 = split_states(states, z_target)
    if len(regions) == 1:
        return helix_uniform(s, z1, regions[0][1])
    starts = [-np.inf] + [z for z, _ in regions[1:]]
    ends = [z for z, _ in regions[1:]] + [np.inf]
    out = s.copy()
    forward = z1 >= s[..., 2]
    for mask, order in ((forward, range(len(regions))), (~forward, reversed(range(len(regions))))):
        if not mask.any():
            continue
        cur = out[mask]
        goal = z1[mask]
        for k in order:
            # The part of the path inside region k: clip the target into the region.
            lo, hi = starts[k], ends[k]
            inside_goal = np.clip(goal, lo, hi)
            moves = (cur[:, 2] >= lo) & (cur[:, 2] <= hi) & (inside_goal != cur[:, 2])
            if moves.any():
                cur[moves] = helix_uniform(cur[moves], inside_goal[moves], regions[k][1])
        out[mask] = cur
    out[..., 2] = z1
    return out


def nominal_helix(field: Sequence[Sequence[float]] = NOMINAL_FIELD) -> Propagator:
    """The helix baseline with a given field, as a ``(states, z_target) -> states`` function."""
    regions = check_field(field)

    def propagate(states: np.ndarray, z_target: np.ndarray | float) -> np.ndarray:
        return helix(states, z_target, regions)

    return propagate
