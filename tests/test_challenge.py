"""Challenge-format test files: drawn from the test split only, seeded, read back, and scored."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import toy_tracks

from tracklstm.constants import COLUMNS, PLANE_Z
from tracklstm.data.challenge import (
    WEIGHTS,
    ChallengeFormatError,
    challenge_score,
    main,
    read_challenge_answers,
    read_challenge_inputs,
    score_terms,
    write_challenge,
)
from tracklstm.data.windows import build


def parquet_tracks(path: Path) -> np.ndarray:
    table = pq.read_table(path)
    flat = np.column_stack([c.to_numpy(zero_copy_only=False) for c in table.columns])
    return flat.reshape(len(flat), 25, 6).astype(np.float64)


def files(tmp_path: Path, name: str = "c") -> tuple[Path, Path]:
    return tmp_path / f"{name}_inputs.csv", tmp_path / f"{name}_answers.csv"


def test_rows_come_from_test_tracks(tmp_path: Path, windows_h5: Path) -> None:
    parquet = tmp_path / "tracks.parquet"
    inputs, answers = files(tmp_path)
    summary = write_challenge(parquet, windows_h5, inputs, answers, seed=4)
    tracks = parquet_tracks(parquet)
    with h5py.File(windows_h5) as h5:
        test = h5["tracks/test"][...]
    assert summary["tracks"] == len(test) == 20  # toy tracks are complete
    assert summary["skipped_incomplete"] == 0

    lines = inputs.read_text().splitlines()
    assert len(lines) == len(answers.read_text().splitlines()) == 20
    states, z = read_challenge_inputs(inputs)
    truth = read_challenge_answers(answers)
    ns = [len(s) for s in states]
    assert min(ns) >= 8 and max(ns) <= 24 and len(set(ns)) > 3
    assert sum(summary["lines_per_n"].values()) == 20
    for row, track in enumerate(test):  # lines in the order of the test tracks
        n = ns[row]
        assert len(lines[row].split(",")) == 6 * n + 1
        np.testing.assert_allclose(states[row], tracks[track, :n], rtol=1e-6, atol=1e-6)
        assert z[row] == pytest.approx(PLANE_Z[n], abs=1e-3)
        np.testing.assert_allclose(truth[row], tracks[track, n, [0, 1, 3, 4, 5]], rtol=1e-6)
    assert not inputs.read_text().startswith("x")  # no header


def test_seeded_and_max_tracks(tmp_path: Path, windows_h5: Path) -> None:
    parquet = tmp_path / "tracks.parquet"
    a, b, c, d = (files(tmp_path, name) for name in "abcd")
    write_challenge(parquet, windows_h5, *a, seed=1)
    write_challenge(parquet, windows_h5, *b, seed=1)
    write_challenge(parquet, windows_h5, *c, seed=2)
    write_challenge(parquet, windows_h5, *d, seed=1, max_tracks=5, n_min=10, n_max=10)
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()
    states, _ = read_challenge_inputs(d[0])
    assert len(states) == 5 and {len(s) for s in states} == {10}


def test_incomplete_tracks_are_left_out(tmp_path: Path) -> None:
    tracks = toy_tracks(200, seed=8).astype(np.float32)
    tracks[:, 20:] = np.nan  # no track reaches plane 20
    flat = tracks.reshape(200, -1)
    arrays = [pa.array(flat[:, j], mask=np.isnan(flat[:, j])) for j in range(150)]
    pq.write_table(pa.table(arrays, names=list(COLUMNS)), tmp_path / "t.parquet")
    build(tmp_path / "t.parquet", tmp_path / "w.h5", seed=0)
    inputs, answers = files(tmp_path)
    summary = write_challenge(tmp_path / "t.parquet", tmp_path / "w.h5", inputs, answers, seed=0)
    states, _ = read_challenge_inputs(inputs)
    assert max(len(s) for s in states) <= 19
    draws = np.random.default_rng(0).integers(8, 25, size=20)
    assert summary["tracks"] == (draws <= 19).sum() > 0
    assert summary["skipped_incomplete"] == (draws > 19).sum() > 0


def test_other_parquet_data_is_refused(tmp_path: Path, windows_h5: Path) -> None:
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(tmp_path / "tracks.parquet").slice(0, 199), other)
    with pytest.raises(ChallengeFormatError, match="built from other Parquet data"):
        write_challenge(other, windows_h5, *files(tmp_path))
    with pytest.raises(ValueError, match="n_min <= n_max"):
        write_challenge(tmp_path / "tracks.parquet", windows_h5, *files(tmp_path), n_min=9, n_max=8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3,4,5,6,7\n1,2,3,4,5,6,7,8\n", ":2: 8 values; a line holds 6×N states"),
        ("1,2,3,4,5,6,7\n1,2,3,4,5,abc,7\n", ":2: value 6 is 'abc', not a number"),
        ("1,2,3,4,5,6,7\n\n1,2,3,4,5,6,7\n", ":2: value 1 is '', not a number"),
        ("1,2,3,4,5,6,nan\n", ":1: value 7 is 'nan'"),
        ("", ": no lines"),
    ],
)
def test_reader_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "in.csv"
    path.write_text(text)
    with pytest.raises(ChallengeFormatError, match=f"{path}{message}"):
        read_challenge_inputs(path)


def test_reader_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("1,2,3,4,5,6,7,8,9,10,11,12,200\n1,2,3,4,5,6,176.9\n\n")
    states, z = read_challenge_inputs(path)
    assert [s.shape for s in states] == [(2, 6), (1, 6)]
    np.testing.assert_array_equal(states[0][1], [7, 8, 9, 10, 11, 12])
    np.testing.assert_array_equal(z, [200, 176.9])
    path.write_text("1,2,3,4,5\n1,2,3,4\n")
    with pytest.raises(ChallengeFormatError, match=r":2: 4 values, expected 5"):
        read_challenge_answers(path)


def test_score() -> None:
    truth = np.random.default_rng(0).normal(size=(50, 5))
    assert challenge_score(truth, truth) == 0.0
    pred = truth.copy()
    pred[:, 0] += 0.03  # RMS 0.03 in x: 1.0
    pred[:, 4] -= 0.022  # RMS 0.022 in pz: 2.0
    assert challenge_score(truth, pred) == pytest.approx(3.0)
    terms = score_terms(truth, pred)
    assert terms == pytest.approx({"x": 1.0, "y": 0.0, "px": 0.0, "py": 0.0, "pz": 2.0})
    pred[::2, 2] += 0.01  # RMS over all lines: 0.01 / sqrt(2)
    assert score_terms(truth, pred)["px"] == pytest.approx(np.sqrt(0.5))
    assert WEIGHTS == (0.03, 0.03, 0.01, 0.01, 0.011)
    with pytest.raises(ValueError, match="differ in shape"):
        challenge_score(truth, pred[:10])
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        challenge_score(truth[:, :4], pred[:, :4])


def test_cli(tmp_path: Path, windows_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, answers = files(tmp_path)
    base = ["--windows", str(windows_h5), "--inputs-out", str(inputs), "--answers-out"]
    args = ["--parquet", str(tmp_path / "tracks.parquet"), *base, str(answers)]
    assert main([*args, "--max-tracks", "7", "--n-min", "12", "--n-max", "15"]) == 0
    states, _ = read_challenge_inputs(inputs)
    assert len(states) == 7 and all(12 <= len(s) <= 15 for s in states)
    assert main(["--parquet", str(tmp_path / "nope.parquet"), *base, str(answers)]) == 1
    assert "nope.parquet: no such file" in capsys.readouterr().err
