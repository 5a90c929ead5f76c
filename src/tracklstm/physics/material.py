"""The material a track crosses in the simulated detector: energy loss and multiple scattering.

The material half of the simulator (``tracklstm.data.simulate``): ``tracklstm.physics.solenoid``
propagates tracks through the field and, when it is given a ``Material``, lets it act at its
layers along z and on the gas in between. Units: cm and GeV/c.

Between the origin and the first plane the track crosses heavy material (gas,
straws, an endplate): the momentum falls by 5-14 MeV/c (Moyal-distributed loss times a per-track
geometry factor) and the track scatters by about 4.5 MeV/c per transverse component. Each
detector plane costs about 0.016 MeV/c (Moyal-distributed) and scatters by 0.35 MeV/c per
component; the gas between planes costs 2.2 keV/c per cm. Losses and scattering grow with the
path length through the material (|p|/pz) and scattering with 1/beta (pion mass). A plane's
material acts just after the state at that plane is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tracklstm.constants import PLANE_Z

#: Mass (GeV/c^2) used for beta in energy loss and scattering: the charged pion.
PION_MASS: float = 0.13957

#: Layers of the material between the origin and the first plane: z (cm) and share of the total.
UPSTREAM_LAYERS: tuple[tuple[float, float], ...] = (
    (75.0, 0.06),
    (95.0, 0.06),
    (115.0, 0.06),
    (135.0, 0.06),
    (155.0, 0.06),
    (167.0, 0.70),
)
#: Upstream energy loss (GeV): geometry factor U(lo, hi) * (most probable + width * Moyal).
UPSTREAM_LOSS_MPV: float = 6.6e-3
UPSTREAM_LOSS_WIDTH: float = 0.4e-3
UPSTREAM_GEOMETRY: tuple[float, float] = (0.75, 1.35)
#: Upstream multiple scattering: transverse momentum kick per component (GeV/c), all layers.
UPSTREAM_SCATTER: float = 4.5e-3
#: Per detector plane: most probable loss and Moyal width (GeV), and scattering kick (GeV/c).
PLANE_LOSS_MPV: float = 0.011e-3
PLANE_LOSS_WIDTH: float = 0.004e-3
PLANE_SCATTER: float = 0.35e-3
#: Gas between the planes, from the upstream endplate on: loss per cm (GeV/cm).
GAS_START_Z: float = 167.0
GAS_LOSS_PER_CM: float = 2.2e-6

#: Kinds of the material's events along z (the propagation records planes as kind 0 first).
UPSTREAM_LAYER: int = 1
DETECTOR_PLANE: int = 2


def _moyal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard Moyal variates (mode 0), an approximation of the Landau energy-loss shape."""
    return -2.0 * np.log(np.abs(rng.standard_normal(n)) + 1e-300)


def _kinematics(s: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|p|, path factor |p|/pz and 1/beta (pion) of the current states."""
    p2 = s[2] * s[2] + s[3] * s[3] + s[4] * s[4]
    p = np.sqrt(p2)
    return p, p / s[4], np.sqrt(1.0 + (PION_MASS * PION_MASS) / p2)


def _lose(s: list[np.ndarray], p: np.ndarray, loss: np.ndarray) -> None:
    """Lower |p| by ``loss`` (GeV/c) keeping the direction (in place)."""
    scale = np.maximum(1.0 - loss / p, 0.05)
    for k in (2, 3, 4):
        s[k] = s[k] * scale


def _lose_and_scatter(
    s: list[np.ndarray], loss: np.ndarray, sigma: np.ndarray, rng: np.random.Generator
) -> None:
    """Lower |p| by ``loss``, then kick the direction by Gaussian angles sigma/|p| in two
    planes normal to p (in place)."""
    px, py, pz = s[2], s[3], s[4]
    n = len(px)
    pt2 = px * px + py * py
    p0 = np.sqrt(pt2 + pz * pz)
    p = np.maximum(p0 - loss, 0.05 * p0)
    pt = np.maximum(np.sqrt(pt2), 1e-300)
    # unit vectors normal to p: e1 = (-py, px, 0)/pt, e2 = p x e1 / |p|
    t1 = rng.standard_normal(n) * sigma / pt
    t2 = rng.standard_normal(n) * sigma / (pt * p0)
    dx = px - t1 * py - t2 * pz * px
    dy = py + t1 * px - t2 * pz * py
    dz = pz + t2 * pt2
    scale = p / np.sqrt(dx * dx + dy * dy + dz * dz)
    s[2], s[3], s[4] = dx * scale, dy * scale, dz * scale


class Crossing:
    """One propagation's passage through the material: what is drawn once per track (the
    upstream loss, on the first upstream layer) and the generator every draw comes from."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.rng = rng
        self.upstream_loss: np.ndarray | None = None

    def travel(self, s: list[np.ndarray], z_from: float | np.ndarray, z_to: float) -> None:
        """The gas between ``z_from`` (one z, or one per track) and ``z_to``: a loss per cm of
        path from ``GAS_START_Z`` on (in place on ``s``: x, y, px, py, pz)."""
        if np.ndim(z_from) == 0:
            gas: float | np.ndarray = max(0.0, z_to - max(float(z_from), GAS_START_Z))
        else:
            gas = np.clip(z_to - np.maximum(z_from, GAS_START_Z), 0.0, None)
        if np.any(gas > 0):
            p, path, inv_beta = _kinematics(s)
            _lose(s, p, GAS_LOSS_PER_CM * gas * path * inv_beta)

    def act(self, s: list[np.ndarray], kind: int, share: float, here: np.ndarray | None) -> None:
        """A layer's loss and scattering (in place on ``s``); ``here``: the tracks that have
        reached it (None: all)."""
        rng, n = self.rng, self.n
        _, path, inv_beta = _kinematics(s)
        if kind == UPSTREAM_LAYER:
            if self.upstream_loss is None:
                lo, hi = UPSTREAM_GEOMETRY
                geometry = rng.uniform(lo, hi, n)
                self.upstream_loss = geometry * (
                    UPSTREAM_LOSS_MPV + UPSTREAM_LOSS_WIDTH * _moyal(rng, n)
                )
            loss = (share * inv_beta) * self.upstream_loss * path
            sigma = (UPSTREAM_SCATTER * math.sqrt(share)) * np.sqrt(path) * inv_beta
        else:
            loss = (PLANE_LOSS_MPV + PLANE_LOSS_WIDTH * _moyal(rng, n)) * path * inv_beta
            sigma = PLANE_SCATTER * np.sqrt(path) * inv_beta
        if here is not None:
            loss = np.where(here, loss, 0.0)
            sigma = np.where(here, sigma, 0.0)
        _lose_and_scatter(s, loss, sigma, rng)


@dataclass(frozen=True)
class Material:
    """The simulated detector's material along z (see the module notes)."""

    def events(self, z_lo: float, z_hi: float) -> list[tuple[float, int, float]]:
        """``(z, kind, share)`` of the layers with ``z_lo <= z <= z_hi``: the upstream layers
        (their share of the upstream material) and the detector planes after the first."""
        out = [(z, UPSTREAM_LAYER, share) for z, share in UPSTREAM_LAYERS if z_lo <= z <= z_hi]
        out += [(z, DETECTOR_PLANE, 0.0) for z in PLANE_Z[1:] if z_lo <= z <= z_hi]
        return out

    def crossing(self, n: int, rng: np.random.Generator) -> Crossing:
        """A passage of ``n`` tracks through this material, drawing from ``rng``."""
        return Crossing(n, rng)


#: The material of the simulated GlueX-like detector.
DETECTOR_MATERIAL = Material()
