"""The one real track the project ships, and how every model is scored on it (sim-to-real).

``data/mlchallenge2_track3.csv`` (package data) holds 24 of the 25 states of row 3 of the
challenge's training file, as printed in a public notebook: planes 0 (z = 65 cm) to 23. Cut into
windows of 7 it gives 17 windows whose targets are planes 7 to 23. Every evaluation scores the
model, the helix, the field-only propagation and the straight line on them with the challenge's
score: the only real-data check a model trained on simulated tracks gets offline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tracklstm.constants import ANSWER_INDEX, N_FEATURES
from tracklstm.data.challenge import challenge_score

#: The file, inside the package.
REAL_TRACK_FILE: Path = Path(__file__).parents[1] / "data" / "mlchallenge2_track3.csv"


def load_real_track(path: str | Path = REAL_TRACK_FILE) -> np.ndarray:
    """The track's states, (24, 6) float64: x, y, z, px, py, pz of planes 0 to 23."""
    table = np.genfromtxt(path, delimiter=",", comments="#", skip_header=5)
    states = np.asarray(table[:, 1:], dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != N_FEATURES or not np.isfinite(states).all():
        raise ValueError(f"{path}: expected rows of plane,x,y,z,px,py,pz, got {states.shape}")
    return states


def real_track_windows(length: int, path: str | Path = REAL_TRACK_FILE) -> tuple[np.ndarray, ...]:
    """``(inputs (n, length, 6) float32, targets (n, 6) float64)``: every window of the track."""
    states = load_real_track(path)
    offsets = range(len(states) - length)
    inputs = np.stack([states[o : o + length] for o in offsets]).astype(np.float32)
    return inputs, states[length:]


def score_real_track(
    predict: Callable[[np.ndarray], np.ndarray],
    propagators: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    length: int,
) -> dict[str, Any]:
    """The challenge score of the network (``predict``: windows -> next states) and of each
    baseline on the real track's windows, and the planes their targets are on."""
    if length >= len(load_real_track()):
        return {"n_windows": 0}
    inputs, targets = real_track_windows(length)
    cols = list(ANSWER_INDEX)
    truth = targets[:, cols]
    out: dict[str, Any] = {
        "n_windows": len(inputs),
        "target_planes": [length, length + len(inputs) - 1],
        "network": challenge_score(truth, np.asarray(predict(inputs), np.float64)[:, cols]),
    }
    last = inputs[:, -1].astype(np.float64)
    for name, propagate in propagators.items():
        out[name] = challenge_score(truth, propagate(last, targets[:, 2])[:, cols])
    return out
