"""Simulated charged tracks in the GlueX solenoid, written in the training-file format.

The simulator stands in for the challenge's training file where that file is not available. Each
track starts at the origin plane (z = 65 cm) and is followed through the magnetic field to the 24
detector planes (``constants.PLANE_Z``). Units: cm and GeV/c; the field in T.

Physics model
-------------
* **Field.** An axisymmetric solenoid field given by its on-axis profile ``Bz(z)`` (a smooth cubic
  Hermite curve through a few knots) and the radial part that ``div B = 0`` requires,
  ``Br = -(r/2) dBz/dz``, i.e. ``Bx = -(x/2) dBz/dz`` and ``By = -(y/2) dBz/dz``. This field is
  exactly ``curl A`` with ``A_phi = r Bz(z) / 2``, so without material a track's canonical angular
  momentum about the axis, ``x py - y px + (c q / 2) Bz(z) (x^2 + y^2)``, is conserved (Busch's
  theorem); the tests use that.
* **Calibration.** The knots were fitted by least squares to the real track in
  ``tracklstm/data/mlchallenge2_track3.csv`` (each measured state propagated to the next plane
  without material; residuals weighted 0.05 mm in x, y and 0.3 MeV/c in px, py, with a
  smoothness penalty and a 4.5 MeV/c allowance for the scattering between z = 65 and the first
  plane). The fitted ``Bz`` rises from 1.57 T at z = 65 to 2.0 T near z = 265-305 and falls to
  1.71 T at 345, as expected if the magnet's downstream end lies somewhat beyond the last plane.
  The remaining plane-to-plane residuals (0.35 MeV/c rms in px, py) are the size of the multiple
  scattering.
  Estimating the field from the turning of (px, py) alone, as the reference notes do, gives
  about 2.6, 2.3, 2.1 and 0 T in the four regions for that track; the radial field explains the
  difference: where ``Bz`` changes along z at 20-25 cm from the axis, ``Br`` kicks the track
  sideways by several MeV/c, which adds to or cancels the turning due to ``Bz``.
* **Charge.** One sign, chosen so that the momentum direction turns clockwise seen from +z (phi
  decreasing with z) as in the real data.
* **Material.** Between the origin and the first plane the track crosses heavy material (gas,
  straws, an endplate): the momentum falls by 5-14 MeV/c (Moyal-distributed loss times a
  per-track geometry factor) and the track scatters by about 4.5 MeV/c per transverse component.
  Each detector plane costs about 0.016 MeV/c (Moyal-distributed) and scatters by 0.35 MeV/c per
  component; the gas between planes costs 2.2 keV/c per cm. Losses and scattering grow with the
  path length through the material (|p|/pz) and scattering with 1/beta (pion mass). A plane's
  material acts just after the state at that plane is recorded.
* **Starting states and acceptance.** At z = 65: (x, y) uniform in a disc of radius 30 cm, pz
  uniform in [0.95, 2.6] GeV/c, pt uniform in [0.014, 0.45] GeV/c, phi uniform. A track is kept
  only if it stays within the detector planes' active radius (48.5 cm) at every plane; the kept
  tracks are therefore biased towards low pt and small radii, as in a real detector.

The integrator is a fourth-order Runge-Kutta in z over all tracks at once (numpy), with steps of
at most ``MAX_STEP_CM``; steps end exactly on the planes, the material layers and the field
knots (the profile is a cubic between knots, so the integrator keeps its fourth order: 5 cm
steps are accurate to about 1e-6 cm and 2e-9 GeV/c over the whole track).
"""

from __future__ import annotations

import argparse
import bisect
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as _dc_field
from typing import TextIO

import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import COLUMNS, N_FEATURES, N_PLANES, PLANE_Z
from tracklstm.io import atomic_path

log = logging.getLogger("tracklstm.simulate")

#: Momentum (GeV/c) per unit charge, tesla and centimetre of radius: p = C_LIGHT * q * B * R.
C_LIGHT: float = 0.299792458e-2
#: The charge of the simulated tracks (units of e). With Bz > 0 it makes phi decrease with z,
#: which is the turning seen in every real track checked.
DEFAULT_CHARGE: float = 1.0
#: Mass (GeV/c^2) used for beta in energy loss and scattering: the charged pion.
PION_MASS: float = 0.13957

