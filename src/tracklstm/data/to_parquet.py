"""Stage 2: the training-file CSV -> Parquet (float32), streamed, with a data-quality summary.

The file (plain or gzip) is read in blocks of whole lines, so memory stays bounded whatever its
size; :mod:`tracklstm.data.csv_blocks` parses and checks each block (pyarrow and whole-column NumPy
checks; line by line only where a block fails, to name the line). A line is bad when a value is not
a number or not a finite float32, the column count is wrong, a z is not its plane's, or a state is
beyond the physical bounds (``conversion.bounds``, :mod:`tracklstm.data.bounds`). By default the
first bad line stops the conversion with ``<file>:<line>: column <n> (<name>): <what>``; with
``bad_rows="skip"`` bad lines are left out and counted by reason.

Empty cells, ``NA``, ``null`` and every NaN spelling are kept as nulls, so a track with a
missing plane still gives every complete window downstream. A file with a header and no data
row is an error; a last line with no line break is flagged (``final_newline: false``) and
logged. When the CSV has a download record beside it (``<csv>.download.json``, written by
:mod:`tracklstm.data.download`), the summary copies it and its ``verified`` flag.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracklstm import stage_cli
from tracklstm.constants import COLUMNS, FEATURES, N_PLANES
from tracklstm.data.arrow_columns import float32_values
from tracklstm.data.bounds import Bounds
from tracklstm.data.csv_blocks import (
    MAX_LINE_BYTES,
    REASONS,
    SCHEMA,
    BadLine,
    Block,
    BufferPool,
    InputFileError,
    Parsed,
    check_header,
    iter_blocks,
    open_source,
    read_block,
    read_header,
)
from tracklstm.data.download_record import read_download_record
from tracklstm.files import atomic_path, check_outputs, output_file, write_json
from tracklstm.settings import defaults

__all__ = ["REASONS", "SCHEMA", "InputFileError", "check_header", "convert", "float32_values"]

log = logging.getLogger("tracklstm.to_parquet")

#: Float columns: byte-stream-split (no dictionary attempts) with lz4: 0.36 of the CSV's size,
#: 4 % more than zstd, but a third less CPU to write and half to read (measured on the
#: 194,601-track file: write 0.19 s against 0.27 s, read 0.09 s against 0.16 s).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": False,
    "use_byte_stream_split": True,
}
#: How many skipped lines the quality summary lists.
MAX_EXAMPLES = 20
#: Bytes of CSV per block (whole lines): the unit parsed by one thread.
BLOCK_BYTES = 4 << 20
#: Rows per Parquet row group (about what ``windows`` reads at a time).
ROW_GROUP_ROWS = 16384


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
    data_lines: int = 0  # lines after the header, empty ones included
    final_newline: bool = True

    def add(self, parsed: Parsed) -> None:
        self.rows += parsed.rows
        self.complete += int(parsed.missing_planes[0])
        self.nulls += parsed.nulls
        self.missing_planes += parsed.missing_planes
        # fmin/fmax ignore NaN unless both sides are NaN (a column with no value yet).
        self.vmin = np.fmin(self.vmin, parsed.vmin)
        self.vmax = np.fmax(self.vmax, parsed.vmax)
        for bad in parsed.bad:
            self.skip(bad)

    def skip(self, bad: BadLine) -> None:
        self.skipped[bad.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"line": bad.line, "reason": bad.reason, "message": bad.message})


def _num(value: float) -> float | None:
    """A float32 statistic as a short JSON number (None for no value)."""
    return None if not np.isfinite(value) else float(f"{float(value):.7g}")


def convert(
    csv_path: str | Path,
    parquet_path: str | Path,
    quality_path: str | Path | None = None,
    *,
    bad_rows: str = defaults("conversion")["bad_rows"],
    bounds: Bounds | None = None,
    block_size: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Stream ``csv_path`` into ``parquet_path`` (float32, nulls kept) and return the quality.

    ``bad_rows="error"`` stops at the first bad line with an InputFileError naming the file,
    line and column; ``"skip"`` leaves such lines out and counts them by reason. ``bounds``:
    the physical limits (default: the schema's ``conversion.bounds``); ``block_size``: bytes
    of CSV read at a time (default BLOCK_BYTES); ``threads``: blocks parsed at once (default
    :func:`default_threads`). Nothing is left under ``parquet_path`` or ``quality_path``
    unless the conversion succeeds.
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', not {bad_rows!r}")
    bounds = bounds or Bounds.from_settings()
    csv_path = Path(csv_path)
    parquet_path = output_file(parquet_path, "Parquet output")
    if quality_path is not None:
        quality_path = output_file(quality_path, "quality JSON")
    threads = max(1, threads or default_threads())
    size = block_size or BLOCK_BYTES
    stats = _Stats()
    fh, compression = open_source(csv_path)
    with fh, ThreadPoolExecutor(threads, thread_name_prefix="to_parquet") as executor:
        read_header(fh, csv_path)
        with (
            atomic_path(parquet_path) as tmp,
            pq.ParquetWriter(tmp, SCHEMA, **PARQUET_OPTIONS) as writer,
        ):
            out = _Output(csv_path, writer, stats, bad_rows)
            # Blocks parsed by the threads, taken (checked, counted, written) in file order.
            pending: deque[tuple[Block, Future[Parsed]]] = deque()
            pool = BufferPool(threads + 2, size + MAX_LINE_BYTES)
            try:
                for block in iter_blocks(fh, csv_path, size, pool):
                    pending.append((block, executor.submit(read_block, block, bounds, csv_path)))
                    while pending and (len(pending) > threads or pending[0][1].done()):
                        out.take(*pending.popleft())
                while pending:
                    out.take(*pending.popleft())
            finally:
                for _, future in pending:
                    future.cancel()
            out.flush()
            _check_rows(csv_path, stats)
    quality = summary(csv_path, stats, bad_rows, bounds, compression)
    if quality_path is not None:
        write_json(quality_path, quality)
    _log_result(csv_path, parquet_path, stats, quality)
    return quality


def default_threads() -> int:
    """Threads that parse blocks: the cores this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class _Output:
    """Takes the parsed blocks in file order: the bad lines, the statistics, the row groups."""

    def __init__(self, csv_path: Path, writer: pq.ParquetWriter, stats: _Stats, bad_rows: str):
        self.csv_path = csv_path
        self.writer = writer
        self.stats = stats
        self.bad_rows = bad_rows
        self.tables: list[pa.Table] = []
        self.rows = 0

    def take(self, block: Block, future: Future[Parsed]) -> None:
        parsed = future.result()
        if parsed.bad and self.bad_rows == "error":
            first = parsed.bad[0]
            raise InputFileError(f"{self.csv_path}:{first.line}: {first.message}")
        self.stats.add(parsed)
        self.stats.data_lines = block.first_line - 2 + block.lines
        if block.unterminated:
            self.stats.data_lines += 1
            self.stats.final_newline = False
        if parsed.rows:
            self.tables.append(parsed.table)
            self.rows += parsed.rows
            if self.rows >= ROW_GROUP_ROWS:
                self.flush()

    def flush(self) -> None:
        """Write the rows taken so far as one row group."""
        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables))
        self.tables, self.rows = [], 0


