"""Simulated charged tracks in the GlueX solenoid, written in the training-file format.

The simulator stands in for the challenge's training file where that file is not available. Each
track starts at the origin plane (z = 65 cm) and is followed through the magnetic field and the
detector's material to the 24 detector planes (``constants.PLANE_Z``). Units: cm and GeV/c.

The physics lives in ``tracklstm.physics``: the field map and the Runge-Kutta propagation
(``solenoid``), the energy loss and multiple scattering (``material``). This stage draws the
starting states, keeps the tracks the detector accepts and writes them.

Starting states and acceptance, at z = 65: the radius from the axis uniform in [0, 30] cm (so
the tracks crowd towards the axis per unit area, as the real ones do), its azimuth uniform; |p|
trapezoidal between 0.55 and 3.55 GeV/c (flat from 0.85 to 3.25: the sum of a uniform in
[0.55, 3.25] and one in [0, 0.3]); the polar angle uniform in [0.005, 0.19] rad and the
momentum's azimuth uniform. A track is kept only if it stays within the detector planes' active
radius (48.5 cm) at every plane; the kept tracks are therefore biased towards small radii and
angles, as in a real detector. The ranges cover the 31 real tracks of
``data/mlchallenge2_origin_plane24.csv`` (|p| 0.58 to 3.46 GeV/c, polar angle 0.006 to
0.17, radius 1.1 to 29.6 cm); the kept tracks' 5th and 95th |p| percentiles (0.83, 3.25 GeV/c)
lie within 4 % of the real ones (0.82, 3.38; ``benchmarks/sim_vs_real.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from typing import TextIO

import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import COLUMNS, N_FEATURES, N_PLANES, PLANE_Z
from tracklstm.files import atomic_path, check_outputs
from tracklstm.physics.material import DETECTOR_MATERIAL
from tracklstm.physics.solenoid import propagate

log = logging.getLogger("tracklstm.simulate")

#: Starting states at the origin plane.
ORIGIN_RADIUS_CM: float = 30.0
#: |p| (GeV/c): a uniform in P_FLAT plus a uniform in [0, P_RAMP] (a trapezoid).
P_FLAT: tuple[float, float] = (0.55, 3.25)
P_RAMP: float = 0.3
#: Polar angle of the momentum (rad).
THETA_RANGE: tuple[float, float] = (0.005, 0.19)
#: A kept track is within this radius (cm) of the axis at every detector plane.
ACCEPT_RADIUS_CM: float = 48.5
#: Candidate tracks per block; fixed so that a shard's first n tracks do not depend on how many
#: are asked for.
BLOCK_SIZE: int = 8192
#: Rows formatted per write in ``write_csv``.
CSV_CHUNK_ROWS: int = 4096
#: Significant digits of each value in the CSV, as in the real training file. They matter: a
#: one-state model's errors have a direction of a few micrometres (x against px: the planes
#: scatter where the state is recorded), and the covariance of the windows read back from the
#: CSV holds the rounding there (2026-12-07, at full size: median chi2/ndf 0.53 with it, 0.44
#: on the same tracks kept to float32).
SIGNIFICANT_DIGITS: int = 6


class SimulationError(ValueError):
    """Bad input to the simulator (shapes, values, arguments)."""


# --------------------------------------------------------------------------------------------
# Track generation


def sample_origins(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 6) starting states at the origin plane (see the module notes for the distributions)."""
    r = ORIGIN_RADIUS_CM * rng.uniform(0.0, 1.0, n)
    a = rng.uniform(0.0, 2.0 * np.pi, n)
    p = rng.uniform(*P_FLAT, n) + rng.uniform(0.0, P_RAMP, n)
    theta = rng.uniform(*THETA_RANGE, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    pz = p * np.cos(theta)
    pt = p * np.sin(theta)
    states = np.empty((n, N_FEATURES), dtype=np.float64)
    states[:, 0] = r * np.cos(a)
    states[:, 1] = r * np.sin(a)
    states[:, 2] = PLANE_Z[0]
    states[:, 3] = pt * np.cos(phi)
    states[:, 4] = pt * np.sin(phi)
    states[:, 5] = pz
    return states


def accepted(tracks: np.ndarray) -> np.ndarray:
    """Boolean mask of tracks that are finite and within the active radius at every plane."""
    r2 = tracks[:, 1:, 0] ** 2 + tracks[:, 1:, 1] ** 2
    finite = np.all(np.isfinite(tracks), axis=(1, 2))
    with np.errstate(invalid="ignore"):
        inside = np.all(r2 <= ACCEPT_RADIUS_CM**2, axis=1) & np.all(tracks[:, :, 5] > 0, axis=1)
    return finite & inside


def _check_counts(n_tracks: int, seed: int, shard: int) -> None:
    if n_tracks < 0:
        raise SimulationError(f"n_tracks must be >= 0, got {n_tracks}")
    if seed < 0 or shard < 0:
        raise SimulationError(f"seed and shard must be >= 0, got seed={seed} shard={shard}")


def iter_tracks(n_tracks: int, *, seed: int, shard: int = 0) -> Iterator[np.ndarray]:
    """Yield blocks of (m, 25, 6) accepted tracks, n_tracks in all (bounded memory)."""
    _check_counts(n_tracks, seed, shard)
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard]))
    plane_z = np.asarray(PLANE_Z, dtype=np.float64)
    left = n_tracks
    while left > 0:
        origins = sample_origins(BLOCK_SIZE, rng)
        tracks = propagate(origins, plane_z, material=DETECTOR_MATERIAL, rng=rng)
        kept = tracks[accepted(tracks)][:left]
        kept[:, :, 2] = plane_z
        left -= len(kept)
        if len(kept):
            yield kept


