"""The hardest collisions of a pion with the electrons of matter, and where the simulator cuts them.

A charged pion loses energy in many soft collisions and a few hard ones (delta rays), whose
energies fall as 1/T^2 up to T_max, the most one collision can give an electron (PDG Review of
Particle Physics, "Passage of particles through matter"). The simulator (``physics.material``)
draws each layer's loss from Landau's distribution, whose tail is that 1/T^2, and cuts it at
``MAX_LAYER_LOSS`` per layer. The covariance's calibration (``train.covariance_calibration``)
extends Landau's tail to the same end; it imports this module, not the material's, so that an
edit of the detector's material re-runs only what follows the simulated data. Units: GeV/c.
"""

from __future__ import annotations

import numpy as np

#: Mass (GeV/c^2) of the tracked particle: the charged pion.
PION_MASS: float = 0.13957
#: Electron mass (GeV/c^2).
ELECTRON_MASS: float = 0.51099895e-3
#: Largest energy loss (GeV) the simulator draws in one layer: its Landau tail is cut there (see
#: ``physics.material``'s notes), and every larger loss is piled at the cut.
MAX_LAYER_LOSS: float = 0.040


def pion_kinematics(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """beta^2, (beta gamma)^2 and T_max (GeV), the largest energy one collision gives an
    electron, of a pion of momentum ``p``."""
    beta2 = p * p / (p * p + PION_MASS * PION_MASS)
    bg2 = (p / PION_MASS) ** 2
    ratio = ELECTRON_MASS / PION_MASS
    t_max = 2 * ELECTRON_MASS * bg2 / (1 + 2 * np.sqrt(1.0 + bg2) * ratio + ratio * ratio)
    return beta2, bg2, t_max


def largest_momentum_loss(p: np.ndarray, capped: bool = True) -> np.ndarray:
    """The largest momentum (GeV/c) a pion of momentum ``p`` loses in one thin layer: T_max over
    beta, and with ``capped`` at most ``MAX_LAYER_LOSS`` over beta, where the simulator piles
    every larger loss (a thin layer's most probable loss, a few keV, left out)."""
    beta2, _, t_max = pion_kinematics(np.asarray(p, dtype=np.float64))
    cut = np.minimum(t_max, MAX_LAYER_LOSS) if capped else t_max
    return cut / np.sqrt(beta2)
