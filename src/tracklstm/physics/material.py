"""The material a track crosses in the simulated detector: energy loss and multiple scattering.

The material half of the simulator (``tracklstm.data.simulate``): ``tracklstm.physics.solenoid``
propagates tracks through the field and, when it is given a ``Material``, lets it act at its
layers along z and on the gas in between. Units: cm and GeV/c (MeV and eV where named).

Physics, per layer and per track (PDG Review of Particle Physics, "Passage of particles through
matter"; the track is taken to be a charged pion):

- path length: the layer's areal density times |p|/pz (the track crosses it at an angle);
- mean energy loss: the Bethe formula with the density effect at high energy;
- straggling: Landau-distributed loss (most probable value and width xi from the PDG), drawn by
  the Chambers-Mallows-Stuck method and capped at the largest energy one collision can transfer
  (T_max); thick layers are then Landau-like with their long tail of delta rays;
- multiple scattering: the Highland width theta_0 for the layer's thickness in radiation
  lengths, with a single-scattering tail: a share ``TAIL_WEIGHT`` of the crossings scatters
  ``TAIL_WIDTH`` times wider (a two-Gaussian approximation of Moliere's distribution);
- the momentum falls by the energy lost over beta (dE = beta dp).

The detector, by region (z of each layer, what it is and how thick). The parameters marked
"fitted" were fitted on the 31 real flights of ``data/mlchallenge2_origin_plane24.csv`` (origin
to plane 24) with ``benchmarks/sim_vs_real.py``: the median |p| loss (10.0 MeV/c), its 10 % to
90 % spread (5.9 to 15.5 MeV/c), the pull widths of x, y, px, py and the chi2 of the flights:

- the material around the origin at z = 66: the liquid-hydrogen target's cell (r < 1.5 cm) and,
  beyond the vacuum around it, the start counter, the scattering chamber and the central drift
  chamber's inner wall and upstream straws (r >= 3 cm): one plastic-equivalent layer
  (polystyrene's constants) of 2.5 g/cm^2, 5.7 % of a radiation length (fitted). The gap: the
  real track that lost only 0.95 MeV/c in all passes z = 65 at r = 2.64 cm, the one at 1.09 cm
  lost 20 MeV/c. Scattering this far upstream moves a track's position at plane 24 on a long
  lever (278 cm) for the direction change it makes: the real flights stray from the position
  their momentum implies more than scattering at the endplate (176 cm on) allows. Without this
  layer the real tracks' median chi2/ndf was 0.89-0.95 against the simulator's own draws' 0.59,
  and 5-6 of 31 lay outside the 95 % region; with it 0.615 (over 8 seeds of the draws 0.63 on
  average, 0.59 the lowest) against 0.63, and 2-3 outside (the two largest Landau losses among
  them; the simulator's own draws: 7.7 %);
- the central drift chamber's straws (CDC, 10 < r < 56 cm, z up to 167 cm): five equal slices
  of Mylar-equivalent material at z = 75 ... 155, 1.0 g/cm^2 in all (fitted; the straws' walls,
  crossed at grazing incidence by these forward tracks, and the gas); only tracks inside the
  straw volume at a slice cross it (the beam hole inside r = 10 cm is empty);
- the CDC's downstream endplate and its readout at z = 167 (an annulus from 6 to 59 cm): a mix
  of aluminium, G10 boards and cables (``ENDPLATE_MIX``, X0 44 g/cm^2, fitted between
  aluminium's 24 and plastic's 44: the fit runs to the plastic end), 2.5 g/cm^2 on average
  (fitted). Its areal density is not uniform (frame, cards, cables, gas plenum): per track it
  is the mean times a log-normal factor of width 0.45 (fitted: the spread of the real losses,
  which Landau straggling alone makes three times too narrow). The inner radius lies between
  4.0 cm (the real track that lost only 0.95 MeV/c passes the endplate there) and 7.9 cm (the
  innermost of those that lost 5-7);
- the forward drift chamber's planes (FDC, the 24 detector planes): each a copper-equivalent
  layer of 0.016 g/cm^2 (0.12 % of a radiation length) acting just after the state at the
  plane is recorded; fitted on the plane-to-plane kicks of px, py (0.39 and 0.32 MeV/c rms, 4
  of 44 beyond three times the core: the scattering tail) of the real track
  ``data/mlchallenge2_track3.csv``;
- the chamber gas (Ar/CO2) from the endplate on: mean Bethe loss only, 2.5 keV per cm;
- the scattering tail: 4.5 % of the crossings scatter 3.5 times wider (fitted, with the real
  track's kicks and the flights' 95 % region);
- the Landau tail is cut at 40 MeV per layer (``MAX_LAYER_LOSS``, in ``physics.delta_rays``;
  T_max is 100-400 MeV here): the rare larger losses would dominate the simulated variance of
  pz; the largest of the 31 real losses is 33 MeV/c.

``python -m tracklstm.physics.material`` prints the table of layers.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from tracklstm.constants import PLANE_Z
from tracklstm.physics.delta_rays import (
    ELECTRON_MASS,
    MAX_LAYER_LOSS,
    PION_MASS,
    pion_kinematics,
)

#: The Bethe constant K = 4 pi N_A r_e^2 m_e c^2 (GeV cm^2/mol).
BETHE_K: float = 0.307075e-3
#: Landau variates: the standard Landau mode, and the shift from the stable variate to Landau's.
LANDAU_MODE: float = -0.22278
_LANDAU_SHIFT: float = math.log(math.pi / 2.0)
#: Single-scattering tail of the angle distribution: share of crossings and relative width.
TAIL_WEIGHT: float = 0.045
TAIL_WIDTH: float = 3.5


@dataclass(frozen=True)
class Medium:
    """A material's constants (PDG atomic and nuclear properties tables)."""

    name: str
    z_over_a: float  # mol/g
    excitation_ev: float  # mean excitation energy I
    radiation_length: float  # X0, g/cm^2
    plasma_ev: float  # plasma energy, for the density effect

    def density_effect(self, log_bg: np.ndarray) -> np.ndarray:
        """delta/2 of the Bethe formula, high-energy form, never below 0."""
        return np.maximum(math.log(self.plasma_ev / self.excitation_ev) + log_bg - 0.5, 0.0)


