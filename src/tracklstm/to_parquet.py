"""Stage 2: the training-file CSV -> Parquet (float32), streamed, with a data-quality summary.

The file is read in blocks of whole lines, so memory stays bounded whatever its size. Each block
is parsed by pyarrow (the fast path). A block that pyarrow rejects, or that holds a value that is
not a finite float32 or a z that is not the plane's, is read again line by line to name the
offending line: by default the first one stops the conversion with ``<file>:<line>: <what>``;
with ``bad_rows="skip"`` such lines are left out and counted by reason.

Empty cells (and ``nan``, ``NaN``, ``NA``, ``null``) are kept as nulls, so a track with a missing
plane still gives every complete window downstream.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tracklstm import stage_cli
from tracklstm.constants import COLUMNS, FEATURES, N_FEATURES, N_PLANES, PLANE_Z, Z_TOLERANCE
from tracklstm.io import atomic_path, write_json

log = logging.getLogger(__name__)

SCHEMA = pa.schema([(name, pa.float32()) for name in COLUMNS])
#: Float columns: byte-stream-split + zstd is 3x faster to write than dictionary attempts and
#: a third smaller (about 0.43 of the CSV's size).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": False,
    "use_byte_stream_split": True,
}
#: Cell texts read as a missing value (null).
NULL_VALUES: tuple[str, ...] = ("", "nan", "NaN", "NA", "null")
#: Reasons a row is rejected (the keys of ``skipped_rows`` in the quality summary).
REASONS: tuple[str, ...] = (
    "non_numeric",
    "wrong_column_count",
    "truncated_last_line",
    "z_mismatch",
)
#: The column of z at each plane.
Z_COLUMNS: tuple[int, ...] = tuple(p * N_FEATURES + FEATURES.index("z") for p in range(N_PLANES))
_PLANE_Z = np.asarray(PLANE_Z, dtype=np.float64)
_F32_MAX = float(np.finfo(np.float32).max)
# What pyarrow's float parser accepts, after spaces and one pair of quotes are stripped.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# The longest line accepted (a real row is about 1.5 kB).
MAX_LINE_BYTES = 1 << 20
# How many skipped lines the quality summary lists.
MAX_EXAMPLES = 20


class InputFileError(ValueError):
    """A track file that does not follow the training-file format; the message names the line."""


@dataclass
class _BadLine:
    line: int
    reason: str
    message: str


@dataclass
class _Stats:
    rows: int = 0
    complete: int = 0
    vmin: np.ndarray = field(default_factory=lambda: np.full(len(COLUMNS), np.nan, np.float32))
    vmax: np.ndarray = field(default_factory=lambda: np.full(len(COLUMNS), np.nan, np.float32))
    nulls: np.ndarray = field(default_factory=lambda: np.zeros(len(COLUMNS), np.int64))
    missing_planes: np.ndarray = field(default_factory=lambda: np.zeros(N_PLANES + 1, np.int64))
    skipped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, arr: np.ndarray) -> None:
        if not len(arr):
            return
        isnan = np.isnan(arr)
        self.rows += len(arr)
        self.complete += int((~isnan.any(axis=1)).sum())
        self.nulls += isnan.sum(axis=0)
        plane_missing = isnan.reshape(len(arr), N_PLANES, N_FEATURES).any(axis=2).sum(axis=1)
        self.missing_planes += np.bincount(plane_missing, minlength=N_PLANES + 1)
        # fmin/fmax ignore NaN unless both sides are NaN (a column with no value yet).
        self.vmin = np.fmin(self.vmin, np.fmin.reduce(arr, axis=0))
        self.vmax = np.fmax(self.vmax, np.fmax.reduce(arr, axis=0))

    def skip(self, bad: _BadLine) -> None:
        self.skipped[bad.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"line": bad.line, "reason": bad.reason, "message": bad.message})


def _num(value: float) -> float | None:
    """A float32 statistic as a short JSON number (None for no value)."""
    return None if not np.isfinite(value) else float(f"{float(value):.7g}")


def check_header(path: str | Path) -> None:
    """Raise InputFileError unless the first line holds the 150 column names in order."""
    with open(path, "rb") as fh:
        first = fh.readline(MAX_LINE_BYTES)
    if not first:
        raise InputFileError(f"{path}:1: the file is empty (expected a header line)")
    header = [h.strip() for h in first.decode("utf-8-sig", errors="replace").strip().split(",")]
    if header == list(COLUMNS):
        return
    if len(header) != len(COLUMNS):
        raise InputFileError(
            f"{path}:1: header has {len(header)} columns, expected {len(COLUMNS)} "
            f"(x,y,z,px,py,pz,x1,...,pz24)"
        )
    bad = next(i for i, (a, b) in enumerate(zip(header, COLUMNS, strict=True)) if a != b)
    raise InputFileError(
        f"{path}:1: header column {bad + 1} is {header[bad]!r}, expected {COLUMNS[bad]!r}"
    )


def _iter_blocks(fh: BinaryIO, path: Path, block_size: int):
    """Yield ``(first_line, block, unterminated)``: blocks of whole lines after the header.

    ``unterminated`` is True only for the file's last line when it has no line break.
    """
    fh.readline(MAX_LINE_BYTES)  # the header, checked before
    line = 2
    rest = b""
    while True:
        chunk = fh.read(block_size)
        if not chunk:
            if rest.strip():
                yield line, rest, True
            return
        buf = rest + chunk if rest else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            if len(buf) > MAX_LINE_BYTES:
                raise InputFileError(
                    f"{path}:{line}: line is longer than {MAX_LINE_BYTES} bytes (not a track row)"
                )
            rest = buf
            continue
        block, rest = buf[: cut + 1], buf[cut + 1 :]
        yield line, block, False
        line += block.count(b"\n")


def _parse(block: bytes) -> pa.Table:
    """pyarrow's parse of a block of data lines (raises pyarrow.ArrowInvalid on a bad row)."""
    return pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
        convert_options=pacsv.ConvertOptions(
            column_types=SCHEMA, null_values=list(NULL_VALUES), quoted_strings_can_be_null=True
        ),
    )


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


