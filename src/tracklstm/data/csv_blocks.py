"""Reading a track CSV (training-file format) in blocks of whole lines, with every check.

The file (plain, or gzip: detected by its magic bytes 1f 8b, whatever its name) is cut into
blocks of whole lines after the header; each block knows the file line it starts at.
:func:`read_block` parses a block with pyarrow and checks it column by column, with NumPy over
whole columns (the fast path): every value a finite float32, every present z its plane's z,
every state within the physical bounds (:mod:`tracklstm.data.bounds`). A block that fails is cut
into small pieces that are tried the same way, and only a failing piece is read line by line
(the slow path) to name each bad line, so a bad line costs a few kilobytes of slow reading.

Missing values become nulls: empty cells, ``NA``, ``null`` and every NaN spelling pyarrow reads
(``nan``, ``NaN``, ``NAN``, ``-nan``, ``+nan``, ``nan(...)``, in any case), on both paths.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tracklstm.constants import COLUMNS, FEATURES, N_FEATURES, N_PLANES, PLANE_Z, Z_TOLERANCE
from tracklstm.data.arrow_columns import float32_values
from tracklstm.data.bounds import Bounds
from tracklstm.files import GZIP_ERRORS, gzip_error, input_file, open_maybe_gzip

SCHEMA = pa.schema([(name, pa.float32()) for name in COLUMNS])
#: Cell texts read as a missing value (null) besides the NaN spellings.
NULL_VALUES: tuple[str, ...] = ("", "NA", "null")
#: Reasons a row is rejected (the keys of ``skipped_rows`` in the quality summary).
REASONS: tuple[str, ...] = (
    "non_numeric",
    "wrong_column_count",
    "truncated_last_line",
    "z_mismatch",
    "out_of_bounds",
)
#: The column of z at each plane.
Z_COLUMNS: tuple[int, ...] = tuple(p * N_FEATURES + FEATURES.index("z") for p in range(N_PLANES))
#: The longest line accepted (a real row is about 1.5 kB).
MAX_LINE_BYTES = 1 << 20
#: A failing block is tried again in pieces of about this many bytes before line by line.
PIECE_BYTES = 1 << 16

_PLANE_Z = np.asarray(PLANE_Z, dtype=np.float64)
_F32_MAX = float(np.finfo(np.float32).max)
_STRIP = " \t"  # what pyarrow trims around a number
# What pyarrow's float parser accepts, after the spaces and one pair of quotes are stripped.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# The NaN spellings pyarrow's float parser accepts (read as missing values).
_NAN = re.compile(r"[+-]?nan(?:\([0-9A-Za-z_]*\))?", re.IGNORECASE)
_FEATURE = {f: i for i, f in enumerate(FEATURES)}


class InputFileError(ValueError):
    """A track file that does not follow the training-file format; the message names the line."""


@dataclass
class BadLine:
    line: int
    reason: str
    message: str


@dataclass
class Block:
    """Whole data lines of the file, from line ``first_line``: ``lines`` line breaks, and
    ``unterminated`` for a last line with no line break. ``data`` may be a view into a buffer
    of a :class:`BufferPool`, valid until :meth:`release`."""

    first_line: int
    data: bytes | memoryview
    unterminated: bool = False
    lines: int = -1
    _pool: BufferPool | None = field(default=None, repr=False)
    _buffer: bytearray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.lines < 0:  # not counted by the reader
            self.lines = bytes(self.data).count(b"\n")

    def release(self) -> None:
        """Hand the buffer back to its pool (the data are not to be used after this)."""
        if self._pool is not None and self._buffer is not None:
            self._pool.put(self._buffer)
            self._buffer = None
            self.data = b""


class BufferPool:
    """``count`` reusable buffers of ``size`` bytes: blocks are read into them, so the file's
    bytes do not land in fresh memory block after block (first-touched pages cost more than the
    copies); a reader waits for a buffer that a parsed block hands back."""

    def __init__(self, count: int, size: int) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(size))

    def get(self) -> bytearray:
        return self._free.get()

    def put(self, buffer: bytearray) -> None:
        self._free.put(buffer)


@dataclass
class Parsed:
    """A block's accepted rows (float32, nulls for missing values) and their statistics."""

    table: pa.Table
    vmin: np.ndarray  # (150,) float32, NaN for a column with no value
    vmax: np.ndarray
    nulls: np.ndarray  # (150,) int64
    missing_planes: np.ndarray  # (26,) rows by number of planes with a missing value
    bad: list[BadLine] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.table.num_rows


