"""Stage 2: the training-file CSV -> Parquet (float32), streamed, with a data-quality summary."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tracklstm.constants import COLUMNS, FEATURES, N_PLANES, PLANE_Z, Z_TOLERANCE
from tracklstm.io import atomic_path, setup_logging, write_json

log = logging.getLogger(__name__)


class InputFileError(ValueError):
    """A track file that does not follow the training-file format."""


SCHEMA = pa.schema([(name, pa.float32()) for name in COLUMNS])


def check_header(path: Path) -> None:
    """Raise InputFileError unless the first line holds the 150 column names in order."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip().split(",")
    header = [h.strip() for h in header]
    if header != list(COLUMNS):
        if len(header) != len(COLUMNS):
            raise InputFileError(
                f"{path}:1: header has {len(header)} columns, expected {len(COLUMNS)} "
                f"(x,y,z,px,py,pz,x1,...,pz24)"
            )
        bad = next(i for i, (a, b) in enumerate(zip(header, COLUMNS, strict=True)) if a != b)
        raise InputFileError(
            f"{path}:1: header column {bad + 1} is {header[bad]!r}, expected {COLUMNS[bad]!r}"
        )


def convert(
    csv_path: str | Path,
    parquet_path: str | Path,
    quality_path: str | Path | None = None,
    *,
    block_size: int = 8 << 20,
) -> dict:
    """Stream ``csv_path`` into ``parquet_path`` and return the data-quality summary."""
    csv_path, parquet_path = Path(csv_path), Path(parquet_path)
    check_header(csv_path)
    read_opts = pacsv.ReadOptions(block_size=block_size)
    convert_opts = pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True)
    n_rows = n_complete = 0
    vmin = np.full(len(COLUMNS), np.inf)
    vmax = np.full(len(COLUMNS), -np.inf)
    z_cols = [COLUMNS.index(f"z{p}" if p else "z") for p in range(N_PLANES)]
    with atomic_path(parquet_path) as tmp:
        reader = pacsv.open_csv(csv_path, read_options=read_opts, convert_options=convert_opts)
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for batch in reader:
                arr = np.column_stack(
                    [batch.column(i).to_numpy(zero_copy_only=False) for i in range(len(COLUMNS))]
                ).astype(np.float64)
                z = arr[:, z_cols]
                dev = np.abs(z - np.asarray(PLANE_Z))
                bad = np.nanmax(dev, axis=1) > Z_TOLERANCE if len(arr) else np.array([])
                if bad.any():
                    row = int(np.argmax(bad))
                    plane = int(np.nanargmax(dev[row]))
                    raise InputFileError(
                        f"{csv_path}:{n_rows + row + 2}: z of plane {plane} is {z[row, plane]}, "
                        f"expected {PLANE_Z[plane]}"
                    )
                n_rows += len(arr)
                n_complete += int((~np.isnan(arr).any(axis=1)).sum())
                if len(arr):
                    vmin = np.fmin(vmin, np.nanmin(np.where(np.isnan(arr), np.inf, arr), axis=0))
                    vmax = np.fmax(vmax, np.nanmax(np.where(np.isnan(arr), -np.inf, arr), axis=0))
                writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=SCHEMA))
    quality = {
        "file": str(csv_path),
        "rows": n_rows,
        "complete_rows": n_complete,
        "rows_with_nulls": n_rows - n_complete,
        "skipped_rows": {},
        "ranges": {
            f: {"min": float(np.min(vmin[i :: len(FEATURES)])), "max": float(np.max(vmax[i :: len(FEATURES)]))}
            for i, f in enumerate(FEATURES)
        },
    }
    if quality_path is not None:
        write_json(quality_path, quality)
    log.info("%s: %d rows (%d complete) -> %s", csv_path, n_rows, n_complete, parquet_path)
    return quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracklstm to_parquet", description=__doc__)
    parser.add_argument("--csv", required=True, help="track CSV in the training-file format")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--quality", help="data-quality JSON to write")
    parser.add_argument(
        "--bad-rows",
        choices=("error", "skip"),
        default="error",
        help="malformed rows: stop with an error naming the line, or skip and count them",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        convert(args.csv, args.out, args.quality)
    except InputFileError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
