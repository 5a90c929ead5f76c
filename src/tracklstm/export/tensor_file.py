"""Binary tensor files of the C++ host (``cpp/tracklstm_predict.cpp``; see cpp/README.md).

A file is the magic ``TLSTMF32``, the number of dimensions and a reserved word (two uint32), the
shape (int64 each), then the float32 values, little-endian, in C order.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tracklstm.files import atomic_path

#: The first bytes of a tensor file.
TENSOR_MAGIC = b"TLSTMF32"


def write_tensor(path: str | Path, array: np.ndarray) -> None:
    """A float32 array in the C++ program's binary format (see cpp/README.md), atomically."""
    data = np.ascontiguousarray(array, dtype="<f4")
    header = TENSOR_MAGIC + struct.pack("<II", data.ndim, 0)
    header += struct.pack(f"<{data.ndim}q", *data.shape)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(data.tobytes())


def read_tensor(path: str | Path) -> np.ndarray:
    """A float32 array written by ``write_tensor`` or the C++ program."""
    raw = Path(path).read_bytes()
    if raw[:8] != TENSOR_MAGIC or len(raw) < 16:
        raise ValueError(f"{path}: not a tracklstm tensor file (bad magic)")
    ndim, _ = struct.unpack_from("<II", raw, 8)
    shape = struct.unpack_from(f"<{ndim}q", raw, 16)
    start = 16 + 8 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != start + 4 * count:
        raise ValueError(f"{path}: {len(raw) - start} data bytes, expected {4 * count}")
    return np.frombuffer(raw, dtype="<f4", offset=start).reshape(shape).astype(np.float32)