# --------------------------------------------------------------------------------------------
# The file


def open_source(path: str | Path) -> tuple[BinaryIO, str | None]:
    """Open the CSV for reading bytes: ``(stream, "gzip" or None)``; gzip found by its magic."""
    return open_maybe_gzip(input_file(path, "track CSV"))


def _gzip_error(path: Path, err: BaseException) -> InputFileError:
    return InputFileError(gzip_error(path, err))


def read_header(fh: BinaryIO, path: Path) -> None:
    """Read the first line; raise InputFileError unless it holds the 150 column names in order."""
    try:
        first = fh.readline(MAX_LINE_BYTES)
    except GZIP_ERRORS as err:
        raise _gzip_error(path, err) from None
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


def check_header(path: str | Path) -> None:
    """Raise InputFileError unless the file's first line is the training-file header."""
    fh, _ = open_source(path)
    with fh:
        read_header(fh, Path(path))


def _fill(fh: BinaryIO, path: Path, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends; the number of bytes read."""
    got = 0
    while got < len(view):
        try:
            n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        except GZIP_ERRORS as err:
            raise _gzip_error(path, err) from None
        if not n:
            break
        got += n
    return got


def iter_blocks(
    fh: BinaryIO, path: Path, block_size: int, pool: BufferPool | None = None
) -> Iterator[Block]:
    """Blocks of whole lines of ``fh`` (positioned after the header), about ``block_size``
    bytes each. Only the file's last line, when it has no line break, is ``unterminated``.

    With ``pool`` (buffers of at least ``block_size + MAX_LINE_BYTES`` bytes) each block is a
    view into a pooled buffer, to :meth:`Block.release` once parsed; the next block waits for
    a free buffer. Without, each block has a buffer of its own.
    """
    line = 2
    rest = b""
    while True:
        buf = pool.get() if pool is not None else bytearray(block_size + MAX_LINE_BYTES)
        if len(buf) < len(rest) + block_size:
            raise ValueError("the pool's buffers are smaller than a block and a line")
        view = memoryview(buf)
        view[: len(rest)] = rest
        end = len(rest) + _fill(fh, path, view[len(rest) : len(rest) + block_size])
        if end == len(rest):  # the end of the file
            if pool is not None:
                pool.put(buf)
            if rest.strip():
                yield Block(line, rest, True, rest.count(b"\n"))
            return
        cut = buf.rfind(b"\n", 0, end)
        if cut < 0:
            if end > MAX_LINE_BYTES:
                raise InputFileError(
                    f"{path}:{line}: line is longer than {MAX_LINE_BYTES} bytes (not a track row)"
                )
            rest = bytes(view[:end])
            if pool is not None:
                pool.put(buf)
            continue
        rest = bytes(view[cut + 1 : end])  # a part of a line: copied, the buffer moves on
        lines = buf.count(b"\n", 0, cut + 1)
        yield Block(line, view[: cut + 1], False, lines, pool, buf)
        line += lines


# --------------------------------------------------------------------------------------------
# The fast path: pyarrow, then checks over whole columns


def _parse(data: bytes | memoryview) -> pa.Table:
    """pyarrow's parse of whole data lines, one chunk per column (raises ArrowInvalid)."""
    return pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pacsv.ReadOptions(
            column_names=list(COLUMNS), use_threads=False, block_size=len(data) + 1
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=SCHEMA, null_values=list(NULL_VALUES), quoted_strings_can_be_null=True
        ),
    )


def _column(table: pa.Table, j: int) -> pa.Array:
    col = table.column(j)
    if col.num_chunks == 1:
        return col.chunk(0)
    return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], pa.float32())


