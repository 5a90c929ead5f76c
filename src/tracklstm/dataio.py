"""Helpers the data stages share: path checks that name the file, float32 Arrow columns as
NumPy, and the record a download leaves beside the file it fetched."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

#: Suffix of the record :mod:`tracklstm.download` writes beside a downloaded file.
DOWNLOAD_RECORD_SUFFIX = ".download.json"


def input_file(path: str | os.PathLike[str], what: str = "input") -> Path:
    """``path`` as a Path, or a ValueError naming it when it is missing, a folder or unreadable."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected the {what} file")
    if not p.exists():
        raise ValueError(f"{p}: no such file ({what})")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{p}: not readable ({what})")
    return p


#: The first bytes of a gzip file: such a file is read decompressed, whatever its name.
GZIP_MAGIC = b"\x1f\x8b"
#: What reading broken gzip data raises.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def open_maybe_gzip(path: str | os.PathLike[str]) -> tuple[BinaryIO, str | None]:
    """Open a file for reading bytes: ``(stream, "gzip" or None)``; gzip found by its magic."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb"), "gzip"  # type: ignore[return-value]
    return open(path, "rb"), None


def gzip_error(path: str | os.PathLike[str], err: BaseException) -> str:
    """The message for gzip data that cannot be decompressed."""
    return f"{path}: cannot decompress: gzip data corrupt or cut short ({err})"


def read_bytes(path: str | os.PathLike[str], what: str = "input") -> bytes:
    """A whole file's bytes, decompressed when it is gzip; ValueError naming it otherwise."""
    p = input_file(path, what)
    data = p.read_bytes()
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except GZIP_ERRORS as err:
        raise ValueError(gzip_error(p, err)) from None


def output_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path, or a ValueError naming it when it cannot be written as a file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory; the {what} must be a file path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{p}: {parent} is not a directory ({what})")
            break
    return p


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


def download_record_path(path: str | os.PathLike[str]) -> Path:
    """Where the download record of ``path`` lives: ``<path>.download.json``."""
    p = Path(path)
    return p.with_name(p.name + DOWNLOAD_RECORD_SUFFIX)


def read_download_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The download record of ``path`` when there is one and it describes this file (same size),
    else None."""
    record_path = download_record_path(path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    try:
        size = Path(path).stat().st_size
    except OSError:
        return None
    return record if record.get("bytes") == size else None
