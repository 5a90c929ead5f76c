"""The GlueX-like solenoid: its field map and a Runge-Kutta propagation of tracks through it.

The physics half of the simulator (``tracklstm.data.simulate``), and the field-only propagation of
the baselines (``tracklstm.physics.baselines.field_only``): a track's state (x, y, z, px, py, pz)
is followed in z through the field, with the material of ``tracklstm.physics.material`` acting on
the way when one is given. Units: cm and GeV/c; the field in T.

* **Field.** An axisymmetric solenoid field given by its on-axis profile ``Bz(z)`` (a smooth cubic
  Hermite curve through a few knots) and the radial part that ``div B = 0`` requires,
  ``Br = -(r/2) dBz/dz``, i.e. ``Bx = -(x/2) dBz/dz`` and ``By = -(y/2) dBz/dz``. This field is
  exactly ``curl A`` with ``A_phi = r Bz(z) / 2``, so without material a track's canonical angular
  momentum about the axis, ``x py - y px + (c q / 2) Bz(z) (x^2 + y^2)``, is conserved (Busch's
  theorem); the tests use that.
* **Calibration.** The knots were fitted by least squares (Gauss-Newton, with a smoothness
  penalty; ``benchmarks/fit_field.py`` repeats the fit) to two sets of real tracks at once: the
  real track in ``tracklstm/data/mlchallenge2_track3.csv``, each measured state propagated to
  the next plane without material (residuals weighted 17 microns in x, y and 0.12 MeV/c in px,
  py), and the 31 real flights from z = 65 to plane 24 in
  ``tracklstm/data/mlchallenge2_origin_plane24.csv``, each weighted by the simulator's own
  covariance there (material included). The flights were added in 2026: the former fit, on the
  one track only, turned them about 4 % too little. The two sets pull slightly apart (the
  flights alone want a field 6 % stronger in the detector planes, which the one track's
  plane-to-plane steps refuse); the weights are the compromise, and an axisymmetric field to
  first order in r is the limit. The fitted ``Bz`` is 1.67 T at z = 65, 1.89-1.95 T from 105
  to 185, 2.03 T near 265 and 1.71 T at 345, as expected if the magnet's downstream end lies
  somewhat beyond the last plane.
  The remaining plane-to-plane residuals (0.35 MeV/c rms in px, py) are the size of the multiple
  scattering.
  Estimating the field from the turning of (px, py) alone, as the reference notes do, gives
  about 2.6, 2.3, 2.1 and 0 T in the four regions for that track; the radial field explains the
  difference: where ``Bz`` changes along z at 20-25 cm from the axis, ``Br`` kicks the track
  sideways by several MeV/c, which adds to or cancels the turning due to ``Bz``.
* **Charge.** One sign, chosen so that the momentum direction turns clockwise seen from +z (phi
  decreasing with z) as in the real data.

The integrator is a fourth-order Runge-Kutta in z over all tracks at once (numpy), with steps of
at most ``MAX_STEP_CM``; steps end exactly on the planes, the material layers and the field
knots (the profile is a cubic between knots, so the integrator keeps its fourth order: 5 cm
steps are accurate to about 1e-6 cm and 2e-9 GeV/c over the whole track).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as _dc_field
from typing import Protocol

import numpy as np

from tracklstm.constants import N_FEATURES

#: Momentum (GeV/c) per unit charge, tesla and centimetre of radius: p = C_LIGHT * q * B * R.
C_LIGHT: float = 0.299792458e-2
#: The charge of the simulated tracks (units of e). With Bz > 0 it makes phi decrease with z,
#: which is the turning seen in every real track checked.
DEFAULT_CHARGE: float = 1.0

#: z (cm) of the knots of the on-axis field profile, and Bz (T) there (fitted to the real track).
FIELD_Z_KNOTS: tuple[float, ...] = (65.0, 105.0, 145.0, 185.0, 225.0, 265.0, 305.0, 345.0)
FIELD_BZ_KNOTS: tuple[float, ...] = (1.671, 1.890, 1.948, 1.893, 1.971, 2.030, 1.991, 1.708)

#: Longest Runge-Kutta step (cm).
MAX_STEP_CM: float = 5.0

_EPS_Z = 1e-9
#: Kinds of the events along z that are not the material's: a plane where the state is recorded
#: (first at its z), and a field knot, which only ends a Runge-Kutta step (last).
RECORD: int = 0
FIELD_KNOT: int = 99


class PropagationError(ValueError):
    """Bad input to the propagation or the field (shapes, values, arguments)."""


class Crossing(Protocol):
    """One propagation's passage through a material (``Material.crossing``)."""

    def travel(self, s: list[np.ndarray], z_from: float | np.ndarray, z_to: float) -> None:
        """Act on the states ``s`` (x, y, px, py, pz; in place) between two z."""

    def act(self, s: list[np.ndarray], kind: int, share: float, here: np.ndarray | None) -> None:
        """Act on ``s`` at one of the material's events; ``here``: the tracks that reached it."""


