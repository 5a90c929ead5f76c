"""Stage 3: Parquet tracks -> windowed HDF5 tensors, split by track, with the normalization.

Layout of ``windows.h5``:

- groups ``train``, ``validation``, ``test``, each with ``inputs`` (N, L, 6) float32,
  ``targets`` (N, 6) float32, ``track`` (N,) int64 (row of the track in the Parquet data) and
  ``target_plane`` (N,) int8; all in physical units (cm, GeV/c).
- ``tracks/<split>``: the track rows of each split.
- every dataset's attribute ``sha256``: the checksum of its values as written; every stage that
  reads the file checks the datasets it reads against it (``verify_checksums``): a file edited
  afterwards is refused, naming it.
- root attributes: ``norm_min``/``norm_max`` (6,) fitted on the training split only,
  ``features``, ``plane_z``, ``window_length``, ``stride``, ``last_target_plane``,
  ``split_seed``, ``split_fractions``, ``data_fingerprint``, ``n_tracks``, ``n_windows``
  (JSON: windows per split).

A window is kept only when its inputs and its target are all present (no empty value), so a
track with a missing plane still gives every window that does not touch that plane.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from tracklstm import stage_cli
from tracklstm.constants import COLUMNS, FEATURES, N_FEATURES, N_PLANES, PLANE_Z
from tracklstm.data.arrow_columns import float32_values
from tracklstm.data.checksums import stamp_checksums
from tracklstm.files import atomic_path, check_outputs, output_file
from tracklstm.settings import defaults

#: The schema's defaults of the windows section (config.schema.yaml), for by-hand calls.
DEFAULTS: dict[str, Any] = defaults("windows")
log = logging.getLogger("tracklstm.windows")

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Windows per HDF5 chunk of every dataset.
CHUNK = 4096
_T = TypeVar("_T")


def parquet_parts(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files of a dataset: files as given, folders expanded to their sorted parts."""
    if not isinstance(paths, str | Path):
        return [part for p in paths for part in parquet_parts(p)]
    path = Path(paths)
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(f"{path}: no .parquet files in this folder")
        return parts
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return [path]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def open_part(part: Path, **options: object) -> pq.ParquetFile:
    """A Parquet part of track data; a ValueError naming the file when it is not one (not
    Parquet, unreadable, or without the 150 numeric track columns)."""
    try:
        pf = pq.ParquetFile(part, **options)  # type: ignore[arg-type]
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{part}: not a readable Parquet file ({_one_line(err)})") from None
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise ValueError(
            f"{part}: {len(missing)} of the {len(COLUMNS)} track columns are missing ({shown}); "
            "expected a file written by to_parquet"
        )
    wrong = [c for c in COLUMNS if not pa.types.is_floating(schema.field(c).type)]
    if wrong:
        raise ValueError(
            f"{part}: column {wrong[0]} is {schema.field(wrong[0]).type}, expected floats"
        )
    return pf


def count_tracks(parts: Sequence[Path]) -> int:
    """Number of tracks (rows) in the Parquet parts, from their metadata (each part checked)."""
    return sum(open_part(p).metadata.num_rows for p in parts)


def iter_tracks(parts: Sequence[Path], batch_rows: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, tracks)`` with tracks of shape (n, 25, 6), float32, NaN for nulls.

    A part that is not track data, or fails to read, is a ValueError naming it.
    """
    row = 0
    for part in parts:
        # pre_buffer=False: pyarrow would otherwise buffer every row group of the file at once.
        pf = open_part(part, pre_buffer=False)
        batches = pf.iter_batches(batch_size=batch_rows, columns=list(COLUMNS), use_threads=False)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(
                    f"{part}: cannot read this Parquet file ({_one_line(err)})"
                ) from None
            if batch is None:
                break
            tracks = np.empty((batch.num_rows, len(COLUMNS)), np.float32)
            for i, name in enumerate(COLUMNS):
                column = batch.column(name)
                if column.type != pa.float32():  # a cast imports pyarrow.compute: only if needed
                    column = column.cast(pa.float32())
                tracks[:, i] = float32_values(column)
            tracks = tracks.reshape(-1, N_PLANES, N_FEATURES)
            yield row, tracks
            row += len(tracks)


def fingerprint(parts: Sequence[Path]) -> str:
    """sha256 over the bytes of the Parquet parts, in order: identifies the training data."""
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def split_tracks(n_tracks: int, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each track to a split (index into SPLITS), by a seeded permutation of tracks."""
    total = sum(fractions[s] for s in SPLITS)
    if total <= 0:
        raise ValueError("windows.split: the fractions must add up to more than 0")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_tracks)
    bounds = np.cumsum([fractions[s] / total for s in SPLITS]) * n_tracks
    bounds = np.round(bounds).astype(np.int64)
    labels = np.empty(n_tracks, dtype=np.int8)
    start = 0
    for i, stop in enumerate(bounds):
        labels[order[start:stop]] = i
        start = stop
    return labels