ALUMINIUM = Medium("aluminium", 0.48181, 166.0, 24.01, 32.86)
MYLAR = Medium("mylar", 0.52037, 78.7, 39.95, 24.55)
COPPER = Medium("copper", 0.45636, 322.0, 12.86, 58.27)
ARGON_CO2 = Medium("argon-CO2", 0.46, 170.0, 20.0, 0.8)
POLYSTYRENE = Medium("polystyrene", 0.53768, 68.7, 43.79, 21.75)
#: Areal density (g/cm^2) of the material around the origin (see the module notes).
ORIGIN_REGION: float = 2.5
#: The CDC endplate with its readout: aluminium, G10 boards and cables (X0 between aluminium's
#: 24 and plastic's 44 g/cm^2, fitted; the other constants of a G10-aluminium mix).
ENDPLATE_MIX = Medium("endplate mix", 0.50, 120.0, 44.0, 28.0)


@dataclass(frozen=True)
class Layer:
    """One layer at ``z``: ``areal_density`` (g/cm^2 at normal incidence) of ``medium`` for the
    tracks at a radius in [r_min, r_max) there; ``spread``: log-normal width of its per-track
    areal density (0: uniform)."""

    name: str
    z: float
    medium: Medium
    areal_density: float
    r_min: float = 0.0
    r_max: float = math.inf
    spread: float = 0.0


