"""Challenge-format test files from the held-out test tracks, their reader and the score.

The GlueX ML challenge 2 scored models on two files without a header:

- test inputs: one track per line, 6×N values (the states x,y,z,px,py,pz of planes 0..N-1)
  followed by the z of the plane to predict (plane N); N varies from line to line;
- answers: one line per track, ``x,y,px,py,pz`` at that plane.

Score (lower is better): sum over v in (x, y, px, py, pz) of RMS(truth_v - prediction_v) / w_v.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, FEATURES, N_FEATURES, N_PLANES
from tracklstm.data.checksums import verify_checksums
from tracklstm.data.windows import fingerprint, iter_tracks, parquet_parts
from tracklstm.files import atomic_path, check_outputs
from tracklstm.settings import defaults

log = logging.getLogger(__name__)
#: The schema's defaults of the challenge section (config.schema.yaml), for by-hand calls.
DEFAULTS: dict[str, Any] = defaults("challenge")

#: The weights of the predicted variables (ANSWER_FEATURES: x, y, px, py, pz) in the score.
WEIGHTS: tuple[float, ...] = (0.03, 0.03, 0.01, 0.01, 0.011)
_Z = FEATURES.index("z")
#: Number format of both files (the Parquet values are float32: about 7 digits).
FLOAT_FORMAT = "%.7g"


class ChallengeFormatError(ValueError):
    """A challenge file, or its source data, that is not as expected; names the file and line."""


def write_challenge(
    parquet: str | Path | list[str | Path],
    windows_h5: str | Path,
    inputs_csv: str | Path,
    answers_csv: str | Path,
    *,
    n_min: int = DEFAULTS["n_min"],
    n_max: int = DEFAULTS["n_max"],
    seed: int = DEFAULTS["seed"],
    max_tracks: int | None = DEFAULTS["max_tracks"],
) -> dict[str, Any]:
    """Write the test inputs and answers from the test split (``tracks/test`` of windows.h5).

    Each test track draws N uniformly in ``[n_min, n_max]`` (seeded, in the order of the test
    tracks, so the draw does not depend on ``max_tracks``); a track is used when its planes
    0..N are all present. Lines follow the track order; ``max_tracks`` keeps the first ones.
    Returns a summary (tracks written, skipped as incomplete, lines per N).
    """
    if not 1 <= n_min <= n_max <= N_PLANES - 1:
        raise ValueError(f"need 1 <= n_min <= n_max <= {N_PLANES - 1}, got {n_min}, {n_max}")
    if max_tracks is not None and max_tracks < 1:
        raise ValueError(f"max_tracks must be at least 1, got {max_tracks}")
    parts = parquet_parts(parquet)
    with h5py.File(windows_h5, "r") as h5:
        if "tracks/test" not in h5:
            raise ChallengeFormatError(f"{windows_h5}: no tracks/test (not a windows file?)")
        verify_checksums(windows_h5, h5, ["tracks/test"])
        test = h5["tracks/test"][:]
        expected = h5.attrs.get("data_fingerprint")
        n_tracks = int(h5.attrs.get("n_tracks", test.max(initial=-1) + 1))
    if expected is not None and fingerprint(parts) != expected:
        raise ChallengeFormatError(
            f"{windows_h5} was built from other Parquet data than {', '.join(map(str, parts))}"
        )
    rng = np.random.default_rng(seed)
    n_of = np.zeros(n_tracks, np.int8)  # 0: not a test track
    n_of[test] = rng.integers(n_min, n_max + 1, size=len(test))
    formats = {n: ",".join([FLOAT_FORMAT] * (N_FEATURES * n + 1)) for n in range(n_min, n_max + 1)}
    answer_format = ",".join([FLOAT_FORMAT] * len(ANSWER_FEATURES))
    per_n: Counter[int] = Counter()
    written = incomplete = 0
    limit = len(test) if max_tracks is None else max_tracks
    with (
        atomic_path(inputs_csv) as tmp_in,
        atomic_path(answers_csv) as tmp_ans,
        open(tmp_in, "w") as f_in,
        open(tmp_ans, "w") as f_ans,
    ):
        for first, tracks in iter_tracks(parts):
            if written >= limit:
                break
            ns = n_of[first : first + len(tracks)].astype(np.int64)
            rows = np.nonzero(ns)[0]
            if not len(rows):
                continue
            # Planes present from plane 0 on, without a gap: a track is usable when > N.
            present = np.isfinite(tracks[rows]).all(axis=2)
            leading = np.where(present.all(axis=1), N_PLANES, np.argmin(present, axis=1))
            usable = leading > ns[rows]
            incomplete += int((~usable).sum())
            for row in rows[usable][: limit - written]:
                n = int(ns[row])
                track = tracks[row].astype(np.float64)
                values = (*track[:n].ravel().tolist(), float(track[n, _Z]))
                f_in.write(formats[n] % values + "\n")
                f_ans.write(answer_format % tuple(track[n, ANSWER_INDEX].tolist()) + "\n")
                per_n[n] += 1
                written += 1
    if written == 0:
        raise ChallengeFormatError(
            f"{windows_h5}: no test track is complete up to plane {n_min} ({len(test)} test tracks)"
        )
    summary = {
        "tracks": written,
        "test_tracks": len(test),
        "skipped_incomplete": incomplete,
        "lines_per_n": {str(n): per_n[n] for n in sorted(per_n)},
    }
    log.info(
        "%s, %s: %d tracks (%d test tracks, %d incomplete skipped)",
        inputs_csv,
        answers_csv,
        written,
        len(test),
        incomplete,
    )
    return summary


def _read_rows(path: str | Path) -> list[tuple[int, np.ndarray]]:
    """``(line number, values)`` of every line; trailing empty lines are allowed."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ChallengeFormatError(f"{path}: no lines")
    out = []
    for lineno, text in enumerate(lines, 1):
        cells = text.split(",")
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            parsed = []
            for col, cell in enumerate(cells, 1):
                try:
                    parsed.append(float(cell))
                except ValueError:
                    raise ChallengeFormatError(
                        f"{path}:{lineno}: value {col} is {cell!r}, not a number"
                    ) from None
            values = np.asarray(parsed)
        if not np.isfinite(values).all():
            col = int(np.argmin(np.isfinite(values))) + 1
            raise ChallengeFormatError(f"{path}:{lineno}: value {col} is {cells[col - 1]!r}")
        out.append((lineno, values))
    return out