class Material(Protocol):
    """What the propagation asks of a material (``tracklstm.physics.material.Material``): its
    events along z, ``(z, kind >= 1, share)``, and a passage of n tracks through it."""

    def events(self, z_lo: float, z_hi: float) -> list[tuple[float, int, float]]: ...

    def crossing(self, n: int, rng: np.random.Generator) -> Crossing: ...


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
            raise PropagationError("field knots: need two equal-length sequences of >= 2 values")
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(b)) and np.all(np.diff(z) > 0)):
            raise PropagationError("field knots: z must be finite and increasing, Bz finite")
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
# Propagation


def _check_states(states: np.ndarray, z: np.ndarray) -> None:
    if states.ndim != 2 or states.shape[1] != N_FEATURES:
        raise PropagationError(f"states: expected shape (n, 6), got {states.shape}")
    if not np.all(np.isfinite(states)):
        bad = int(np.argmax(~np.all(np.isfinite(states), axis=1)))
        raise PropagationError(f"states: row {bad} is not finite: {states[bad].tolist()}")
    if np.any(states[:, 5] <= 0):
        bad = int(np.argmax(states[:, 5] <= 0))
        raise PropagationError(f"states: row {bad} has pz <= 0 ({states[bad, 5]})")
    if z.ndim != 1 or len(z) == 0 or not np.all(np.isfinite(z)):
        raise PropagationError("z: expected a non-empty 1-D sequence of finite values")
    if np.any(np.diff(z) <= 0):
        raise PropagationError(f"z: planes must be strictly increasing, got {z.tolist()}")
    if len(states) and float(states[:, 2].max()) > z[0] + _EPS_Z:
        bad = int(np.argmax(states[:, 2]))
        raise PropagationError(
            f"states: row {bad} starts at z={states[bad, 2]}, beyond the first plane z={z[0]}"
        )


