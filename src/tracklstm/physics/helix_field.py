"""The solenoid field of the helix propagators (the baselines and the residual model's prior).

A field is q·Bz (T) per z region, ``((first z of the region in cm, q·Bz), ...)``; the first
region starts at minus infinity whatever its z says. Kept apart from the propagators so that the
models' prior depends on these facts only, not on the evaluation's baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

from tracklstm.settings import field_problem

#: dphi/dz per cm of z for q·Bz = 1 T and pz = 1 GeV/c: -0.3 (GeV/c per T per m) / 100 cm.
CURVATURE_PER_CM: float = -0.003
#: A field is q·Bz (T) per z region: ((first z of the region in cm, q·Bz), ...); the first region
#: starts at minus infinity whatever its z says. The nominal field: 2.0 T everywhere.
NOMINAL_FIELD: tuple[tuple[float, float], ...] = ((65.0, 2.0),)
#: The field implied by the turning of (px, py) between plane groups in real tracks.
TURNING_FIELD: tuple[tuple[float, float], ...] = ((65.0, 2.3), (241.0, 2.1), (299.4, 0.0))


def check_field(field: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """``field`` as ((z_from, qbz), ...) with increasing z; a ValueError says what is wrong
    (``settings.field_problem``: the same check the config gets before any job)."""
    problem = field_problem(field)
    if problem:
        raise ValueError(problem)
    return tuple((float(z), float(b)) for z, b in field)