#: z (cm) of the knots of the on-axis field profile, and Bz (T) there (fitted to the real track).
FIELD_Z_KNOTS: tuple[float, ...] = (65.0, 105.0, 145.0, 185.0, 225.0, 265.0, 305.0, 345.0)
FIELD_BZ_KNOTS: tuple[float, ...] = (1.566, 1.690, 1.793, 1.856, 1.940, 2.000, 1.972, 1.707)

#: Longest Runge-Kutta step (cm).
MAX_STEP_CM: float = 5.0

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

#: Starting states at the origin plane.
ORIGIN_RADIUS_CM: float = 30.0
PZ_RANGE: tuple[float, float] = (0.95, 2.6)
PT_RANGE: tuple[float, float] = (0.014, 0.45)
#: A kept track is within this radius (cm) of the axis at every detector plane.
ACCEPT_RADIUS_CM: float = 48.5
#: Candidate tracks per block; fixed so that a shard's first n tracks do not depend on how many
#: are asked for.
BLOCK_SIZE: int = 8192
#: Rows formatted per write in ``write_csv``.
CSV_CHUNK_ROWS: int = 4096

_EPS_Z = 1e-9


class SimulationError(ValueError):
    """Bad input to the simulator (shapes, values, arguments)."""


@dataclass(frozen=True)
class SolenoidField:
    """An axisymmetric field from its on-axis profile Bz(z) and the first-order radial part.

    ``Bz(z)`` is a cubic Hermite curve through the knots (tangents from finite differences), so
    Bz and dBz/dz are continuous between the first and last knot; outside them Bz is held at the
    end value (and dBz/dz is 0).
    """

    z_knots: tuple[float, ...] = FIELD_Z_KNOTS
    bz_knots: tuple[float, ...] = FIELD_BZ_KNOTS
    _z: np.ndarray = _dc_field(init=False, repr=False, compare=False)
    _b: np.ndarray = _dc_field(init=False, repr=False, compare=False)
    _m: np.ndarray = _dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        z = np.asarray(self.z_knots, dtype=np.float64)
        b = np.asarray(self.bz_knots, dtype=np.float64)
        if z.ndim != 1 or z.shape != b.shape or len(z) < 2:
            raise SimulationError("field knots: need two equal-length sequences of >= 2 values")
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(b)) and np.all(np.diff(z) > 0)):
            raise SimulationError("field knots: z must be finite and increasing, Bz finite")
        object.__setattr__(self, "z_knots", tuple(float(v) for v in z))
        object.__setattr__(self, "bz_knots", tuple(float(v) for v in b))
        object.__setattr__(self, "_z", z)
        object.__setattr__(self, "_b", b)
        object.__setattr__(self, "_m", np.gradient(b, z))

    def profile(self, z: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """On-axis Bz (T) and dBz/dz (T/cm) at ``z`` (cm)."""
        zs = np.asarray(z, dtype=np.float64)
        inside = (zs >= self._z[0]) & (zs <= self._z[-1])
        zc = np.clip(zs, self._z[0], self._z[-1])
        i = np.clip(np.searchsorted(self._z, zc, side="right") - 1, 0, len(self._z) - 2)
        z0, h = self._z[i], self._z[i + 1] - self._z[i]
        b0, b1, m0, m1 = self._b[i], self._b[i + 1], self._m[i] * h, self._m[i + 1] * h
        t = (zc - z0) / h
        t2 = t * t
        t3 = t2 * t
        bz = (2 * t3 - 3 * t2 + 1) * b0 + (t3 - 2 * t2 + t) * m0
        bz = bz + (3 * t2 - 2 * t3) * b1 + (t3 - t2) * m1
        dbz = (6 * t2 - 6 * t) * (b0 - b1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1
        dbz = np.where(inside, dbz / h, 0.0)
        return bz, dbz

    def profile_scalar(self, z: float) -> tuple[float, float]:
        """``profile`` for one z, without numpy overhead (the integrator's hot path)."""
        zk = self.z_knots
        if z < zk[0] or z > zk[-1]:
            end = 0 if z < zk[0] else len(zk) - 1
            return float(self._b[end]), 0.0
        i = min(bisect.bisect_right(zk, z) - 1, len(zk) - 2)
        h = zk[i + 1] - zk[i]
        t = (z - zk[i]) / h
        b0, b1 = float(self._b[i]), float(self._b[i + 1])
        m0, m1 = float(self._m[i]) * h, float(self._m[i + 1]) * h
        t2 = t * t
        t3 = t2 * t
        bz = (2 * t3 - 3 * t2 + 1) * b0 + (t3 - 2 * t2 + t) * m0 + (3 * t2 - 2 * t3) * b1
        bz += (t3 - t2) * m1
        dbz = (6 * t2 - 6 * t) * (b0 - b1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1
        return bz, dbz / h

    def __call__(
        self, x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Bx, By, Bz) in T at (x, y, z) in cm: Bz(z) and Br = -(r/2) dBz/dz."""
        bz, dbz = self.profile(z)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return -0.5 * x * dbz, -0.5 * y * dbz, bz + 0.0 * x + 0.0 * y


#: The calibrated field of the GlueX-like solenoid.
GLUEX_FIELD = SolenoidField()


# --------------------------------------------------------------------------------------------
# Integrator


def _derivatives(
    x: np.ndarray,
    y: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    pz: np.ndarray,
    bz: float | np.ndarray,
    dbz: float | np.ndarray,
    kq: float | np.ndarray,
) -> tuple[np.ndarray, ...]:
    """d/dz of (x, y, px, py, pz): dp/dz = c q (p x B) / pz, dx/dz = px / pz."""
    inv = 1.0 / pz
    a = kq * inv
    hg = 0.5 * dbz
    t = hg * pz
    # Bx = -hg x, By = -hg y
    dpx = a * (py * bz + t * y)
    dpy = -a * (px * bz + t * x)
    dpz = (a * hg) * (py * x - px * y)
    return px * inv, py * inv, dpx, dpy, dpz


def _advance(
    s: list[np.ndarray],
    z_from: float | np.ndarray,
    z_to: float,
    fld: SolenoidField,
    kq: float | np.ndarray,
    max_step: float,
) -> list[np.ndarray]:
    """Runge-Kutta 4 from ``z_from`` (common scalar or per-track array) to ``z_to``."""
    span = z_to - z_from
    longest = float(np.max(span))
    if longest <= 0.0:
        return s
    n_steps = max(1, math.ceil(longest / max_step - 1e-9))
    h = span / n_steps
    scalar = np.ndim(z_from) == 0
    x, y, px, py, pz = s
    for i in range(n_steps):
        z0 = z_from + i * h
        if scalar:
            b0, g0 = fld.profile_scalar(float(z0))
            bm, gm = fld.profile_scalar(float(z0 + 0.5 * h))
            b1, g1 = fld.profile_scalar(float(z0 + h))
        else:
            b0, g0 = fld.profile(z0)
            bm, gm = fld.profile(z0 + 0.5 * h)
            b1, g1 = fld.profile(z0 + h)
        hh = 0.5 * h
        k1 = _derivatives(x, y, px, py, pz, b0, g0, kq)
        k2 = _derivatives(
            x + hh * k1[0],
            y + hh * k1[1],
            px + hh * k1[2],
            py + hh * k1[3],
            pz + hh * k1[4],
            bm,
            gm,
            kq,
        )
        k3 = _derivatives(
            x + hh * k2[0],
            y + hh * k2[1],
            px + hh * k2[2],
            py + hh * k2[3],
            pz + hh * k2[4],
            bm,
            gm,
            kq,
        )
        k4 = _derivatives(
            x + h * k3[0],
            y + h * k3[1],
            px + h * k3[2],
            py + h * k3[3],
            pz + h * k3[4],
            b1,
            g1,
            kq,
        )
        w = h / 6.0
        x = x + w * (k1[0] + 2.0 * (k2[0] + k3[0]) + k4[0])
        y = y + w * (k1[1] + 2.0 * (k2[1] + k3[1]) + k4[1])
        px = px + w * (k1[2] + 2.0 * (k2[2] + k3[2]) + k4[2])
        py = py + w * (k1[3] + 2.0 * (k2[3] + k3[3]) + k4[3])
        pz = pz + w * (k1[4] + 2.0 * (k2[4] + k3[4]) + k4[4])
    return [x, y, px, py, pz]


# --------------------------------------------------------------------------------------------
# Material


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


# --------------------------------------------------------------------------------------------
# Propagation


def _check_states(states: np.ndarray, z: np.ndarray) -> None:
    if states.ndim != 2 or states.shape[1] != N_FEATURES:
        raise SimulationError(f"states: expected shape (n, 6), got {states.shape}")
    if not np.all(np.isfinite(states)):
        bad = int(np.argmax(~np.all(np.isfinite(states), axis=1)))
        raise SimulationError(f"states: row {bad} is not finite: {states[bad].tolist()}")
    if np.any(states[:, 5] <= 0):
        bad = int(np.argmax(states[:, 5] <= 0))
        raise SimulationError(f"states: row {bad} has pz <= 0 ({states[bad, 5]})")
    if z.ndim != 1 or len(z) == 0 or not np.all(np.isfinite(z)):
        raise SimulationError("z: expected a non-empty 1-D sequence of finite values")
    if np.any(np.diff(z) <= 0):
        raise SimulationError(f"z: planes must be strictly increasing, got {z.tolist()}")
    if len(states) and float(states[:, 2].max()) > z[0] + _EPS_Z:
        bad = int(np.argmax(states[:, 2]))
        raise SimulationError(
            f"states: row {bad} starts at z={states[bad, 2]}, beyond the first plane z={z[0]}"
        )


def propagate(
    states: np.ndarray,
    z: Sequence[float] | np.ndarray,
    *,
    material: bool = True,
    rng: np.random.Generator | None = None,
    charge: float | np.ndarray = DEFAULT_CHARGE,
    field: SolenoidField = GLUEX_FIELD,
    max_step: float = MAX_STEP_CM,
) -> np.ndarray:
    """Follow tracks through the field to the planes ``z``; return (n, len(z), 6) states.

    ``states`` holds (x, y, z, px, py, pz) per track (cm, GeV/c), each at its own z, which must
    not be beyond ``z[0]``. With ``material=False`` nothing but the field acts and the result is
    deterministic; with ``material=True`` energy loss and multiple scattering are drawn from
    ``rng`` (a fresh unseeded generator if None). A state recorded at a detector plane is the
    state before that plane's material. ``charge`` is a scalar or one value per track (units of
    e); the default turns the tracks like the real data.
    """
    s_in = np.asarray(states, dtype=np.float64)
    zt = np.asarray(z, dtype=np.float64)
    _check_states(s_in, zt)
    if not max_step > 0:
        raise SimulationError(f"max_step must be > 0, got {max_step}")
    n = len(s_in)
    out = np.empty((n, len(zt), N_FEATURES), dtype=np.float64)
    if n == 0:
        return out
    kq = C_LIGHT * np.asarray(charge, dtype=np.float64)
    if kq.ndim == 1 and kq.shape != (n,):
        raise SimulationError(f"charge: expected a scalar or {n} values, got {kq.shape}")
    if material and rng is None:
        rng = np.random.default_rng()

    # Events along z, in order; at equal z a plane is recorded (kind 0) before the material
    # there acts (1: upstream layer, 2: detector plane); 3 only ends a step (field knot).
    events: list[tuple[float, int, float]] = [(float(v), 0, 0.0) for v in zt]
    z_lo, z_hi = float(s_in[:, 2].min()), float(zt[-1])
    if material:
        for zl, share in UPSTREAM_LAYERS:
            if z_lo - _EPS_Z <= zl <= z_hi + _EPS_Z:
                events.append((zl, 1, share))
        for zl in PLANE_Z[1:]:
            if z_lo - _EPS_Z <= zl <= z_hi + _EPS_Z:
                events.append((zl, 2, 0.0))
    # Field knots end steps too: the profile is a cubic between knots, so RK4 keeps its order.
    events.extend((zk, 3, 0.0) for zk in field.z_knots if z_lo < zk < z_hi)
    events.sort(key=lambda e: (e[0], e[1]))

    s = [s_in[:, 0].copy(), s_in[:, 1].copy(), s_in[:, 3].copy(), s_in[:, 4].copy()]
    s.append(s_in[:, 5].copy())
    z_cur = s_in[:, 2].copy()
    # While every track is at the same z (the usual case) that z is kept as a plain float.
    common: float | None = float(z_cur[0]) if np.all(z_cur == z_cur[0]) else None
    upstream_loss: np.ndarray | None = None
    target = 0
    for z_event, kind, share in events:
        if common is not None:
            gas: float | np.ndarray = 0.0
            if common < z_event - _EPS_Z:
                s = _advance(s, common, z_event, field, _sub(kq, None), max_step)
                gas = max(0.0, z_event - max(common, GAS_START_Z))
                common = z_event
            here: np.ndarray | None = None
        else:
            moving = z_cur < z_event - _EPS_Z
            gas = 0.0
            if moving.any():
                idx = np.nonzero(moving)[0]
                zsub = z_cur[idx]
                zf = zsub[0] if np.all(zsub == zsub[0]) else zsub
                sub = _advance([a[idx] for a in s], zf, z_event, field, _sub(kq, idx), max_step)
                for a, b in zip(s, sub, strict=True):
                    a[idx] = b
                gas = np.clip(z_event - np.maximum(z_cur, GAS_START_Z), 0.0, None)
                gas = np.where(moving, gas, 0.0)
                z_cur = np.where(moving, z_event, z_cur)
            here = z_cur <= z_event + _EPS_Z  # tracks that started at or before this z
            if here.all():
                common, here = z_event, None
        if material and np.any(gas > 0):
            p, path, inv_beta = _kinematics(s)
            _lose(s, p, GAS_LOSS_PER_CM * gas * path * inv_beta)
        if kind == 3:
            continue
        if kind == 0:
            out[:, target, 0] = s[0]
            out[:, target, 1] = s[1]
            out[:, target, 2] = z_event
            out[:, target, 3] = s[2]
            out[:, target, 4] = s[3]
            out[:, target, 5] = s[4]
            target += 1
            continue
        assert rng is not None
        _, path, inv_beta = _kinematics(s)
        if kind == 1:
            if upstream_loss is None:
                lo, hi = UPSTREAM_GEOMETRY
                geometry = rng.uniform(lo, hi, n)
                upstream_loss = geometry * (
                    UPSTREAM_LOSS_MPV + UPSTREAM_LOSS_WIDTH * _moyal(rng, n)
                )
            loss = (share * inv_beta) * upstream_loss * path
            sigma = (UPSTREAM_SCATTER * math.sqrt(share)) * np.sqrt(path) * inv_beta
        else:
            loss = (PLANE_LOSS_MPV + PLANE_LOSS_WIDTH * _moyal(rng, n)) * path * inv_beta
            sigma = PLANE_SCATTER * np.sqrt(path) * inv_beta
        if here is not None:
            loss = np.where(here, loss, 0.0)
            sigma = np.where(here, sigma, 0.0)
        _lose_and_scatter(s, loss, sigma, rng)
    return out


def _sub(kq: np.ndarray, idx: np.ndarray | None) -> float | np.ndarray:
    if kq.ndim == 0:
        return float(kq)
    return kq if idx is None else kq[idx]


# --------------------------------------------------------------------------------------------
# Track generation


def sample_origins(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 6) starting states at the origin plane (see the module notes for the distributions)."""
    r = ORIGIN_RADIUS_CM * np.sqrt(rng.uniform(0.0, 1.0, n))
    a = rng.uniform(0.0, 2.0 * np.pi, n)
    pz = rng.uniform(*PZ_RANGE, n)
    pt = rng.uniform(*PT_RANGE, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    states = np.empty((n, N_FEATURES), dtype=np.float64)
    states[:, 0] = r * np.cos(a)
    states[:, 1] = r * np.sin(a)
    states[:, 2] = PLANE_Z[0]
    states[:, 3] = pt * np.cos(phi)
    states[:, 4] = pt * np.sin(phi)
    states[:, 5] = pz
    return states


def accepted(tracks: np.ndarray) -> np.ndarray:
    """Boolean mask of tracks that are finite and within the active radius at every plane."""
    r2 = tracks[:, 1:, 0] ** 2 + tracks[:, 1:, 1] ** 2
    finite = np.all(np.isfinite(tracks), axis=(1, 2))
    with np.errstate(invalid="ignore"):
        inside = np.all(r2 <= ACCEPT_RADIUS_CM**2, axis=1) & np.all(tracks[:, :, 5] > 0, axis=1)
    return finite & inside


def _check_counts(n_tracks: int, seed: int, shard: int) -> None:
    if n_tracks < 0:
        raise SimulationError(f"n_tracks must be >= 0, got {n_tracks}")
    if seed < 0 or shard < 0:
        raise SimulationError(f"seed and shard must be >= 0, got seed={seed} shard={shard}")


def iter_tracks(n_tracks: int, *, seed: int, shard: int = 0) -> Iterator[np.ndarray]:
    """Yield blocks of (m, 25, 6) accepted tracks, n_tracks in all (bounded memory)."""
    _check_counts(n_tracks, seed, shard)
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard]))
    plane_z = np.asarray(PLANE_Z, dtype=np.float64)
    left = n_tracks
    while left > 0:
        origins = sample_origins(BLOCK_SIZE, rng)
        tracks = propagate(origins, plane_z, material=True, rng=rng)
        kept = tracks[accepted(tracks)][:left]
        kept[:, :, 2] = plane_z
        left -= len(kept)
        if len(kept):
            yield kept


