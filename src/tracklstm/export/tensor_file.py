"""Binary tensor files of the C++ host (``cpp/tracklstm_predict.cpp``; see cpp/README.md).

A file is the magic ``TLSTMF32`` (float32 values) or ``TLSTMF64`` (float64: the plain C++
propagator's outputs, ``cpp/include/tracklstm/tensor_file.hpp``), the number of dimensions and
a reserved word (two uint32), the shape (int64 each), then the values, little-endian, in C order.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tracklstm.files import atomic_path

#: The first bytes of a tensor file of float32 values, and of one of float64 values.
TENSOR_MAGIC = b"TLSTMF32"
TENSOR_MAGIC_F64 = b"TLSTMF64"


def write_tensor(path: str | Path, array: np.ndarray, *, float64: bool = False) -> None:
    """An array in the C++ programs' binary format (see cpp/README.md), atomically: float32
    values, or float64 with ``float64``."""
    data = np.ascontiguousarray(array, dtype="<f8" if float64 else "<f4")
    magic = TENSOR_MAGIC_F64 if float64 else TENSOR_MAGIC
    header = magic + struct.pack("<II", data.ndim, 0)
    header += struct.pack(f"<{data.ndim}q", *data.shape)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(data.tobytes())


def read_tensor(path: str | Path) -> np.ndarray:
    """An array written by ``write_tensor`` or a C++ program: float32 or float64, as stored."""
    raw = Path(path).read_bytes()
    if raw[:8] not in (TENSOR_MAGIC, TENSOR_MAGIC_F64) or len(raw) < 16:
        raise ValueError(f"{path}: not a tracklstm tensor file (bad magic)")
    dtype, size = ("<f8", 8) if raw[:8] == TENSOR_MAGIC_F64 else ("<f4", 4)
    ndim, _ = struct.unpack_from("<II", raw, 8)
    shape = struct.unpack_from(f"<{ndim}q", raw, 16)
    start = 16 + 8 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != start + size * count:
        raise ValueError(f"{path}: {len(raw) - start} data bytes, expected {size * count}")
    out = np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)
    return out.astype(np.float64 if size == 8 else np.float32)