def read_fast(data: bytes | memoryview, bounds: Bounds) -> Parsed | None:
    """Parse and check whole data lines; None when any line fails (then read them slowly)."""
    try:
        table = _parse(data)
    except pa.ArrowInvalid:
        return None
    n = table.num_rows
    vmin = np.full(len(COLUMNS), np.nan, np.float32)
    vmax = np.full(len(COLUMNS), np.nan, np.float32)
    nulls = np.zeros(len(COLUMNS), np.int64)
    hist = np.zeros(N_PLANES + 1, np.int64)
    if n == 0:
        return Parsed(table, vmin, vmax, nulls, hist)
    values: list[np.ndarray] = []
    missing: np.ndarray | None = None  # (n, planes): a plane with a missing value
    for j in range(len(COLUMNS)):
        array = _column(table, j)
        v = float32_values(array)
        lo, hi = v.min(), v.max()  # NaN when a value is missing (null or a NaN spelling)
        if np.isnan(lo) or np.isnan(hi):
            nan = np.isnan(v)
            k = int(nan.sum())
            if k > array.null_count:  # NaN spellings: nulls, as empty cells
                table = table.set_column(j, COLUMNS[j], pa.array(v, mask=nan))
            nulls[j] = k
            if missing is None:
                missing = np.zeros((n, N_PLANES), bool)
            missing[:, j // N_FEATURES] |= nan
            lo, hi = (np.fmin.reduce(v), np.fmax.reduce(v)) if k < n else (np.nan, np.nan)
        if np.isinf(lo) or np.isinf(hi):
            return None  # inf, or beyond float32: the slow path says which
        vmin[j], vmax[j] = lo, hi
        values.append(v)
    z = _PLANE_Z
    with np.errstate(invalid="ignore"):
        zmin, zmax = vmin[list(Z_COLUMNS)], vmax[list(Z_COLUMNS)]
        if (np.abs(zmin - z) > Z_TOLERANCE).any() or (np.abs(zmax - z) > Z_TOLERANCE).any():
            return None
    if _maybe_out_of_bounds(vmin, vmax, values, bounds):
        return None
    if missing is None:
        hist[0] = n
    else:
        hist += np.bincount(missing.sum(axis=1), minlength=N_PLANES + 1)
    return Parsed(table, vmin, vmax, nulls, hist)


def _maybe_out_of_bounds(
    vmin: np.ndarray, vmax: np.ndarray, values: list[np.ndarray], bounds: Bounds
) -> bool:
    """True when a row is out of bounds. The column ranges clear most planes at once; a plane
    they do not clear is checked row by row (vectorised)."""
    f = _FEATURE
    lo = np.nan_to_num(vmin.astype(np.float64)).reshape(N_PLANES, N_FEATURES)
    hi = np.nan_to_num(vmax.astype(np.float64)).reshape(N_PLANES, N_FEATURES)
    largest = np.maximum(np.abs(lo), np.abs(hi))  # the largest |value| of each column
    x, y, px, py, pz = (largest[:, f[k]] for k in ("x", "y", "px", "py", "pz"))
    unsure = bounds.violations(x, y, px, py, pz) | (lo[:, f["pz"]] <= bounds.min_pz)
    for plane in np.nonzero(unsure)[0]:
        cols = [values[plane * N_FEATURES + f[k]] for k in ("x", "y", "px", "py", "pz")]
        if bounds.violations(*cols).any():
            return True
    return False


# --------------------------------------------------------------------------------------------
# The slow path: line by line, to name each bad line


def _cell_error(text: str) -> str | None:
    """Why one cell is not accepted, or None (a number, or a missing value)."""
    cell = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if cell in NULL_VALUES:
        return None
    cell = cell.strip(_STRIP)
    if _NAN.fullmatch(cell):
        return None  # pyarrow reads a NaN: a missing value
    if not _NUMBER.fullmatch(cell):
        return f"holds {text!r}, not a number"
    if abs(float(cell)) > _F32_MAX:
        return f"holds {text!r}, beyond the float32 range"
    return None


def _cell_value(text: str) -> float:
    """A cell accepted by _cell_error as a float (NaN for a missing value)."""
    cell = text.strip(_STRIP + '"')
    return float("nan") if cell in NULL_VALUES or _NAN.fullmatch(cell) else float(cell)


def check_line(text: str, line: int, unterminated: bool, bounds: Bounds) -> BadLine | None:
    """Why one data line is rejected, or None."""
    cells = text.split(",")
    if len(cells) != len(COLUMNS):
        if unterminated and len(cells) < len(COLUMNS):
            return BadLine(
                line,
                "truncated_last_line",
                f"the last line is cut short ({len(cells)} of {len(COLUMNS)} values, "
                "no line break): the file looks truncated",
            )
        return BadLine(line, "wrong_column_count", f"{len(cells)} values, expected {len(COLUMNS)}")
    for i, cell in enumerate(cells):
        problem = _cell_error(cell)
        if problem:
            if unterminated and i == len(cells) - 1:
                return BadLine(
                    line,
                    "truncated_last_line",
                    f"the last line ends in {cell!r} with no line break: the file looks truncated",
                )
            return BadLine(line, "non_numeric", f"column {i + 1} ({COLUMNS[i]}) {problem}")
    states = np.array([_cell_value(c) for c in cells], np.float64).reshape(N_PLANES, N_FEATURES)
    for plane, col in enumerate(Z_COLUMNS):
        z = states[plane, FEATURES.index("z")]
        if abs(float(np.float32(z)) - PLANE_Z[plane]) > Z_TOLERANCE:  # False for NaN
            return BadLine(
                line,
                "z_mismatch",
                f"column {col + 1} ({COLUMNS[col]}): z of plane {plane} is "
                f"{cells[col].strip(_STRIP + chr(34))}, expected {PLANE_Z[plane]}",
            )
    bad = np.nonzero(bounds.out_of_bounds(states))[0]
    if len(bad):
        plane = int(bad[0])
        feature, words = bounds.explain(states[plane])  # type: ignore[misc]
        col = plane * N_FEATURES + _FEATURE[feature]
        return BadLine(line, "out_of_bounds", f"column {col + 1} ({COLUMNS[col]}): {words}")
    return None


def _read_lines(
    data: bytes, first_line: int, unterminated: bool, bounds: Bounds
) -> tuple[bytes, list[BadLine]]:
    """Check each line: the lines kept (bytes) and the bad lines, with file line numbers."""
    keep: list[bytes] = []
    bad: list[BadLine] = []
    lines = data.split(b"\n")
    if not unterminated:
        lines = lines[:-1]  # after the final line break
    for i, raw in enumerate(lines):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text:
            continue  # an empty line, as pyarrow skips it
        problem = check_line(text, first_line + i, unterminated and i == len(lines) - 1, bounds)
        if problem is None:
            keep.append(raw)
        else:
            bad.append(problem)
    return b"\n".join(keep) + b"\n" if keep else b"", bad


def _pieces(block: Block, size: int) -> Iterator[Block]:
    """``block`` (its data as bytes) cut into blocks of whole lines of about ``size`` bytes."""
    data, start, line = bytes(block.data), 0, block.first_line
    while start < len(data):
        cut = data.find(b"\n", min(start + size, len(data)) - 1)
        end = len(data) if cut < 0 else cut + 1
        piece = data[start:end]
        lines = piece.count(b"\n")
        yield Block(line, piece, block.unterminated and end == len(data), lines)
        line += lines
        start = end


def _merge(parts: list[Parsed], bad: list[BadLine]) -> Parsed:
    tables = [p.table for p in parts if p.rows]
    empty = np.full(len(COLUMNS), np.nan, np.float32)
    return Parsed(
        pa.concat_tables(tables) if tables else SCHEMA.empty_table(),
        np.fmin.reduce([empty, *(p.vmin for p in parts)]),
        np.fmax.reduce([empty, *(p.vmax for p in parts)]),
        np.sum([np.zeros(len(COLUMNS), np.int64), *(p.nulls for p in parts)], axis=0),
        np.sum([np.zeros(N_PLANES + 1, np.int64), *(p.missing_planes for p in parts)], axis=0),
        bad,
    )


def _read_slowly(piece: Block, bounds: Bounds, path: Path) -> Parsed:
    """A piece that fails the fast path, line by line: its good lines and its bad lines."""
    kept, bad = _read_lines(bytes(piece.data), piece.first_line, piece.unterminated, bounds)
    parsed = read_fast(kept, bounds) if kept else _merge([], [])
    if parsed is None:  # cannot happen: the line by line check is the stricter
        last = piece.first_line + piece.lines
        raise InputFileError(
            f"{path}:{piece.first_line}-{last}: these lines pass the line by line check but "
            "not the block check (a bug; please report it)"
        )
    parsed.bad = bad
    return parsed


def read_block(block: Block, bounds: Bounds, path: Path) -> Parsed:
    """The accepted rows of a block and its bad lines (named by file line), in file order.

    The fast path first; when it fails, the block again in pieces of PIECE_BYTES, and a piece
    that fails too line by line. The block's buffer is released when this returns.
    """
    try:
        parsed = read_fast(block.data, bounds)
        if parsed is not None:
            return parsed
        if len(block.data) <= PIECE_BYTES:
            return _read_slowly(block, bounds, path)
        parts = [
            read_fast(piece.data, bounds) or _read_slowly(piece, bounds, path)
            for piece in _pieces(block, PIECE_BYTES)
        ]
        return _merge(parts, [b for p in parts for b in p.bad])
    finally:
        block.release()
