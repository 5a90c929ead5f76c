"""Arrow columns of the track tables (Parquet) as NumPy, without pandas."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def float32_values(array: pa.Array) -> np.ndarray:
    """A float32 array's values (a read-only view where possible), NaN for nulls.

    Reads the data buffer directly: pyarrow's own ``to_numpy`` imports pandas.
    """
    if array.null_count:
        array = array.fill_null(pa.scalar(np.nan, pa.float32()))
    if len(array) == 0:
        return np.empty(0, np.float32)
    data = array.buffers()[1]
    return np.frombuffer(data, np.float32, count=len(array), offset=array.offset * 4)