def simulate_tracks(n_tracks: int, *, seed: int, shard: int = 0) -> np.ndarray:
    """(n_tracks, 25, 6) float64 simulated tracks at ``constants.PLANE_Z``.

    Deterministic for a given (seed, shard); shards are independent streams
    (``SeedSequence([seed, shard])``), and the first k tracks of a shard do not depend on
    ``n_tracks``.
    """
    _check_counts(n_tracks, seed, shard)
    out = np.empty((n_tracks, N_PLANES, N_FEATURES), dtype=np.float64)
    done = 0
    for block in iter_tracks(n_tracks, seed=seed, shard=shard):
        out[done : done + len(block)] = block
        done += len(block)
    return out


# --------------------------------------------------------------------------------------------
# CSV output


def _write_header(fh: TextIO) -> None:
    fh.write(",".join(COLUMNS) + "\n")


def _write_rows(fh: TextIO, tracks: np.ndarray) -> None:
    """Write tracks as CSV rows with 6 significant digits, formatted in C in chunks of rows."""
    flat = tracks.reshape(len(tracks), -1)
    row = ",".join(["%.6g"] * flat.shape[1]) + "\n"
    for start in range(0, len(flat), CSV_CHUNK_ROWS):
        chunk = flat[start : start + CSV_CHUNK_ROWS]
        fh.write((row * len(chunk)) % tuple(chunk.ravel().tolist()))


