"""The physical bounds of a track state: one rule, used by to_parquet (and predict)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import toy_tracks

from tracklstm.data.bounds import Bounds, OutOfBoundsError, check_states
from tracklstm.settings import defaults

B = Bounds(max_radius_cm=100.0, max_momentum=20.0, min_pz=0.0)


def state(**values: float) -> np.ndarray:
    s = {"x": 1.0, "y": 2.0, "z": 65.0, "px": 0.1, "py": 0.1, "pz": 1.5, **values}
    return np.array([s[k] for k in ("x", "y", "z", "px", "py", "pz")])


def test_defaults_are_the_schema() -> None:
    bounds = Bounds.from_settings()
    assert bounds.as_dict() == defaults("conversion")["bounds"]
    assert Bounds.from_settings({"bounds": {"min_pz": -1}}).min_pz == -1.0
    assert Bounds.from_settings({"bad_rows": "skip"}) == bounds
    with pytest.raises(ValueError, match=r"conversion\.bounds\.radius: not a setting"):
        Bounds.from_settings({"bounds": {"radius": 1}})


@pytest.mark.parametrize(
    ("values", "feature", "words"),
    [
        ({"x": 80.0, "y": 60.0}, None, None),  # radius exactly 100: allowed
        ({"x": 60.1, "y": -80.0}, "y", "radius sqrt(x^2 + y^2) = 100.06 cm"),
        ({"x": -1e30}, "x", "is beyond conversion.bounds.max_radius_cm = 100"),
        ({"px": 1e30}, "px", "momentum |p| = 1e+30 GeV/c"),
        ({"px": 0.0, "py": 0.0, "pz": 20.0}, None, None),  # |p| exactly 20: allowed
        ({"py": -19.0, "pz": 7.0}, "py", "is beyond conversion.bounds.max_momentum = 20"),
        ({"pz": 0.0}, "pz", "pz = 0 GeV/c is not above conversion.bounds.min_pz = 0"),
        ({"pz": -2.0}, "pz", "pz = -2 GeV/c"),
        ({"x": np.nan, "px": np.nan, "pz": np.nan}, None, None),  # missing values never count
    ],
)
def test_one_state(values: dict[str, float], feature: str | None, words: str | None) -> None:
    s = state(**values)
    assert bool(B.out_of_bounds(s)) is (feature is not None)
    got = B.explain(s)
    if feature is None:
        assert got is None
    else:
        assert got is not None and got[0] == feature and words in got[1]


def test_arrays_and_check_states() -> None:
    tracks = toy_tracks(50).astype(np.float32)  # (50, 25, 6)
    assert B.out_of_bounds(tracks).shape == (50, 25)
    loose = Bounds(max_radius_cm=1000.0, max_momentum=20.0, min_pz=0.0)
    assert not loose.out_of_bounds(tracks).any()
    check_states(tracks, loose)
    tracks[7, 3, 5] = -1.0
    tracks[9, 0, 3] = np.inf
    mask = loose.out_of_bounds(tracks)
    assert np.argwhere(mask).tolist() == [[7, 3], [9, 0]]
    with pytest.raises(OutOfBoundsError, match=r"^inputs: state \(7, 3\): pz = -1 GeV/c"):
        check_states(tracks, loose, where="inputs")
    with pytest.raises(ValueError, match="6 values on the last axis"):
        B.out_of_bounds(np.zeros((3, 5)))


def test_columns_broadcast_as_the_states() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(0, 60, (1000, 6))
    states[:, 5] = rng.normal(1, 1, 1000)
    cols = [states[:, i] for i in (0, 1, 3, 4, 5)]
    np.testing.assert_array_equal(B.violations(*cols), B.out_of_bounds(states))
    assert 0 < B.violations(*cols).sum() < 1000
