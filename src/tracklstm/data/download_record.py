"""The record a download leaves beside the file it fetched (``<file>.download.json``).

Written by ``tracklstm.data.download``; read by ``tracklstm.data.to_parquet``, which copies it
into the data-quality summary. Kept apart from the downloader so that the conversion does not
depend on the download code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Suffix of the record beside a downloaded file.
DOWNLOAD_RECORD_SUFFIX = ".download.json"


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