def _check_rows(csv_path: Path, stats: _Stats) -> None:
    """Refuse a file that gives no row (before the Parquet file is renamed into place)."""
    if stats.rows:
        return
    if stats.skipped:
        raise InputFileError(f"{csv_path}: every data line was rejected ({dict(stats.skipped)})")
    raise InputFileError(
        f"{csv_path}: no data rows: the file holds only the header line"
        + (f" and {stats.data_lines} empty lines" if stats.data_lines else "")
    )


def _log_result(csv_path: Path, parquet_path: Path, stats: _Stats, quality: dict) -> None:
    if not stats.final_newline:
        log.warning(
            "%s: the last line (line %d) has no line break: the file may have been cut short "
            "(its values were read as they are)",
            csv_path,
            stats.data_lines + 1,
        )
    if quality["verified"] is False:
        log.warning(
            "%s: the download was not verified (no size or checksum known): it may be incomplete",
            csv_path,
        )
    if stats.skipped:
        log.warning(
            "%s: skipped %d bad lines %s (first at line %d)",
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


def summary(
    csv_path: Path,
    stats: _Stats,
    bad_rows: str,
    bounds: Bounds | None = None,
    compression: str | None = None,
) -> dict[str, Any]:
    """The data-quality summary (the quality JSON)."""
    n_feat = len(FEATURES)
    download = read_download_record(csv_path)
    return {
        "file": str(csv_path),
        "compression": compression,
        "bad_rows": bad_rows,
        "bounds": (bounds or Bounds.from_settings()).as_dict(),
        "rows": stats.rows,
        "complete_rows": stats.complete,
        "rows_with_nulls": stats.rows - stats.complete,
        "skipped_rows": {r: stats.skipped[r] for r in REASONS if stats.skipped[r]},
        "skipped_examples": stats.examples,
        # False: the last line has no line break (the file may be cut short).
        "final_newline": stats.final_newline,
        # The download record beside the CSV (None for a file that was not downloaded);
        # verified: its size or checksum was known and matched.
        "download": download,
        "verified": None if download is None else bool(download.get("verified")),
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
    parser.add_argument("--csv", required=True, help="track CSV (or gzip) in the training format")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--quality", help="data-quality JSON to write")
    parser.add_argument(
        "--bad-rows",
        choices=("error", "skip"),
        help="bad rows: stop with an error naming the line (default), or skip and count them",
    )
    parser.add_argument(
        "--threads", type=int, help="blocks parsed at once (default: the cores available)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")

    def body() -> None:
        check_outputs({"--out": args.out, "--quality": args.quality}, {"--csv": args.csv})
        cfg = stage_cli.settings(
            "to_parquet", args.settings, {"conversion": {"bad_rows": args.bad_rows}}
        )["conversion"]
        convert(
            args.csv,
            args.out,
            args.quality,
            bad_rows=cfg["bad_rows"],
            bounds=Bounds.from_settings(cfg),
            threads=args.threads,
        )

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
