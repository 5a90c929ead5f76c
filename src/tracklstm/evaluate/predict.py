"""Predict the challenge's test rows with an exported model: x, y, px, py, pz at the asked plane.

Input (the challenge's test-input format): no header, one track per line, variable length; a row
holds 6 values per state (x, y, z, px, py, pz; the first N states of the track) and then one more
value, the z of the plane to predict. The last ``window_length`` states of each row (7 for the
reference model) go into the model; they must lie on consecutive planes, and the asked z must be
the plane right after the last of them. A gzip file (``.csv.gz``, or gzip bytes under any name)
is read decompressed. Output (the answers format): no header, one line per
row, ``x,y,px,py,pz`` at that plane, 7 significant digits.

Rows are checked all at once (numpy), then predicted in batches; a bad row stops the run with an
error that names its line. The model is the TorchScript file of the export stage (``model.ts``);
its ONNX file (``model.onnx``) works too and runs under onnxruntime, with the same CPU threads,
and so does its torch.export file (``model.pt2``). ``tracklstm.export.loading`` loads and runs the
model (``load_model``, ``predict_windows``); this module owns the challenge rows: reading and
checking them, and writing the answers.
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tracklstm import stage_cli
from tracklstm.constants import (
    ANSWER_FEATURES,
    ANSWER_INDEX,
    FEATURES,
    N_FEATURES,
    PLANE_Z,
    Z_TOLERANCE,
)
from tracklstm.data.bounds import Bounds
from tracklstm.export.loading import (
    DEFAULT_BATCH,
    has_covariance,
    is_aoti_package,
    load_model,
    predict_windows,
    predict_with_covariance,
)
from tracklstm.files import atomic_path, check_outputs, read_bytes
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

#: What runs each kind of model file (``load_model`` decides by the suffix).
ENGINES: dict[str, str] = {".onnx": "onnxruntime", ".pt2": "torch.export"}


def engine_name(path: str | Path) -> str:
    """The engine that runs a model file: torchscript, onnxruntime, aotinductor, torch.export."""
    if Path(path).suffix == ".pt2" and is_aoti_package(path):
        return "aotinductor"
    return ENGINES.get(Path(path).suffix, "torchscript")


#: How many bad rows an error message lists.
MAX_REPORTED = 5
#: Rows parsed at a time by one thread (small enough to stay in the CPU's caches).
CHUNK_ROWS = 8192


class ChallengeInputError(ValueError):
    """A test-input file or row that cannot be predicted; the message names the line."""


@dataclass
class ChallengeRows:
    """Parsed test rows, ready for the model."""

    windows: np.ndarray  # (N, window_length, 6) float32, physical units
    target_plane: np.ndarray  # (N,) index into PLANE_Z of the plane to predict
    lines: np.ndarray  # (N,) 1-based line number of each row in the file


def _parse_values(
    path: Path, rows: list[bytes], n_values: np.ndarray, lines: np.ndarray
) -> np.ndarray:
    """Every value of the rows, in order, as one flat float64 array.

    The rows become one column (a value per line) for pandas' C parser: fast, and the same
    parse for rows of any length. An empty field or "nan" is NaN (reported by the row check);
    a field that is not a number raises with its line.
    """
    column = b"\n".join(rows).replace(b",", b"\n") + b"\n"  # the last empty field counts too
    try:
        values = pd.read_csv(
            io.BytesIO(column),
            header=None,
            names=[0],
            dtype=np.float64,
            engine="c",
            skip_blank_lines=False,  # an empty field is a NaN, not nothing
            na_filter=True,  # empty cells, "nan", "NA": NaN, reported by the row check
        )[0].to_numpy()
    except (ValueError, pd.errors.ParserError):
        _raise_first_bad_field(path, rows, lines)
        raise
    if len(values) != int(n_values.sum()):  # e.g. a quoted field holding a comma
        _raise_first_bad_field(path, rows, lines)
        raise ChallengeInputError(f"{path}: the rows' values could not be told apart (quotes?)")
    return values


def _raise_first_bad_field(path: Path, rows: list[bytes], lines: np.ndarray) -> None:
    """Find the first field that is not a number (slow path, only when parsing failed)."""
    for i, row in enumerate(rows):
        for j, field in enumerate(row.split(b",")):
            try:
                float(field)
            except ValueError:
                shown = field.strip()[:40].decode("utf-8", errors="replace")
                raise ChallengeInputError(
                    f"{path}, line {lines[i]}, value {j + 1}: {shown!r} is not a number"
                ) from None


def read_challenge_rows(
    path: str | Path,
    window_length: int = defaults("windows")["length"],
    z_tolerance: float = Z_TOLERANCE,
    chunk_rows: int = CHUNK_ROWS,
    bounds: Bounds | None = None,
    threads: int = 1,
) -> ChallengeRows:
    """Read and check a test-input file; the last ``window_length`` states of each row.

    Raises ChallengeInputError naming the lines of the (first few) rows that cannot be predicted:
    malformed, off the planes, or with a state (any of the row's, not only the window's) beyond
    the physical limits (``bounds``; default the config schema's ``conversion.bounds``). A file
    with no row, or a blank line before the last row, is an error too.
    ``threads`` chunks of ``chunk_rows`` rows are parsed at a time.
    """
    path = Path(path)
    bounds = bounds or Bounds.from_settings()
    rows = _read_lines(path)
    while rows and not rows[-1].strip():  # blank lines at the end answer nothing: fine
        rows.pop()
    if not rows:
        raise ChallengeInputError(f"{path}: no rows to predict (the file is empty)")
    blank = next((i for i, row in enumerate(rows) if not row.strip()), None)
    if blank is not None:
        raise ChallengeInputError(
            f"{path}, line {blank + 1}: blank line between rows: the answers keep the input's "
            "lines one for one, so every line before the last must hold a track"
        )
    lines = np.arange(1, len(rows) + 1, dtype=np.int64)
    windows = np.empty((len(rows), window_length, N_FEATURES), dtype=np.float32)
    target_plane = np.empty(len(rows), dtype=np.int64)

    def read(start: int) -> tuple[int, list[str]]:
        stop = min(start + chunk_rows, len(rows))
        return _read_chunk(
            path,
            rows[start:stop],
            lines[start:stop],
            window_length,
            z_tolerance,
            windows[start:stop],
            target_plane[start:stop],
            bounds,
        )

    # pandas' parser and numpy release the GIL: chunks parse in parallel, and small ones stay
    # in the CPU's caches. The results come back in file order (the first error is the first).
    with ThreadPoolExecutor(max(1, threads)) as pool:
        chunks = list(pool.map(read, range(0, len(rows), chunk_rows)))
    n_bad = sum(n for n, _ in chunks)
    details = [message for _, messages in chunks for message in messages][:MAX_REPORTED]
    if n_bad:
        more = f" (and {n_bad - len(details)} more)" if n_bad > len(details) else ""
        raise ChallengeInputError(
            f"{path}: {n_bad} of {len(rows)} rows cannot be predicted: " + "; ".join(details) + more
        )
    return ChallengeRows(windows, target_plane, lines)


def _read_lines(path: Path) -> list[bytes]:
    """The file's lines (gzip is read decompressed); ChallengeInputError names the file (and
    line) when it is not text."""
    try:
        data = read_bytes(path, "test-input")
    except ValueError as err:
        raise ChallengeInputError(str(err)) from None
    try:
        if not data.isascii():
            data.decode("utf-8")
        return data.splitlines()
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ChallengeInputError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}): "
            "not a challenge test-input file?"
        ) from None


def nearest_plane(z: np.ndarray) -> np.ndarray:
    """Index into PLANE_Z of the plane nearest to each z."""
    planes = np.asarray(PLANE_Z)
    hi = np.clip(np.searchsorted(planes, z), 1, len(planes) - 1)
    lo = hi - 1
    return np.where(np.abs(z - planes[lo]) <= np.abs(planes[hi] - z), lo, hi)


def _read_chunk(
    path: Path,
    rows: list[bytes],
    lines: np.ndarray,
    window_length: int,
    z_tolerance: float,
    windows_out: np.ndarray,
    target_out: np.ndarray,
    bounds: Bounds,
) -> tuple[int, list[str]]:
    """Parse and check rows into ``windows_out``/``target_out``: the number of bad rows, and
    the messages of the first MAX_REPORTED."""
    n = len(rows)
    n_values = np.fromiter((r.count(b",") + 1 for r in rows), dtype=np.int64, count=n)
    values = _parse_values(path, rows, n_values, lines)
    ends = np.cumsum(n_values)  # row i is values[ends[i] - n_values[i] : ends[i]]
    problem = np.zeros(n, dtype=np.int8)  # 0: fine; else the first problem found (_describe)

    def flag(mask: np.ndarray, code: int) -> None:
        problem[(problem == 0) & mask] = code

    n_states = (n_values - 1) // N_FEATURES
    flag((n_values - 1) % N_FEATURES != 0, 1)
    flag(np.logical_or.reduceat(~np.isfinite(values), ends - n_values), 2)
    flag(n_states < window_length, 3)

    # The window: the last window_length states before the target z (rows flagged above get
    # harmless indices).
    width = window_length * N_FEATURES
    cols = (ends - 1 - width)[:, None] + np.arange(width)[None, :]
    windows = values[np.clip(cols, 0, len(values) - 1)].reshape(n, window_length, N_FEATURES)
    target_z = values[ends - 1]

    planes = np.asarray(PLANE_Z)
    z = np.nan_to_num(windows[:, :, FEATURES.index("z")], nan=-1e9)
    plane = nearest_plane(z)
    flag(~(np.abs(z - planes[plane]) <= z_tolerance).all(axis=1), 4)
    last = plane[:, -1]
    consecutive = plane == (last[:, None] - (window_length - 1) + np.arange(window_length))
    flag(~consecutive.all(axis=1), 5)
    next_z = planes[np.minimum(last + 1, len(planes) - 1)]
    flag(~((last + 1 < len(planes)) & (np.abs(target_z - next_z) <= z_tolerance)), 6)
    # Every state of the row (not only the window's) within the physical limits: one rule.
    starts = ends - n_values
    state_row = np.repeat(np.arange(n), n_states)
    first_state = np.cumsum(n_states) - n_states
    offsets = starts[state_row] + N_FEATURES * (np.arange(len(state_row)) - first_state[state_row])
    states = values[offsets[:, None] + np.arange(N_FEATURES)[None, :]]
    beyond = bounds.out_of_bounds(states)
    flag(np.bincount(state_row, weights=beyond, minlength=n) > 0, 7)

    windows_out[:] = windows
    target_out[:] = last + 1
    bad = np.flatnonzero(problem)
    return len(bad), [
        f"line {lines[i]}: "
        + (
            _out_of_bounds(values[ends[i] - n_values[i] : ends[i] - 1], bounds)
            if problem[i] == 7
            else _describe(
                int(problem[i]),
                values[ends[i] - n_values[i] : ends[i]],
                window_length,
                z[i],
                z_tolerance,
            )
        )
        for i in bad[:MAX_REPORTED]
    ]


def _out_of_bounds(row_states: np.ndarray, bounds: Bounds) -> str:
    """Which state of a row (its values, 6 per state) is beyond the physical limits, and why."""
    for j, state in enumerate(row_states.reshape(-1, N_FEATURES)):
        reason = bounds.explain(state)
        if reason is not None:
            return f"state {j + 1} (z = {state[2]:g} cm): {reason[1]}"
    return "a state is beyond the physical limits (conversion.bounds)"


def _describe(
    code: int, row: np.ndarray, window_length: int, z: np.ndarray, z_tolerance: float
) -> str:
    """Why one row cannot be predicted (``row``: its values; ``z``: its window's z values)."""
    n_values = len(row)
    n_states = (n_values - 1) // N_FEATURES
    planes = np.asarray(PLANE_Z)
    if code == 1:
        return (
            f"{n_values} values; a row holds 6 per state (x, y, z, px, py, pz) and then the z of "
            "the plane to predict"
        )
    if code == 2:
        j = int(np.flatnonzero(~np.isfinite(row))[0])
        return f"value {j + 1} is empty or not finite"
    if code == 3:
        return f"{n_states} states; the model needs the last {window_length}"
    if code == 4:
        off = [f"{v:g}" for v in z if np.abs(planes - v).min() > z_tolerance]
        return f"state z = {', '.join(off[:3])} cm is not the z of a detector plane"
    if code == 5:
        zs = ", ".join(f"{v:g}" for v in z)
        return f"the last {window_length} states (z = {zs} cm) are not on consecutive planes"
    last = int(nearest_plane(z[-1:])[0])
    if last + 1 >= len(planes):
        return f"the last state is on the last plane (z = {planes[last]:g} cm): nothing follows"
    return (
        f"target z = {row[-1]:g} cm is not the plane after the row's last state "
        f"(last state z = {planes[last]:g} cm, next plane z = {planes[last + 1]:g} cm)"
    )


def write_answers(path: str | Path, states: np.ndarray) -> None:
    """The answers file: x,y,px,py,pz per line, no header, 7 significant digits."""
    answers = np.asarray(states)[:, list(ANSWER_INDEX)]
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        if len(answers):
            np.savetxt(fh, answers, fmt="%.7g", delimiter=",")


def covariance_header() -> str:
    """The columns of a covariance file: the 15 entries of the upper triangle, row by row."""
    names = ANSWER_FEATURES
    return ",".join(f"c_{a}_{b}" for i, a in enumerate(names) for b in names[i:])


def write_covariances(path: str | Path, covs: np.ndarray) -> None:
    """One line per row: the 15 upper-triangle entries of its (5, 5) covariance of x, y, px,
    py, pz (cm^2, cm GeV/c, (GeV/c)^2), after a header line naming them."""
    rows, cols = np.triu_indices(len(ANSWER_FEATURES))
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(covariance_header() + "\n")
        if len(covs):
            np.savetxt(fh, covs[:, rows, cols], fmt="%.7g", delimiter=",")


def predict_file(
    model_path: str | Path,
    inputs_csv: str | Path,
    out_csv: str | Path,
    *,
    batch: int = DEFAULT_BATCH,
    bounds: Bounds | None = None,
    covariance_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Predict every row of a test-input file; returns counts and timings. A row with a state
    beyond ``bounds`` (default: the schema's ``conversion.bounds``) is refused. With
    ``covariance_csv`` (a model with ``forward_with_covariance``), each answer's covariance is
    written there, line for line."""
    model, meta = load_model(model_path)
    if covariance_csv is not None and not has_covariance(model):
        raise ChallengeInputError(
            f"{model_path}: this model predicts no covariance (export a model built with "
            "model.covariance: true, as TorchScript)"
        )
    window_length = int(meta["window_length"])
    t0 = time.perf_counter()
    rows = read_challenge_rows(
        inputs_csv, window_length, bounds=bounds, threads=torch.get_num_threads()
    )
    t1 = time.perf_counter()
    covs = None
    if covariance_csv is None:
        states = predict_windows(model, rows.windows, batch)
    else:
        states, covs = predict_with_covariance(model, rows.windows, batch)
    t2 = time.perf_counter()
    broken = ~np.isfinite(states[:, list(ANSWER_INDEX)]).all(axis=1)
    if broken.any():
        first = int(rows.lines[np.flatnonzero(broken)[0]])
        raise ChallengeInputError(
            f"{model_path}: the model's answer is NaN or infinite for {int(broken.sum())} of "
            f"{len(states)} rows (the first: line {first} of {inputs_csv}); no answers written"
        )
    write_answers(out_csv, states)
    if covs is not None and covariance_csv is not None:
        write_covariances(covariance_csv, covs)
    t3 = time.perf_counter()
    n = len(rows.windows)
    stats = {
        "rows": n,
        "seconds_read": round(t1 - t0, 3),
        "seconds_model": round(t2 - t1, 3),
        "seconds_write": round(t3 - t2, 3),
        "rows_per_s_model": round(n / (t2 - t1), 1) if n and t2 > t1 else None,
        "rows_per_s": round(n / (t3 - t0), 1) if n and t3 > t0 else None,  # read to written
        "engine": engine_name(model_path),
        "threads": torch.get_num_threads(),
        "batch": batch,
    }
    log.info(
        "%d rows in %.2fs (%s rows/s): read %.2fs, model %.2fs (%s rows/s, %s, %d threads), "
        "write %.2fs -> %s",
        n, t3 - t0, stats["rows_per_s"], t1 - t0, t2 - t1, stats["rows_per_s_model"],
        stats["engine"], stats["threads"], t3 - t2, out_csv,
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm predict", __doc__, stage="predict")
    parser.add_argument(
        "--model", required=True, help="model.ts (or model.onnx, model.pt2) from the export stage"
    )
    parser.add_argument("--inputs", required=True, help="test-input CSV (challenge format)")
    parser.add_argument("--out", required=True, help="answers CSV to write (x,y,px,py,pz)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per model call")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    parser.add_argument(
        "--covariance",
        help="also write each answer's covariance here (15 values per line, after a header; "
        "a model with a covariance, TorchScript)",
    )
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")

    def body() -> None:
        check_outputs(
            {"--out": args.out, "--covariance": args.covariance},
            {"--model": args.model, "--inputs": args.inputs},
        )
        conversion = stage_cli.settings("predict", args.settings)["conversion"]
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        predict_file(
            args.model,
            args.inputs,
            args.out,
            batch=args.batch,
            bounds=Bounds.from_settings(conversion),
            covariance_csv=args.covariance,
        )

    return stage_cli.run(body, log)  # bad rows (ChallengeInputError), files, models


if __name__ == "__main__":
    raise SystemExit(main())
