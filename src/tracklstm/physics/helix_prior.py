"""The helix step of ``baselines.helix`` in torch: a physics prior that exports with the model.

``helix_step`` is the same math as :func:`tracklstm.physics.baselines.helix` (an exact helix about z
per region of a piecewise-uniform field, momentum magnitude unchanged), written so that it runs
inside ``torch.jit.script``, ``torch.export.export`` and the ONNX exporter: no numpy, no Python
control flow on tensor values, the regions visited by a loop over their (fixed) count, each region's
share of the step found with clamps. It supports forward propagation in z only (``z_target >= z``),
which is all a next-plane prior needs; a backward step returns the state unchanged except for z. Use
float64: it agrees with the numpy helix to about 1e-12 cm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tracklstm.physics.helix_field import CURVATURE_PER_CM, NOMINAL_FIELD, check_field

#: Below this |half turning angle| (rad), sin(h)/h is taken from its series (1 - h^2/6).
SINC_SERIES: float = 1e-4


def sin_over_x(h: torch.Tensor, series_below: float = SINC_SERIES) -> torch.Tensor:
    """sin(h)/h, finite (1) at h = 0: the series 1 - h^2/6 below ``series_below``.

    Written out rather than ``torch.sinc`` so that it does not depend on the exporters' support
    of sinc (the constants are default arguments: TorchScript cannot read module globals).
    """
    small = torch.abs(h) < series_below
    safe = torch.where(small, torch.ones_like(h), h)
    return torch.where(small, 1.0 - h * h / 6.0, torch.sin(safe) / safe)


def helix_uniform_step(
    states: torch.Tensor,
    dz: torch.Tensor,
    qbz: torch.Tensor,
    curvature: float = CURVATURE_PER_CM,
) -> torch.Tensor:
    """Exact helix in a uniform field ``qbz`` (q·Bz, T) over ``dz`` (cm) from each state.

    ``states`` (B, 6): x, y, z, px, py, pz; ``dz`` (B,); ``qbz`` a 0-d or (B,) tensor. The
    returned z is ``z + dz``. The same operations, in the same order, as
    ``baselines.helix_uniform``. ``curvature``: dphi/dz per cm for 1 T and 1 GeV/c.
    """
    x = states[:, 0]
    y = states[:, 1]
    z = states[:, 2]
    px = states[:, 3]
    py = states[:, 4]
    pz = states[:, 5]
    a = curvature * qbz * dz / pz
    half = 0.5 * a
    chord = sin_over_x(half)
    c_half = torch.cos(half)
    s_half = torch.sin(half)
    step = dz / pz * chord
    ca = torch.cos(a)
    sa = torch.sin(a)
    return torch.stack(
        [
            x + step * (px * c_half - py * s_half),
            y + step * (px * s_half + py * c_half),
            z + dz,
            px * ca - py * sa,
            px * sa + py * ca,
            pz,
        ],
        dim=1,
    )


def helix_step(
    states: torch.Tensor,
    z_target: torch.Tensor,
    field_z: torch.Tensor,
    field_qbz: torch.Tensor,
) -> torch.Tensor:
    """Helix from ``states`` (B, 6) to ``z_target`` (B,) through a piecewise-uniform field.

    ``field_z`` (R,) are the first z of each region (cm, increasing; the first region extends to
    minus infinity, the last to plus infinity) and ``field_qbz`` (R,) its q·Bz (T); the tables
    of :func:`field_tables`. One exact helix per region crossed, in order: region k's share of
    the step is ``clamp(z_target) - clamp(z)`` with both clamped into the region, zero for a
    region not crossed (a zero step is the identity). The returned z is ``z_target`` exactly.
    Forward steps only (``z_target >= z``); for a backward step x, y and p stay as they are.
    """
    n_regions = field_z.shape[0]
    z0 = states[:, 2]
    z1 = torch.maximum(z_target, z0)
    out = states
    for k in range(n_regions):
        a = z0
        b = z1
        if k > 0:
            a = torch.clamp(a, min=field_z[k])
            b = torch.clamp(b, min=field_z[k])
        if k < n_regions - 1:
            a = torch.clamp(a, max=field_z[k + 1])
            b = torch.clamp(b, max=field_z[k + 1])
        out = helix_uniform_step(out, b - a, field_qbz[k])
    return torch.cat([out[:, :2], z_target.unsqueeze(1), out[:, 3:]], dim=1)


def field_tables(
    field: Sequence[Sequence[float]] = NOMINAL_FIELD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A field ((z_from, q·Bz), ...) as the float64 tables (field_z, field_qbz) of helix_step.

    Checked by ``baselines.check_field`` (a ValueError says what is wrong).
    """
    regions = check_field(field)
    z = torch.tensor([r[0] for r in regions], dtype=torch.float64)
    qbz = torch.tensor([r[1] for r in regions], dtype=torch.float64)
    return z, qbz
