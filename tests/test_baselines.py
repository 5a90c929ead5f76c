"""Propagation without a network: straight line and helix baselines."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import toy_tracks

from tracklstm.constants import PLANE_Z
from tracklstm.data.challenge import challenge_score
from tracklstm.evaluate.real_track import REAL_TRACK_FILE
from tracklstm.physics.baselines import baselines
from tracklstm.physics.helix import helix, helix_uniform, straight_line
from tracklstm.physics.helix_field import NOMINAL_FIELD, TURNING_FIELD, check_field

REAL_TRACK = REAL_TRACK_FILE  # the package's copy of the real track


def test_helix_reproduces_uniform_field_tracks() -> None:
    tracks = toy_tracks(100, seed=3)  # exact helices in q·Bz = 2 T
    for plane in (1, 7, 24):
        pred = helix_uniform(tracks[:, 0], tracks[:, plane, 2], 2.0)
        np.testing.assert_allclose(pred, tracks[:, plane], atol=1e-9, rtol=0)
    # the nominal field is 2.0 T everywhere
    np.testing.assert_allclose(helix(tracks[:, 3], PLANE_Z[20]), tracks[:, 20], atol=1e-9)


def test_helix_runs_backwards_and_over_any_leading_shape() -> None:
    tracks = toy_tracks(20, seed=4)
    back = helix(tracks[:, 24], tracks[:, 0, 2], TURNING_FIELD)
    forth = helix(back, tracks[:, 24, 2], TURNING_FIELD)
    np.testing.assert_allclose(forth, tracks[:, 24], atol=1e-9)
    # (n, planes, 6) states, each propagated to the next plane
    pred = helix(tracks[:, :-1], tracks[:, 1:, 2], NOMINAL_FIELD)
    assert pred.shape == (20, 24, 6)
    np.testing.assert_allclose(pred, tracks[:, 1:], atol=1e-9)


def test_helix_crosses_field_regions_in_order() -> None:
    tracks = toy_tracks(30, seed=5)
    field = ((65.0, 2.0), (200.0, 0.0))
    start = tracks[:, 1]  # z = 176.9, in the 2 T region
    mid = helix_uniform(start, 200.0, 2.0)
    expected = straight_line(mid, PLANE_Z[20])
    np.testing.assert_allclose(helix(start, PLANE_Z[20], field), expected, atol=1e-9)
    # stepping plane by plane through the boundary gives the same as one step
    s = start
    for plane in range(2, 21):
        s = helix(s, PLANE_Z[plane], field)
    np.testing.assert_allclose(s, expected, atol=1e-9)
    # a step that stays inside one region ignores the others
    np.testing.assert_allclose(
        helix(start, PLANE_Z[6], field), helix_uniform(start, PLANE_Z[6], 2.0), atol=1e-12
    )


def test_zero_field_helix_is_the_straight_line() -> None:
    tracks = toy_tracks(10, seed=6)
    a = helix(tracks[:, 0], PLANE_Z[24], ((0.0, 0.0),))
    b = straight_line(tracks[:, 0], PLANE_Z[24])
    np.testing.assert_allclose(a, b, atol=1e-12)
    # straight line: momentum unchanged, z on the target, x advanced by px/pz dz
    np.testing.assert_array_equal(b[:, 3:], tracks[:, 0, 3:])
    np.testing.assert_array_equal(b[:, 2], PLANE_Z[24])
    dz = PLANE_Z[24] - PLANE_Z[0]
    np.testing.assert_allclose(b[:, 0], tracks[:, 0, 0] + tracks[:, 0, 3] / tracks[:, 0, 5] * dz)


def test_nominal_field_is_the_best_baseline_on_the_real_track() -> None:
    real = np.genfromtxt(REAL_TRACK, delimiter=",", comments="#", skip_header=5)[:, 1:]
    assert real.shape == (24, 6)
    truth = real[1:][:, [0, 1, 3, 4, 5]]

    def score(field: tuple[tuple[float, float], ...]) -> float:
        pred = helix(real[:-1], real[1:, 2], field)
        return challenge_score(truth, pred[:, [0, 1, 3, 4, 5]])

    nominal, turning, straight = score(NOMINAL_FIELD), score(TURNING_FIELD), score(((0, 0),))
    assert nominal < turning < straight
    assert straight > 2 * nominal


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="must increase"):
        check_field([(100, 2.0), (50, 1.0)])
    with pytest.raises(ValueError, match="at least one region"):
        check_field([])
    with pytest.raises(ValueError, match="pz = 0"):
        straight_line(np.array([[0, 0, 65, 0.1, 0.1, 0.0]]), 100.0)
    with pytest.raises(ValueError, match="6 values"):
        helix(np.zeros((3, 5)), 100.0)
    assert set(baselines()) == {"straight", "helix", "field_only"}