def _check_tracks(tracks: np.ndarray) -> np.ndarray:
    arr = np.asarray(tracks, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (N_PLANES, N_FEATURES):
        raise SimulationError(
            f"tracks: expected shape (n, {N_PLANES}, {N_FEATURES}), got {np.shape(tracks)}"
        )
    return arr


def write_csv(tracks: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write tracks (n, 25, 6) in the training-file format (header + 150 values per row)."""
    arr = _check_tracks(tracks)
    with atomic_path(path) as tmp, open(tmp, "w", newline="\n") as fh:
        _write_header(fh)
        _write_rows(fh, arr)


def simulate_to_csv(n_tracks: int, path: str | os.PathLike[str], *, seed: int, shard: int) -> int:
    """Simulate and write block by block (memory bounded); return the number of tracks."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="\n") as fh:
        _write_header(fh)
        for block in iter_tracks(n_tracks, seed=seed, shard=shard):
            _write_rows(fh, block)
            count += len(block)
    return count


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = stage_cli.parser("tracklstm simulate", __doc__)
    p.add_argument("--n-tracks", type=int, required=True, help="number of tracks to write")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--shard", type=int, default=0, help="shard index: independent stream (>= 0)")
    p.add_argument("--out", required=True, help="output CSV path (written atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI: ``tracklstm simulate --n-tracks N --seed S [--shard K] --out PATH.csv``."""
    parser = _parser()
    args = parser.parse_args(argv)

    def body() -> None:
        if args.n_tracks < 1 or args.seed < 0 or args.shard < 0:
            raise SimulationError(
                "invalid arguments: need --n-tracks >= 1, --seed >= 0, --shard >= 0 "
                f"(got {args.n_tracks}, {args.seed}, {args.shard})"
            )
        start = time.perf_counter()
        count = simulate_to_csv(args.n_tracks, args.out, seed=args.seed, shard=args.shard)
        seconds = time.perf_counter() - start
        log.info(
            "wrote %d tracks (seed %d, shard %d) to %s in %.2f s (%.0f tracks/s)",
            count,
            args.seed,
            args.shard,
            args.out,
            seconds,
            count / seconds if seconds > 0 else float("inf"),
        )

    return stage_cli.run(body, log, errors=(OSError, SimulationError))


if __name__ == "__main__":
    raise SystemExit(main())