def read_challenge_inputs(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The test inputs: a list of (N, 6) state arrays (N varies) and the z to predict at (n,)."""
    states: list[np.ndarray] = []
    z_targets = []
    for lineno, values in _read_rows(path):
        if len(values) < N_FEATURES + 1 or (len(values) - 1) % N_FEATURES:
            raise ChallengeFormatError(
                f"{path}:{lineno}: {len(values)} values; a line holds 6×N states "
                "(x,y,z,px,py,pz per plane) and one z"
            )
        states.append(values[:-1].reshape(-1, N_FEATURES))
        z_targets.append(values[-1])
    return states, np.asarray(z_targets)


def read_challenge_answers(path: str | Path) -> np.ndarray:
    """The answers: (n, 5) array of x, y, px, py, pz."""
    rows = []
    for lineno, values in _read_rows(path):
        if len(values) != len(ANSWER_FEATURES):
            raise ChallengeFormatError(
                f"{path}:{lineno}: {len(values)} values, expected 5 (x,y,px,py,pz)"
            )
        rows.append(values)
    return np.stack(rows)


def score_terms(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMS(truth_v - pred_v) / w_v for each v in x, y, px, py, pz."""
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if truth.ndim != 2 or truth.shape[1] != len(ANSWER_FEATURES) or truth.shape[0] == 0:
        raise ValueError(f"truth must be (n, 5) with n >= 1, got {truth.shape}")
    if pred.shape != truth.shape:
        raise ValueError(f"predictions {pred.shape} and truth {truth.shape} differ in shape")
    rms = np.sqrt(np.mean((truth - pred) ** 2, axis=0))
    return {f: float(r / w) for f, r, w in zip(ANSWER_FEATURES, rms, WEIGHTS, strict=True)}


def challenge_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """The challenge's score of predictions ``pred`` (n, 5) against ``truth`` (n, 5)."""
    return float(sum(score_terms(truth, pred).values()))


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm challenge", __doc__, stage="challenge")
    parser.add_argument(
        "--parquet", required=True, nargs="+", help="Parquet files or folders of parts"
    )
    parser.add_argument("--windows", required=True, help="windows.h5 (its tracks/test split)")
    parser.add_argument("--inputs-out", required=True, help="test inputs CSV to write")
    parser.add_argument("--answers-out", required=True, help="answers CSV to write")
    parser.add_argument("--n-min", type=int, help="fewest states given per track")
    parser.add_argument("--n-max", type=int, help="most states given per track")
    parser.add_argument("--seed", type=int, help="seed of the draw of N per track")
    parser.add_argument("--max-tracks", type=int, help="write at most this many tracks")
    args = parser.parse_args(argv)

    def body() -> None:
        check_outputs(
            {"--inputs-out": args.inputs_out, "--answers-out": args.answers_out},
            {"--parquet": parquet_parts(args.parquet), "--windows": args.windows},
        )
        options = {
            "n_min": args.n_min,
            "n_max": args.n_max,
            "seed": args.seed,
            "max_tracks": args.max_tracks,
        }
        cfg = stage_cli.settings("challenge", args.settings, {"challenge": options})
        cfg = cfg["challenge"]
        write_challenge(
            args.parquet,
            args.windows,
            args.inputs_out,
            args.answers_out,
            n_min=cfg["n_min"],
            n_max=cfg["n_max"],
            seed=cfg["seed"],
            max_tracks=cfg["max_tracks"],
        )

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
