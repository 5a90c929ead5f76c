"""Checksums of the arrays in windows.h5: written by the windows stage, verified by every reader.

A windows file edited in place (a value changed by hand or by a tool, a file damaged on disk)
would otherwise train and evaluate silently. ``stamp_checksums`` stores, on every dataset, the
sha256 of its values as written (attribute ``sha256``); ``verify_checksums`` recomputes them for
the datasets a stage reads (train: the train and validation windows; evaluate: the test windows;
challenge: the test tracks) and names the file and the dataset on a mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

#: The attribute of every dataset that holds the sha256 of its values as written.
CHECKSUM_ATTR = "sha256"


def dataset_sha256(ds: h5py.Dataset, rows: int = 65536) -> str:
    """sha256 of a dataset's values as stored (C order, its own dtype), read in chunks."""
    digest = hashlib.sha256()
    for start in range(0, ds.shape[0], rows):
        digest.update(np.ascontiguousarray(ds[start : start + rows]).tobytes())
    return digest.hexdigest()


def stamp_checksums(h5: h5py.File) -> None:
    """Store the checksum of every dataset of an open windows file (the writer's last step)."""
    names: list[str] = []
    h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    for name in names:
        h5[name].attrs[CHECKSUM_ATTR] = dataset_sha256(h5[name])


def verify_checksums(
    path: str | Path,
    h5: h5py.File,
    names: Sequence[str],
    loaded: Mapping[str, np.ndarray] | None = None,
) -> None:
    """ValueError naming the file and the dataset when one of ``names`` does not hold what the
    windows stage wrote (its checksum), or holds no checksum. ``loaded``: datasets already read
    (by name), hashed in memory instead of being read again."""
    loaded = loaded or {}
    for name in names:
        stored = h5[name].attrs.get(CHECKSUM_ATTR)
        if stored is None:
            raise ValueError(
                f"{path}: {name} has no checksum (not written by the windows stage of this "
                "version): build it again"
            )
        if name in loaded:
            actual = hashlib.sha256(np.ascontiguousarray(loaded[name]).tobytes()).hexdigest()
        else:
            actual = dataset_sha256(h5[name])
        if actual != (stored.decode() if isinstance(stored, bytes) else stored):
            raise ValueError(
                f"{path}: {name} does not match its checksum: the file was changed after the "
                "windows stage wrote it; build it again"
            )
