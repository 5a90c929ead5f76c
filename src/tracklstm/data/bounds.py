"""Physical limits of a track state: the one check of "is this value possible at all".

A state is the six values ``x, y, z, px, py, pz`` (cm, GeV/c) of a track at one plane. It is out
of bounds when its transverse distance from the beam line ``sqrt(x^2 + y^2)`` exceeds
``max_radius_cm``, its momentum ``sqrt(px^2 + py^2 + pz^2)`` exceeds ``max_momentum``, or
``pz <= min_pz``. z is not bounded here: every z must be its plane's (checked by the stages).
Missing values (NaN) never count as out of bounds: they are a separate matter (nulls).

The limits come from the ``conversion.bounds`` settings (config schema); the defaults are
generous for real data (|x|, |y| within about 30 cm at z = 65, |p| 0.55 to 3.5 GeV/c, a detector
of about 65 cm radius), so they refuse only values no track can have (a px of 1e30, a negative
pz), which would otherwise become the normalization's extremes.

The rule lives in :meth:`Bounds.violations` (any array shapes, broadcast); everything else here
is a view of it: :meth:`Bounds.out_of_bounds` for ``(..., 6)`` state arrays,
:meth:`Bounds.explain` for one state's reason in words, :func:`check_states` to raise on the
first bad state. Values are compared in float64 after rounding to float32 (the stored
precision), so a line's text and the same value read by pyarrow get the same verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tracklstm.constants import FEATURES, N_FEATURES

#: The settings key of each limit (under ``conversion.bounds``).
KEYS: tuple[str, ...] = ("max_radius_cm", "max_momentum", "min_pz")
_X, _Y, _PX, _PY, _PZ = (FEATURES.index(f) for f in ("x", "y", "px", "py", "pz"))


class OutOfBoundsError(ValueError):
    """A state beyond the physical limits; the message names where and which limit."""


def _f64(values: Any) -> np.ndarray:
    """float32-rounded values as float64 (the stored precision, compared exactly)."""
    with np.errstate(over="ignore"):  # beyond float32: inf, out of bounds
        return np.asarray(values, dtype=np.float32).astype(np.float64)


@dataclass(frozen=True)
class Bounds:
    """The limits (see the module docstring); :meth:`from_settings` fills in the defaults."""

    max_radius_cm: float
    max_momentum: float
    min_pz: float

    @classmethod
    def from_settings(cls, conversion: Mapping[str, Any] | None = None) -> Bounds:
        """From the ``conversion`` section of the settings (its ``bounds`` mapping); keys left
        out take the schema's defaults (the one place they are written)."""
        from tracklstm.settings import defaults

        given = dict((conversion or {}).get("bounds") or {})
        unknown = sorted(set(given) - set(KEYS))
        if unknown:
            raise ValueError(f"conversion.bounds.{unknown[0]}: not a setting (known: {KEYS})")
        values = {**defaults("conversion")["bounds"], **given}
        return cls(**{k: float(values[k]) for k in KEYS})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def _kinds(
        self, x: Any, y: Any, px: Any, py: Any, pz: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(radius too large, momentum too large, pz too small), each broadcast; NaN: False."""
        x, y, px, py, pz = (_f64(v) for v in (x, y, px, py, pz))
        with np.errstate(invalid="ignore", over="ignore"):
            return (
                x * x + y * y > self.max_radius_cm**2,
                px * px + py * py + pz * pz > self.max_momentum**2,
                pz <= self.min_pz,
            )

    def violations(self, x: Any, y: Any, px: Any, py: Any, pz: Any) -> np.ndarray:
        """True where a state is out of bounds; arguments broadcast (columns, planes, ...)."""
        radius, momentum, low_pz = self._kinds(x, y, px, py, pz)
        return radius | momentum | low_pz

    def out_of_bounds(self, states: np.ndarray) -> np.ndarray:
        """``states`` of shape (..., 6) in feature order -> bool (...): True out of bounds."""
        states = np.asarray(states)
        if states.shape[-1:] != (N_FEATURES,):
            raise ValueError(f"states must have {N_FEATURES} values on the last axis")
        return self.violations(*(states[..., i] for i in (_X, _Y, _PX, _PY, _PZ)))

    def explain(self, state: Any) -> tuple[str, str] | None:
        """Why one state (6 values) is out of bounds: ``(feature, words)``, or None.

        ``feature`` is the one to blame (the largest of x, y for the radius, of px, py, pz for
        the momentum; pz for the pz limit); the words name the values and the setting.
        """
        s = _f64(state)
        x, y, px, py, pz = (s[i] for i in (_X, _Y, _PX, _PY, _PZ))
        radius, momentum, low_pz = self._kinds(x, y, px, py, pz)
        with np.errstate(invalid="ignore", over="ignore"):
            if radius:
                return ("x" if abs(x) >= abs(y) else "y"), (
                    f"radius sqrt(x^2 + y^2) = {np.sqrt(x * x + y * y):.6g} cm (x = {x:.6g}, "
                    f"y = {y:.6g}) is beyond conversion.bounds.max_radius_cm = "
                    f"{self.max_radius_cm:g}"
                )
            if momentum:
                largest = int(np.argmax(np.abs([px, py, pz])))
                return ("px", "py", "pz")[largest], (
                    f"momentum |p| = {np.sqrt(px * px + py * py + pz * pz):.6g} GeV/c "
                    f"(px = {px:.6g}, py = {py:.6g}, pz = {pz:.6g}) is beyond "
                    f"conversion.bounds.max_momentum = {self.max_momentum:g}"
                )
        if low_pz:
            return "pz", (
                f"pz = {pz:.6g} GeV/c is not above conversion.bounds.min_pz = {self.min_pz:g}"
            )
        return None


def check_states(states: np.ndarray, bounds: Bounds | None = None, where: str = "") -> None:
    """Raise OutOfBoundsError at the first state of ``states`` (..., 6) out of bounds.

    ``bounds`` defaults to the schema's (``Bounds.from_settings()``).
    The message reads ``<where>: state (i, j): <reason>`` with the index of the state in
    ``states`` (all axes but the last).
    """
    bounds = bounds or Bounds.from_settings()
    bad = bounds.out_of_bounds(states)
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    _, words = bounds.explain(np.asarray(states)[index])  # type: ignore[misc]
    prefix = f"{where}: " if where else ""
    raise OutOfBoundsError(f"{prefix}state {index}: {words}")