def _to_numpy(table: pa.Table) -> np.ndarray:
    """(rows, 150) float32 with NaN for nulls."""
    out = np.empty((table.num_rows, len(COLUMNS)), np.float32)
    for j, column in enumerate(table.columns):
        start = 0
        for chunk in column.chunks:
            out[start : start + len(chunk), j] = float32_values(chunk)
            start += len(chunk)
    return out


def _fast_path_ok(arr: np.ndarray) -> bool:
    """No infinite value and every present z at its plane's z."""
    if np.isinf(arr).any():
        return False
    dev = np.abs(arr[:, Z_COLUMNS].astype(np.float64) - _PLANE_Z)
    return not (dev > Z_TOLERANCE).any()  # NaN compares False: a missing z is allowed


def _cell_error(text: str) -> str | None:
    """Why one cell is not accepted, or None."""
    cell = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if cell in NULL_VALUES:
        return None
    cell = cell.strip(" ")
    if cell in ("nan", "NaN"):
        return None  # pyarrow reads a NaN (a missing value downstream)
    if not _NUMBER.fullmatch(cell):
        return f"holds {text!r}, not a number"
    if abs(float(cell)) > _F32_MAX:
        return f"holds {text!r}, beyond the float32 range"
    return None


def _check_line(text: str, line: int, unterminated: bool) -> _BadLine | None:
    """Why one data line is rejected, or None (a line by line reading of a bad block)."""
    cells = text.split(",")
    if len(cells) != len(COLUMNS):
        if unterminated and len(cells) < len(COLUMNS):
            return _BadLine(
                line,
                "truncated_last_line",
                f"the last line is cut short ({len(cells)} of {len(COLUMNS)} values, "
                "no line break): the file looks truncated",
            )
        return _BadLine(
            line,
            "wrong_column_count",
            f"{len(cells)} values, expected {len(COLUMNS)}",
        )
    for i, cell in enumerate(cells):
        problem = _cell_error(cell)
        if problem:
            if unterminated and i == len(cells) - 1:
                return _BadLine(
                    line,
                    "truncated_last_line",
                    f"the last line ends in {cell!r} with no line break: the file looks truncated",
                )
            return _BadLine(line, "non_numeric", f"column {i + 1} ({COLUMNS[i]}) {problem}")
    for plane, col in enumerate(Z_COLUMNS):
        cell = cells[col].strip(' "')
        if cell in NULL_VALUES:
            continue
        z = float(cell)
        if abs(z - PLANE_Z[plane]) > Z_TOLERANCE:  # False for NaN
            return _BadLine(
                line,
                "z_mismatch",
                f"column {col + 1} ({COLUMNS[col]}): z of plane {plane} is {cell}, "
                f"expected {PLANE_Z[plane]}",
            )
    return None


def _slow_path(block: bytes, first_line: int, unterminated: bool) -> tuple[bytes, list[_BadLine]]:
    """Read a block line by line: the lines kept and the bad lines, with file line numbers."""
    keep: list[bytes] = []
    bad: list[_BadLine] = []
    lines = block.split(b"\n")
    if not unterminated:
        lines = lines[:-1]  # after the final line break
    for i, raw in enumerate(lines):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text:
            continue  # an empty line, as pyarrow skips it
        problem = _check_line(text, first_line + i, unterminated and i == len(lines) - 1)
        if problem is None:
            keep.append(raw)
        else:
            bad.append(problem)
    return b"\n".join(keep) + b"\n" if keep else b"", bad