def _kinematics(s: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|p|, path factor |p|/pz and beta^2 (pion) of the current states."""
    p2 = s[2] * s[2] + s[3] * s[3] + s[4] * s[4]
    p = np.sqrt(p2)
    return p, p / s[4], p2 / (p2 + PION_MASS * PION_MASS)


def bethe_mean_loss(medium: Medium, grams: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean energy lost (GeV) by a pion of momentum ``p`` crossing ``grams`` (g/cm^2)."""
    beta2, bg2, t_max = pion_kinematics(p)
    i_gev = medium.excitation_ev * 1e-9
    log_term = 0.5 * np.log(2 * ELECTRON_MASS * bg2 * t_max / (i_gev * i_gev))
    delta_half = medium.density_effect(0.5 * np.log(bg2))
    return BETHE_K * medium.z_over_a * grams / beta2 * (log_term - beta2 - delta_half)


def landau(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard Landau variates (mode ``LANDAU_MODE``), Chambers-Mallows-Stuck (alpha = 1)."""
    u = rng.uniform(-0.5 * math.pi, 0.5 * math.pi, n)
    w = rng.exponential(1.0, n)
    a = np.maximum(0.5 * math.pi + u, 1e-300)
    return a * np.tan(u) - np.log(0.5 * math.pi * w * np.cos(u) / a) + _LANDAU_SHIFT


def landau_loss(
    medium: Medium, grams: np.ndarray, p: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Energy lost (GeV), Landau-distributed about the PDG most probable value, capped at T_max."""
    beta2, bg2, t_max = pion_kinematics(p)
    i_gev = medium.excitation_ev * 1e-9
    xi = 0.5 * BETHE_K * medium.z_over_a * grams / beta2
    safe_xi = np.maximum(xi, 1e-30)
    delta = 2.0 * medium.density_effect(0.5 * np.log(bg2))
    mpv = xi * (
        np.log(2 * ELECTRON_MASS * bg2 / i_gev) + np.log(safe_xi / i_gev) + 0.2 - beta2 - delta
    )
    loss = mpv + xi * (landau(rng, len(p)) - LANDAU_MODE)
    return np.clip(loss, 0.0, np.minimum(mpv + t_max, MAX_LAYER_LOSS))


def highland(medium: Medium, grams: np.ndarray, p: np.ndarray, beta2: np.ndarray) -> np.ndarray:
    """Highland's theta_0 (rad) for ``grams`` of ``medium`` (path length included)."""
    x = np.maximum(grams / medium.radiation_length, 1e-12)
    return 0.0136 / (np.sqrt(beta2) * p) * np.sqrt(x) * (1.0 + 0.038 * np.log(x / beta2))


def _lose_and_scatter(
    s: list[np.ndarray], loss: np.ndarray, theta: np.ndarray, rng: np.random.Generator
) -> None:
    """Lower |p| by ``loss`` (GeV/c), then turn the direction by Gaussian angles of width
    ``theta`` in two planes normal to p (in place on ``s``)."""
    px, py, pz = s[2], s[3], s[4]
    n = len(px)
    pt2 = px * px + py * py
    p0 = np.sqrt(pt2 + pz * pz)
    p = np.maximum(p0 - loss, 0.05 * p0)
    pt = np.maximum(np.sqrt(pt2), 1e-300)
    sigma = theta * p0
    # unit vectors normal to p: e1 = (-py, px, 0)/pt, e2 = p x e1 / |p|
    t1 = rng.standard_normal(n) * sigma / pt
    t2 = rng.standard_normal(n) * sigma / (pt * p0)
    dx = px - t1 * py - t2 * pz * px
    dy = py + t1 * px - t2 * pz * py
    dz = pz + t2 * pt2
    scale = p / np.sqrt(dx * dx + dy * dy + dz * dz)
    s[2], s[3], s[4] = dx * scale, dy * scale, dz * scale


class Crossing:
    """One propagation's passage of ``n`` tracks through a ``Material``, drawing from ``rng``."""

    def __init__(self, material: Material, n: int, rng: np.random.Generator) -> None:
        self.material = material
        self.n = n
        self.rng = rng

    def travel(self, s: list[np.ndarray], z_from: float | np.ndarray, z_to: float) -> None:
        """The gas between ``z_from`` (one z, or one per track) and ``z_to``: its mean loss per
        cm of path from ``gas_start_z`` on (in place on ``s``: x, y, px, py, pz)."""
        start = self.material.gas_start_z
        if np.ndim(z_from) == 0:
            length: float | np.ndarray = max(0.0, z_to - max(float(z_from), start))
        else:
            length = np.clip(z_to - np.maximum(z_from, start), 0.0, None)
        if np.any(length > 0):
            p, path, beta2 = _kinematics(s)
            grams = self.material.gas_density * length * path
            loss = bethe_mean_loss(self.material.gas, grams, p) / np.sqrt(beta2)
            scale = np.maximum(1.0 - loss / p, 0.05)
            for k in (2, 3, 4):
                s[k] = s[k] * scale

    def act(self, s: list[np.ndarray], kind: int, share: float, here: np.ndarray | None) -> None:
        """Layer ``kind - 1``'s loss and scattering (in place on ``s``); ``here``: the tracks
        that have reached it (None: all). ``share`` is not used."""
        layer = self.material.layers[kind - 1]
        rng, n = self.rng, self.n
        p, path, beta2 = _kinematics(s)
        grams = layer.areal_density * path
        if layer.spread > 0:
            grams = grams * np.exp(layer.spread * rng.standard_normal(n) - 0.5 * layer.spread**2)
        r2 = s[0] * s[0] + s[1] * s[1]
        inside = (r2 >= layer.r_min**2) & (r2 < layer.r_max**2)
        if here is not None:
            inside &= here
        grams = np.where(inside, grams, 0.0)
        loss = landau_loss(layer.medium, grams, p, rng) / np.sqrt(beta2)
        theta = highland(layer.medium, grams, p, beta2)
        theta = np.where(rng.uniform(size=n) < TAIL_WEIGHT, TAIL_WIDTH * theta, theta)
        _lose_and_scatter(s, np.where(inside, loss, 0.0), np.where(inside, theta, 0.0), rng)


def _cdc_straws(total: float) -> tuple[Layer, ...]:
    zs = (75.0, 95.0, 115.0, 135.0, 155.0)
    return tuple(Layer("CDC straws", z, MYLAR, total / len(zs), 10.0, 56.0) for z in zs)


def _fdc_planes(grams: float) -> tuple[Layer, ...]:
    return tuple(Layer(f"FDC plane {i}", z, COPPER, grams) for i, z in enumerate(PLANE_Z[1:], 1))


@dataclass(frozen=True)
class Material:
    """The simulated detector's material: its layers along z and the gas (see the module notes)."""

    layers: tuple[Layer, ...] = field(
        default_factory=lambda: (
            Layer("target", 66.0, POLYSTYRENE, ORIGIN_REGION, 0.0, 1.5),
            Layer("around the target", 66.0, POLYSTYRENE, ORIGIN_REGION, 3.0),
            *_cdc_straws(1.0),
            Layer("CDC endplate", 167.0, ENDPLATE_MIX, 2.5, 6.0, 59.0, spread=0.45),
            *_fdc_planes(0.016),
        )
    )
    gas: Medium = ARGON_CO2
    gas_density: float = 1.6e-3  # g/cm^3
    gas_start_z: float = 167.0

    def events(self, z_lo: float, z_hi: float) -> list[tuple[float, int, float]]:
        """``(z, kind, 1.0)`` of the layers with ``z_lo <= z <= z_hi``; kind = 1 + layer index."""
        return [(ly.z, i + 1, 1.0) for i, ly in enumerate(self.layers) if z_lo <= ly.z <= z_hi]

    def crossing(self, n: int, rng: np.random.Generator) -> Crossing:
        """A passage of ``n`` tracks through this material, drawing from ``rng``."""
        return Crossing(self, n, rng)


#: The material of the simulated GlueX-like detector.
DETECTOR_MATERIAL = Material()


def table(material: Material = DETECTOR_MATERIAL) -> str:
    """The layers as a Markdown table: z, region, medium, g/cm^2, % X0, radii, spread."""
    rows = ["| z (cm) | layer | medium | g/cm^2 | % X0 | radius (cm) | spread |", "|" + "---|" * 7]
    for ly in material.layers:
        radius = f"{ly.r_min:g} to {ly.r_max:g}"
        x0 = 100 * ly.areal_density / ly.medium.radiation_length
        rows.append(
            f"| {ly.z:g} | {ly.name} | {ly.medium.name} | {ly.areal_density:.4g} | "
            f"{x0:.3g} | {radius} | {ly.spread:g} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