def window_offsets(
    length: int,
    stride: int = DEFAULTS["stride"],
    last_target_plane: int = DEFAULTS["last_target_plane"],
) -> np.ndarray:
    """First plane of each window: its inputs are planes off..off+length-1, its target the next."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length ({length}) and stride ({stride}) must be at least 1")
    if not 1 <= last_target_plane <= N_PLANES - 1:
        raise ValueError(f"last_target_plane must be in 1..{N_PLANES - 1}, not {last_target_plane}")
    offsets = np.arange(0, last_target_plane - length + 1, stride)
    if len(offsets) == 0:
        raise ValueError(f"window length {length} leaves no target plane up to {last_target_plane}")
    return offsets


def window_mask(tracks: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """(n, len(offsets)) True where the window's ``length`` inputs and its target are present."""
    if np.isfinite(tracks.sum(dtype=np.float64)):  # no NaN or inf at all: one pass, no copy
        return np.ones((len(tracks), len(offsets)), bool)
    missing = ~np.isfinite(tracks).all(axis=2)  # (n, planes): a plane with any empty value
    before = np.zeros((len(tracks), missing.shape[1] + 1), np.int32)
    np.cumsum(missing, axis=1, out=before[:, 1:])  # missing planes before each plane
    return before[:, offsets + length + 1] == before[:, offsets]


