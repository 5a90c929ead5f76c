"""physics/material.py: the energy loss and scattering laws against their published values, and
the detector's regions acting where they are."""

from __future__ import annotations

import numpy as np

from tracklstm.physics import material as mat


def test_bethe_gives_the_pdg_minimum_ionization() -> None:
    """PDG tables: minimum ionization 1.615 MeV cm^2/g in aluminium, 1.848 in Mylar, at
    beta gamma about 3.5 (within 4 %: the density effect is taken in its high-energy form only);
    the loss rises slowly (relativistic rise) beyond it."""
    p = np.array([3.5 * mat.PION_MASS])
    for medium, minimum in ((mat.ALUMINIUM, 1.615e-3), (mat.MYLAR, 1.848e-3)):
        loss = float(mat.bethe_mean_loss(medium, np.array([1.0]), p)[0])
        assert abs(loss / minimum - 1) < 0.04, (medium.name, loss)
    rise = mat.bethe_mean_loss(mat.ALUMINIUM, np.ones(2), np.array([0.5, 3.0]))
    assert 1.0 < rise[1] / rise[0] < 1.2


def test_landau_variates_peak_at_the_landau_mode() -> None:
    lam = mat.landau(np.random.default_rng(1), 2_000_000)
    counts, edges = np.histogram(lam, bins=np.linspace(-1.5, 1.0, 51))
    peak = 0.5 * (edges[:-1] + edges[1:])[np.argmax(counts)]
    assert abs(peak - mat.LANDAU_MODE) < 0.1
    assert np.mean(lam > 20) > 0.02  # the long tail: P(lambda > x) ~ 1/x


def test_landau_loss_peaks_at_the_most_probable_value_and_is_capped() -> None:
    rng = np.random.default_rng(2)
    p = np.full(400_000, 2.0)
    grams = np.full_like(p, 4.0)
    loss = mat.landau_loss(mat.ALUMINIUM, grams, p, rng)
    mean = float(mat.bethe_mean_loss(mat.ALUMINIUM, grams[:1], p[:1])[0])
    counts, edges = np.histogram(loss, bins=np.linspace(0.0, 2 * mean, 201))
    mode = 0.5 * (edges[:-1] + edges[1:])[np.argmax(counts)]
    assert 0.7 * mean < mode < 0.95 * mean  # the most probable loss lies below the mean
    assert loss.max() <= mat.MAX_LAYER_LOSS and np.all(loss >= 0)


def test_one_layer_scatters_by_highland_with_its_tail() -> None:
    """Through one endplate-like layer (no loss here: compare directions), the kick's width is
    Highland's theta_0 times |p|, widened by the single-scattering tail."""
    n, p0 = 400_000, 1.5
    s = [np.zeros(n), np.zeros(n), np.full(n, 0.2), np.zeros(n), np.full(n, p0)]
    p0 = float(np.hypot(0.2, p0))
    grams = np.full(n, 4.0)
    beta2 = np.full(n, p0 * p0 / (p0 * p0 + mat.PION_MASS**2))
    theta = mat.highland(mat.ENDPLATE_MIX, grams, np.full(n, p0), beta2)
    tail = np.random.default_rng(3).uniform(size=n) < mat.TAIL_WEIGHT
    theta = np.where(tail, mat.TAIL_WIDTH * theta, theta)
    mat._lose_and_scatter(s, np.zeros(n), theta, np.random.default_rng(4))
    expected = float(np.sqrt(np.mean(theta**2))) * p0
    assert abs(s[3].std() / expected - 1) < 0.02  # py: the kick along e1 = (0, 1, 0)
    assert np.allclose(np.sqrt(s[2] ** 2 + s[3] ** 2 + s[4] ** 2), p0)  # |p| kept


def test_the_endplate_spares_the_beam_hole_and_the_straws_their_inside() -> None:
    material = mat.DETECTOR_MATERIAL
    endplate = next(i for i, ly in enumerate(material.layers) if ly.name == "CDC endplate")
    straws = next(i for i, ly in enumerate(material.layers) if ly.name == "CDC straws")
    radius = np.array([2.0, 5.0, 8.0, 20.0, 40.0])
    for index, inside in ((endplate, radius >= 6.0), (straws, radius >= 10.0)):
        s = [radius.copy(), np.zeros(5), np.zeros(5), np.zeros(5), np.full(5, 2.0)]
        material.crossing(5, np.random.default_rng(5)).act(s, index + 1, 1.0, None)
        lost = 2.0 - np.sqrt(s[2] ** 2 + s[3] ** 2 + s[4] ** 2)
        np.testing.assert_array_equal(lost > 0, inside)
    assert "CDC endplate" in mat.table()