def propagate(
    states: np.ndarray,
    z: Sequence[float] | np.ndarray,
    *,
    material: Material | None = None,
    rng: np.random.Generator | None = None,
    charge: float | np.ndarray = DEFAULT_CHARGE,
    field: SolenoidField = GLUEX_FIELD,
    max_step: float = MAX_STEP_CM,
) -> np.ndarray:
    """Follow tracks through the field to the planes ``z``; return (n, len(z), 6) states.

    ``states`` holds (x, y, z, px, py, pz) per track (cm, GeV/c), each at its own z, which must
    not be beyond ``z[0]``. Without ``material`` nothing but the field acts and the result is
    deterministic; with one (``tracklstm.physics.material``) its energy loss and multiple
    scattering are drawn from ``rng`` (a fresh unseeded generator if None). A state recorded at
    a detector plane is the state before that plane's material. ``charge`` is a scalar or one
    value per track (units of e); the default turns the tracks like the real data.
    """
    s_in = np.asarray(states, dtype=np.float64)
    zt = np.asarray(z, dtype=np.float64)
    _check_states(s_in, zt)
    if not max_step > 0:
        raise PropagationError(f"max_step must be > 0, got {max_step}")
    n = len(s_in)
    out = np.empty((n, len(zt), N_FEATURES), dtype=np.float64)
    if n == 0:
        return out
    kq = C_LIGHT * np.asarray(charge, dtype=np.float64)
    if kq.ndim == 1 and kq.shape != (n,):
        raise PropagationError(f"charge: expected a scalar or {n} values, got {kq.shape}")
    crossing = None
    if material is not None:
        crossing = material.crossing(n, np.random.default_rng() if rng is None else rng)

    # Events along z, in order; at equal z a plane is recorded (kind 0) before the material
    # there acts (the material's own kinds, 1 and up); FIELD_KNOT only ends a step.
    events: list[tuple[float, int, float]] = [(float(v), RECORD, 0.0) for v in zt]
    z_lo, z_hi = float(s_in[:, 2].min()), float(zt[-1])
    if material is not None:
        events += material.events(z_lo - _EPS_Z, z_hi + _EPS_Z)
    # Field knots end steps too: the profile is a cubic between knots, so RK4 keeps its order.
    events.extend((zk, FIELD_KNOT, 0.0) for zk in field.z_knots if z_lo < zk < z_hi)
    events.sort(key=lambda e: (e[0], e[1]))

    s = [s_in[:, 0].copy(), s_in[:, 1].copy(), s_in[:, 3].copy(), s_in[:, 4].copy()]
    s.append(s_in[:, 5].copy())
    z_cur = s_in[:, 2].copy()
    # While every track is at the same z (the usual case) that z is kept as a plain float.
    common: float | None = float(z_cur[0]) if np.all(z_cur == z_cur[0]) else None
    target = 0
    for z_event, kind, share in events:
        if common is not None:
            z_from: float | np.ndarray = z_event
            if common < z_event - _EPS_Z:
                s = _advance(s, common, z_event, field, _sub(kq, None), max_step)
                z_from, common = common, z_event
            here: np.ndarray | None = None
        else:
            moving = z_cur < z_event - _EPS_Z
            z_from = z_event
            if moving.any():
                idx = np.nonzero(moving)[0]
                zsub = z_cur[idx]
                zf = zsub[0] if np.all(zsub == zsub[0]) else zsub
                sub = _advance([a[idx] for a in s], zf, z_event, field, _sub(kq, idx), max_step)
                for a, b in zip(s, sub, strict=True):
                    a[idx] = b
                z_from = np.where(moving, z_cur, z_event)
                z_cur = np.where(moving, z_event, z_cur)
            here = z_cur <= z_event + _EPS_Z  # tracks that started at or before this z
            if here.all():
                common, here = z_event, None
        if crossing is not None:
            crossing.travel(s, z_from, z_event)
        if kind == FIELD_KNOT:
            continue
        if kind == RECORD:
            out[:, target, 0] = s[0]
            out[:, target, 1] = s[1]
            out[:, target, 2] = z_event
            out[:, target, 3] = s[2]
            out[:, target, 4] = s[3]
            out[:, target, 5] = s[4]
            target += 1
            continue
        assert crossing is not None
        crossing.act(s, kind, share, here)
    return out


def _sub(kq: np.ndarray, idx: np.ndarray | None) -> float | np.ndarray:
    if kq.ndim == 0:
        return float(kq)
    return kq if idx is None else kq[idx]


def field_file_text(
    field: SolenoidField = GLUEX_FIELD,
    charge: float = DEFAULT_CHARGE,
    max_step: float = MAX_STEP_CM,
) -> str:
    """The field file of the C++ Runge-Kutta (``cpp/include/tracklstm/runge_kutta.hpp``): the
    knots with their tangents, c·q and the longest step, so that C++ integrates the same field
    (floats written to read back exactly)."""
    lines = [
        "tracklstm-field 1",
        f"kq {C_LIGHT * charge!r}",
        f"max_step {float(max_step)!r}",
        f"knots {len(field.z_knots)}",
    ]
    knots = zip(field._z.tolist(), field._b.tolist(), field._m.tolist(), strict=True)
    lines += [f"{z!r} {b!r} {m!r}" for z, b, m in knots]
    return "\n".join([*lines, "end"]) + "\n"