def convert(
    csv_path: str | Path,
    parquet_path: str | Path,
    quality_path: str | Path | None = None,
    *,
    bad_rows: str = "error",
    block_size: int = 16 << 20,
) -> dict[str, Any]:
    """Stream ``csv_path`` into ``parquet_path`` (float32, nulls kept) and return the quality.

    ``bad_rows="error"`` stops at the first malformed line with an InputFileError naming the
    file and line; ``"skip"`` leaves such lines out and counts them by reason.
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', not {bad_rows!r}")
    csv_path, parquet_path = Path(csv_path), Path(parquet_path)
    check_header(csv_path)
    stats = _Stats()
    with (
        atomic_path(parquet_path) as tmp,
        open(csv_path, "rb") as fh,
        pq.ParquetWriter(tmp, SCHEMA, **PARQUET_OPTIONS) as writer,
    ):
        for first_line, block, unterminated in _iter_blocks(fh, csv_path, block_size):
            try:
                table = _parse(block)
                arr = _to_numpy(table)
                ok = _fast_path_ok(arr)
            except pa.ArrowInvalid:
                ok = False
            if not ok:
                kept, bad = _slow_path(block, first_line, unterminated)
                if bad and bad_rows == "error":
                    raise InputFileError(f"{csv_path}:{bad[0].line}: {bad[0].message}")
                for b in bad:
                    stats.skip(b)
                try:
                    table = _parse(kept) if kept else SCHEMA.empty_table()
                except pa.ArrowInvalid as err:  # the line by line check let a bad value through
                    last = first_line + block.count(b"\n")
                    raise InputFileError(
                        f"{csv_path}:{first_line}-{last}: cannot parse these lines: {err}"
                    ) from None
                arr = _to_numpy(table)
            stats.add(arr)
            if table.num_rows:
                writer.write_table(table)
    if stats.rows == 0 and stats.skipped:
        raise InputFileError(f"{csv_path}: every data line was rejected ({dict(stats.skipped)})")
    quality = summary(csv_path, stats, bad_rows)
    if quality_path is not None:
        write_json(quality_path, quality)
    if stats.skipped:
        log.warning(
            "%s: skipped %d malformed lines %s (first at line %d)",
            csv_path,
            sum(stats.skipped.values()),
            dict(stats.skipped),
            stats.examples[0]["line"],
        )
    log.info(
        "%s: %d rows (%d complete, %d with empty cells) -> %s",
        csv_path,
        stats.rows,
        stats.complete,
        stats.rows - stats.complete,
        parquet_path,
    )
    return quality


def summary(csv_path: Path, stats: _Stats, bad_rows: str) -> dict[str, Any]:
    """The data-quality summary (the quality JSON)."""
    n_feat = len(FEATURES)
    return {
        "file": str(csv_path),
        "bad_rows": bad_rows,
        "rows": stats.rows,
        "complete_rows": stats.complete,
        "rows_with_nulls": stats.rows - stats.complete,
        "skipped_rows": {r: stats.skipped[r] for r in REASONS if stats.skipped[r]},
        "skipped_examples": stats.examples,
        # Rows by number of planes with at least one empty cell (0 = complete track).
        "rows_by_missing_planes": {str(k): int(v) for k, v in enumerate(stats.missing_planes) if v},
        "null_cells": {c: int(n) for c, n in zip(COLUMNS, stats.nulls, strict=True) if n},
        # Per feature over all planes, then per column.
        "ranges": {
            f: {
                "min": _num(np.fmin.reduce(stats.vmin[i::n_feat])),
                "max": _num(np.fmax.reduce(stats.vmax[i::n_feat])),
            }
            for i, f in enumerate(FEATURES)
        },
        "column_ranges": {
            c: {"min": _num(lo), "max": _num(hi)}
            for c, lo, hi in zip(COLUMNS, stats.vmin, stats.vmax, strict=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm to-parquet", __doc__, stage="to_parquet")
    parser.add_argument("--csv", required=True, help="track CSV in the training-file format")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--quality", help="data-quality JSON to write")
    parser.add_argument(
        "--bad-rows",
        choices=("error", "skip"),
        help="malformed rows: stop with an error naming the line (default), or skip and count them",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = stage_cli.settings(
            "to_parquet", args.settings, {"conversion": {"bad_rows": args.bad_rows}}
        )
        convert(args.csv, args.out, args.quality, bad_rows=cfg["conversion"]["bad_rows"])

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
