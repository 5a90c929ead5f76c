"""Facts about the GlueX ML challenge 2 track files that every stage shares."""

from __future__ import annotations

#: The six state variables of a track at one plane, in file order.
FEATURES: tuple[str, ...] = ("x", "y", "z", "px", "py", "pz")
#: The predicted variables of the challenge (an answers line, and the score): the state at the
#: next plane without z, which is given. ANSWER_INDEX: their columns in FEATURES.
ANSWER_FEATURES: tuple[str, ...] = ("x", "y", "px", "py", "pz")
ANSWER_INDEX: tuple[int, ...] = tuple(FEATURES.index(f) for f in ANSWER_FEATURES)
#: Physical unit of each feature.
UNITS: dict[str, str] = {
    "x": "cm",
    "y": "cm",
    "z": "cm",
    "px": "GeV/c",
    "py": "GeV/c",
    "pz": "GeV/c",
}
#: z (cm) of the origin state (index 0) and the 24 detector planes (indices 1..24).
PLANE_Z: tuple[float, ...] = (
    65.0,
    176.944,
    179.069,
    181.195,
    183.32,
    185.445,
    187.571,
    235.514,
    237.639,
    239.765,
    241.89,
    244.015,
    246.141,
    294.103,
    296.228,
    298.354,
    300.479,
    302.604,
    304.73,
    332.778,
    334.903,
    337.029,
    339.154,
    341.28,
    343.405,
)
N_PLANES: int = len(PLANE_Z)
N_FEATURES: int = len(FEATURES)
#: Tolerance (cm) when checking a file's z values against PLANE_Z (the file has ~6 digits).
Z_TOLERANCE: float = 0.01


def column_names() -> list[str]:
    """The 150 column names of the training file: x,y,z,px,py,pz,x1,...,pz24."""
    names = list(FEATURES)
    for plane in range(1, N_PLANES):
        names.extend(f"{f}{plane}" for f in FEATURES)
    return names


COLUMNS: tuple[str, ...] = tuple(column_names())

#: Quantiles of the chi2 distribution with 5 degrees of freedom (x, y, px, py, pz): the regions
#: that hold 68.3 % and 95 % of a 5-dimensional Gaussian.
CHI2_5DOF_68: float = 5.8876
CHI2_5DOF_95: float = 11.0705