def simulate_tracks(n_tracks: int, *, seed: int, shard: int = 0) -> np.ndarray:
    """(n_tracks, 25, 6) float64 simulated tracks at ``constants.PLANE_Z``.

    Deterministic for a given (seed, shard); shards are independent streams
    (``SeedSequence([seed, shard])``), and the first k tracks of a shard do not depend on
    ``n_tracks``.
    """
    _check_counts(n_tracks, seed, shard)
    out = np.empty((n_tracks, N_PLANES, N_FEATURES), dtype=np.float64)
    done = 0
    for block in iter_tracks(n_tracks, seed=seed, shard=shard):
        out[done : done + len(block)] = block
        done += len(block)
    return out


# --------------------------------------------------------------------------------------------
# CSV output


def _write_header(fh: TextIO) -> None:
    fh.write(",".join(COLUMNS) + "\n")


def _write_rows(fh: TextIO, tracks: np.ndarray) -> None:
    """Write tracks as CSV rows with ``SIGNIFICANT_DIGITS``, formatted in C in chunks of rows."""
    flat = tracks.reshape(len(tracks), -1)
    row = ",".join([f"%.{SIGNIFICANT_DIGITS}g"] * flat.shape[1]) + "\n"
    for start in range(0, len(flat), CSV_CHUNK_ROWS):
        chunk = flat[start : start + CSV_CHUNK_ROWS]
        fh.write((row * len(chunk)) % tuple(chunk.ravel().tolist()))


def as_written(tracks: np.ndarray) -> np.ndarray:
    """``tracks`` (float64) with each value rounded to ``SIGNIFICANT_DIGITS`` as the CSV holds
    it (to the last digit, but for rare ties of the binary value), without writing the text:
    tracks drawn for a benchmark that should see what the pipeline reads back."""
    values = np.asarray(tracks, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    exponent = np.floor(np.log10(np.abs(np.where(finite, values, 1.0))))
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - exponent)
    return np.where(finite, np.round(values * scale) / scale, values)


def _check_tracks(tracks: np.ndarray) -> np.ndarray:
    arr = np.asarray(tracks, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (N_PLANES, N_FEATURES):
        raise SimulationError(
            f"tracks: expected shape (n, {N_PLANES}, {N_FEATURES}), got {np.shape(tracks)}"
        )
    return arr


def write_csv(tracks: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write tracks (n, 25, 6) in the training-file format (header + 150 values per row)."""
    arr = _check_tracks(tracks)
    with atomic_path(path) as tmp, open(tmp, "w", newline="\n") as fh:
        _write_header(fh)
        _write_rows(fh, arr)


def simulate_to_csv(n_tracks: int, path: str | os.PathLike[str], *, seed: int, shard: int) -> int:
    """Simulate and write block by block (memory bounded); return the number of tracks."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="\n") as fh:
        _write_header(fh)
        for block in iter_tracks(n_tracks, seed=seed, shard=shard):
            _write_rows(fh, block)
            count += len(block)
    return count


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = stage_cli.parser("tracklstm simulate", __doc__)
    p.add_argument("--n-tracks", type=int, required=True, help="number of tracks to write")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--shard", type=int, default=0, help="shard index: independent stream (>= 0)")
    p.add_argument("--out", required=True, help="output CSV path (written atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI: ``tracklstm simulate --n-tracks N --seed S [--shard K] --out PATH.csv``."""
    parser = _parser()
    args = parser.parse_args(argv)

    def body() -> None:
        check_outputs({"--out": args.out})
        if args.n_tracks < 1 or args.seed < 0 or args.shard < 0:
            raise SimulationError(
                "invalid arguments: need --n-tracks >= 1, --seed >= 0, --shard >= 0 "
                f"(got {args.n_tracks}, {args.seed}, {args.shard})"
            )
        start = time.perf_counter()
        count = simulate_to_csv(args.n_tracks, args.out, seed=args.seed, shard=args.shard)
        seconds = time.perf_counter() - start
        log.info(
            "wrote %d tracks (seed %d, shard %d) to %s in %.2f s (%.0f tracks/s)",
            count,
            args.seed,
            args.shard,
            args.out,
            seconds,
            count / seconds if seconds > 0 else float("inf"),
        )

    return stage_cli.run(body, log)  # SimulationError is a ValueError


if __name__ == "__main__":
    raise SystemExit(main())