def make_windows(
    tracks: np.ndarray,
    length: int,
    stride: int = DEFAULTS["stride"],
    last_target_plane: int = DEFAULTS["last_target_plane"],
    *,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every window of ``length`` states whose inputs and next-plane target are all present.

    ``tracks`` is (n, 25, 6) with NaN for missing values. Returns ``inputs`` (N, length, 6),
    ``targets`` (N, 6), ``track`` (N,) (index into ``tracks``) and ``target_plane`` (N,).
    Windows are ordered by track, then offset. Vectorised: no loop over tracks or windows.
    ``mask`` is ``window_mask(tracks, offsets, length)`` when the caller has it already.
    """
    offsets = window_offsets(length, stride, last_target_plane)
    if mask is None:
        mask = window_mask(tracks, offsets, length)
    track_idx, off_idx = np.nonzero(mask)
    first = offsets[off_idx]
    # Each window (inputs and target) is one contiguous run of (length + 1) * 6 values of a
    # track's row: gather those runs, then split them.
    flat = np.ascontiguousarray(tracks).reshape(len(tracks), -1)
    runs = sliding_window_view(flat, (length + 1) * N_FEATURES, axis=1)
    sel = runs[track_idx, first * N_FEATURES]
    inputs = np.ascontiguousarray(sel[:, : length * N_FEATURES]).reshape(-1, length, N_FEATURES)
    targets = np.ascontiguousarray(sel[:, length * N_FEATURES :])
    return inputs, targets, track_idx.astype(np.int64), (first + length).astype(np.int8)


def covered_planes(mask: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """(n, 25) True where a plane is in at least one window of ``mask`` (input or target)."""
    covered = np.zeros((len(mask), N_PLANES), bool)
    for j, off in enumerate(offsets):  # a loop over offsets (at most 24), not over tracks
        covered[:, off : off + length + 1] |= mask[:, j, None]
    return covered


class _SplitWriter:
    """Appends one split's windows to its four HDF5 datasets, a chunk at a time.

    Windows are gathered into staging buffers allocated once (fresh memory for every batch
    costs more than the copies), and every full chunk goes to the file as it is, with HDF5's
    direct chunk write (no chunk cache, no conversion); the last, partial chunk is written
    normally at :meth:`close`.
    """

    def __init__(self, group: h5py.Group, length: int, capacity: int) -> None:
        specs = {
            "inputs": ((length, N_FEATURES), np.float32),
            "targets": ((N_FEATURES,), np.float32),
            "track": ((), np.int64),
            "target_plane": ((), np.int8),
        }
        self.dsets = {
            name: group.create_dataset(
                name, (0, *shape), dtype, maxshape=(None, *shape), chunks=(CHUNK, *shape)
            )
            for name, (shape, dtype) in specs.items()
        }
        capacity = -(-capacity // CHUNK) * CHUNK + CHUNK  # whole chunks, and a remainder
        self.inputs = np.empty((capacity, length * N_FEATURES), np.float32)
        self.targets = np.empty((capacity, N_FEATURES), np.float32)
        self.track = np.empty(capacity, np.int64)
        self.plane = np.empty(capacity, np.int8)
        self.length = length
        self.fill = 0  # windows staged
        self.written = 0  # windows in the file

    @property
    def count(self) -> int:
        return self.written + self.fill

    def add(
        self, tracks: np.ndarray, mask: np.ndarray, rows: np.ndarray, offsets: np.ndarray
    ) -> None:
        """Stage the windows ``mask`` (n, len(offsets)) selects of ``tracks`` (n, 25, 6),
        ordered by track then offset; ``rows``: the tracks' rows in the data."""
        n, n_off = mask.shape
        width = (self.length + 1) * N_FEATURES
        flat = np.ascontiguousarray(tracks).reshape(n, N_PLANES * N_FEATURES)
        step = (offsets[1] - offsets[0]) if n_off > 1 else 1
        runs = as_strided(  # runs[t, j]: window j of track t, inputs then target
            flat, (n, n_off, width), (flat.strides[0], step * N_FEATURES * 4, 4), writeable=False
        )
        inputs, targets = runs[..., : width - N_FEATURES], runs[..., width - N_FEATURES :]
        a = self.fill
        if mask.all():  # every window: strided copies, no index arrays
            k = n * n_off
            np.copyto(self.inputs[a : a + k].reshape(n, n_off, -1), inputs)
            np.copyto(self.targets[a : a + k].reshape(n, n_off, -1), targets)
            self.track[a : a + k].reshape(n, n_off)[:] = rows[:, None]
            self.plane[a : a + k].reshape(n, n_off)[:] = offsets + self.length
        else:
            t, j = np.nonzero(mask)
            k = len(t)
            self.inputs[a : a + k] = inputs[t, j]
            self.targets[a : a + k] = targets[t, j]
            self.track[a : a + k] = rows[t]
            self.plane[a : a + k] = offsets[j] + self.length
        self.fill += k
        self._flush()

    def _flush(self) -> None:
        """Write the staged whole chunks; keep the remainder staged."""
        whole = self.fill // CHUNK * CHUNK
        if not whole:
            return
        buffers = {
            "inputs": self.inputs,
            "targets": self.targets,
            "track": self.track,
            "target_plane": self.plane,
        }
        for name, dset in self.dsets.items():
            dset.resize(self.written + whole, axis=0)
            buf = buffers[name]
            zeros = (0,) * (dset.ndim - 1)
            for c in range(0, whole, CHUNK):
                dset.id.write_direct_chunk((self.written + c, *zeros), buf[c : c + CHUNK])
            rest = self.fill - whole
            buf[:rest] = buf[whole : self.fill]
        self.written += whole
        self.fill -= whole

    def close(self) -> None:
        """Write the last, partial chunk."""
        total = self.written + self.fill
        buffers = (self.inputs, self.targets, self.track, self.plane)
        for dset, buf in zip(self.dsets.values(), buffers, strict=True):
            dset.resize(total, axis=0)
            if self.fill:
                dset[self.written :] = buf[: self.fill].reshape(self.fill, *dset.shape[1:])
        self.written, self.fill = total, 0


def _in_background(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``items``, produced by a thread ``depth`` ahead (reading Parquet releases the GIL)."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        """Queue ``entry`` unless the consumer has stopped (then False)."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as err:  # handed to the consumer
            put((False, err))

    thread = threading.Thread(target=produce, name="windows-read", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def build(
    parquet: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    length: int = DEFAULTS["length"],
    stride: int = DEFAULTS["stride"],
    last_target_plane: int = DEFAULTS["last_target_plane"],
    fractions: dict[str, float] | None = None,
    seed: int = DEFAULTS["seed"],
    batch_rows: int = 4096,
) -> dict[str, int]:
    """Write ``out`` (HDF5) from the Parquet data; return the number of windows per split.

    One streamed pass over the tracks, ``batch_rows`` at a time (read by a thread ahead of
    the windowing; the data fingerprint is hashed by another): memory stays bounded whatever
    the number of tracks. The normalization (min-max per feature) is fitted on the values of
    the training windows only (inputs and targets), and stored as attributes.
    """
    fractions = fractions or DEFAULTS["split"]
    total = sum(fractions[s] for s in SPLITS)
    fractions = {s: fractions[s] / total for s in SPLITS} if total > 0 else fractions
    offsets = window_offsets(length, stride, last_target_plane)  # checks the settings
    out = output_file(out, "windows HDF5 output")
    parts = parquet_parts(parquet)
    n_tracks = count_tracks(parts)
    if n_tracks == 0:
        raise ValueError(f"{parquet}: no tracks")
    labels = split_tracks(n_tracks, fractions, seed)

    lo = np.full(N_FEATURES, np.inf, np.float32)
    hi = np.full(N_FEATURES, -np.inf, np.float32)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="windows-hash") as hasher,
        atomic_path(out) as tmp,
        h5py.File(tmp, "w") as h5,
    ):
        digest = hasher.submit(fingerprint, parts)
        writers = {
            split: _SplitWriter(h5.create_group(split), length, batch_rows * len(offsets))
            for split in SPLITS
        }
        for first, tracks in _in_background(iter_tracks(parts, batch_rows)):
            mask = window_mask(tracks, offsets, length)
            batch_labels = labels[first : first + len(tracks)]
            for i, split in enumerate(SPLITS):
                rows = np.nonzero(batch_labels == i)[0]
                if not len(rows):
                    continue
                sub, sub_mask = tracks[rows], mask[rows]
                if i == 0:  # the normalization: the training windows' values
                    lo, hi = _fit(sub, sub_mask, offsets, length, lo, hi)
                writers[split].add(sub, sub_mask, rows + first, offsets)
        for w in writers.values():
            w.close()
        counts = {split: writers[split].count for split in SPLITS}
        if counts["train"] == 0 or (hi <= lo).any():
            raise ValueError(
                f"{parquet}: cannot fit the normalization: {counts['train']} training windows"
                + (f", a feature with no spread (min {lo}, max {hi})" if counts["train"] else "")
            )
        tg = h5.create_group("tracks")
        for i, split in enumerate(SPLITS):
            tg.create_dataset(split, data=np.nonzero(labels == i)[0].astype(np.int64))
        h5.attrs.update(
            {
                "norm_min": lo.astype(np.float32),
                "norm_max": hi.astype(np.float32),
                "features": list(FEATURES),
                "plane_z": np.asarray(PLANE_Z),
                "window_length": length,
                "stride": stride,
                "last_target_plane": last_target_plane,
                "split_seed": seed,
                "split_fractions": json.dumps(fractions),
                "data_fingerprint": digest.result(),
                "n_tracks": n_tracks,
                "n_windows": json.dumps(counts),
            }
        )
        stamp_checksums(h5)
    log.info("%s: windows per split %s from %d tracks", out, counts, n_tracks)
    return counts


def _fit(
    tracks: np.ndarray,
    mask: np.ndarray,
    offsets: np.ndarray,
    length: int,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``lo``, ``hi`` widened by the values of the planes some window of ``mask`` covers
    (inputs or targets): those of the training windows."""
    if mask.all() and offsets[-1] + length == N_PLANES - 1:
        covered = None  # every plane of every track: whole rows, fast
    else:
        covered = covered_planes(mask, offsets, length)
        if not covered.any():
            return lo, hi
    if covered is None or covered.all():
        flat = tracks.reshape(len(tracks), -1)
        seen_lo = flat.min(axis=0).reshape(N_PLANES, N_FEATURES).min(axis=0)
        seen_hi = flat.max(axis=0).reshape(N_PLANES, N_FEATURES).max(axis=0)
    else:
        seen = np.ascontiguousarray(tracks[covered].T)  # (6, k): fast reduce
        seen_lo, seen_hi = seen.min(axis=1), seen.max(axis=1)
    return np.fmin(lo, seen_lo), np.fmax(hi, seen_hi)


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm windows", __doc__, stage="windows")
    parser.add_argument(
        "--parquet", required=True, nargs="+", help="Parquet files or folders of parts"
    )
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    parser.add_argument("--length", type=int, help="states per window")
    parser.add_argument("--stride", type=int, help="planes between window starts")
    parser.add_argument("--last-target-plane", type=int, help="last plane used as a target")
    parser.add_argument("--split", help="train,validation,test fractions of tracks")
    parser.add_argument("--seed", type=int, help="seed of the split by track")
    args = parser.parse_args(argv)
    split = None
    if args.split is not None:
        fr = args.split.split(",")
        if len(fr) != 3:
            parser.error("--split takes three fractions: train,validation,test")
        try:
            split = dict(zip(SPLITS, map(float, fr), strict=True))
        except ValueError:
            parser.error(f"--split: {args.split!r} is not three numbers")

    def body() -> None:
        check_outputs({"--out": args.out}, {"--parquet": parquet_parts(args.parquet)})
        options = {
            "length": args.length,
            "stride": args.stride,
            "last_target_plane": args.last_target_plane,
            "split": split,
            "seed": args.seed,
        }
        cfg = stage_cli.settings("windows", args.settings, {"windows": options})["windows"]
        build(
            args.parquet,
            args.out,
            length=cfg["length"],
            stride=cfg["stride"],
            last_target_plane=cfg["last_target_plane"],
            fractions=cfg["split"],
            seed=cfg["seed"],
        )

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
