"""CSV -> Parquet: values, nulls, the quality summary, and malformed lines named by line number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import toy_tracks, write_tracks_csv

from tracklstm.constants import COLUMNS, FEATURES, PLANE_Z
from tracklstm.to_parquet import InputFileError, convert, main


def csv_lines(tmp_path: Path, n: int = 120, seed: int = 1) -> list[str]:
    """The lines of a toy CSV (header first, no line breaks)."""
    return write_tracks_csv(toy_tracks(n, seed), tmp_path / "src.csv").read_text().splitlines()


def write(tmp_path: Path, lines: list[str], name: str = "t.csv", end: str = "\n") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + end)
    return path


def set_cell(line: str, col: int, value: str) -> str:
    cells = line.split(",")
    cells[col] = value
    return ",".join(cells)


def read_array(path: Path) -> np.ndarray:
    table = pq.read_table(path)
    return np.column_stack([c.to_numpy(zero_copy_only=False) for c in table.columns])


def test_values_schema_and_quality(tmp_path: Path) -> None:
    lines = csv_lines(tmp_path)
    csv = write(tmp_path, lines)
    quality = convert(csv, tmp_path / "t.parquet", tmp_path / "q.json")
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == list(COLUMNS)
    assert all(str(t) == "float" for t in table.schema.types)
    expected = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float32)
    np.testing.assert_allclose(read_array(tmp_path / "t.parquet"), expected, rtol=1e-6)

    assert json.loads((tmp_path / "q.json").read_text()) == quality
    assert quality["rows"] == quality["complete_rows"] == 120
    assert quality["rows_with_nulls"] == 0 and quality["skipped_rows"] == {}
    assert quality["rows_by_missing_planes"] == {"0": 120}
    for i, f in enumerate(FEATURES):
        assert quality["ranges"][f]["min"] == pytest.approx(expected[:, i::6].min(), rel=1e-6)
        assert quality["ranges"][f]["max"] == pytest.approx(expected[:, i::6].max(), rel=1e-6)
    assert list(quality["column_ranges"]) == list(COLUMNS)
    for j, c in enumerate(COLUMNS):
        assert quality["column_ranges"][c]["min"] == pytest.approx(expected[:, j].min(), rel=1e-6)
        assert quality["column_ranges"][c]["max"] == pytest.approx(expected[:, j].max(), rel=1e-6)
    assert quality["column_ranges"]["z7"] == {"min": PLANE_Z[7], "max": PLANE_Z[7]}


def test_small_blocks_give_the_same_file(tmp_path: Path) -> None:
    csv = write(tmp_path, csv_lines(tmp_path, n=200))
    q1 = convert(csv, tmp_path / "a.parquet")
    q2 = convert(csv, tmp_path / "b.parquet", block_size=30000)  # about 20 lines per block
    np.testing.assert_array_equal(
        read_array(tmp_path / "a.parquet"), read_array(tmp_path / "b.parquet")
    )
    assert q1 == q2
    assert pq.ParquetFile(tmp_path / "b.parquet").metadata.num_row_groups > 5


def test_empty_cells_are_nulls(tmp_path: Path) -> None:
    lines = csv_lines(tmp_path, n=20)
    lines[3] = set_cell(lines[3], COLUMNS.index("px5"), "")  # track 2, plane 5
    lines[3] = set_cell(lines[3], COLUMNS.index("z5"), "")  # an empty z is allowed
    lines[7] = set_cell(lines[7], COLUMNS.index("y"), "nan")  # track 6, plane 0
    lines[9] = set_cell(lines[9], COLUMNS.index("pz24"), '""')
    csv = write(tmp_path, lines)
    quality = convert(csv, tmp_path / "t.parquet", block_size=2000)
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column("px5").null_count == 1 and table.column("z5").null_count == 1
    assert table.column("y").null_count == 1 and table.column("pz24").null_count == 1
    assert table.column("px5")[2].as_py() is None
    assert quality["rows"] == 20 and quality["complete_rows"] == 17
    assert quality["rows_with_nulls"] == 3
    assert quality["null_cells"] == {"y": 1, "z5": 1, "px5": 1, "pz24": 1}
    assert quality["rows_by_missing_planes"] == {"0": 17, "1": 3}


@pytest.mark.parametrize("block_size", [1 << 20, 20000])
@pytest.mark.parametrize(
    ("edit", "line", "message", "reason"),
    [
        (
            lambda ls: ls.__setitem__(57, set_cell(ls[57], 16, "abc")),
            58,
            "column 17 (py2) holds 'abc', not a number",
            "non_numeric",
        ),
        (
            lambda ls: ls.__setitem__(9, set_cell(ls[9], 0, "1e50")),
            10,
            "beyond the float32 range",
            "non_numeric",
        ),
        (
            lambda ls: ls.__setitem__(9, set_cell(ls[9], 4, "inf")),
            10,
            "column 5 (py) holds 'inf'",
            "non_numeric",
        ),
        (
            lambda ls: ls.__setitem__(80, ls[80].rsplit(",", 1)[0]),
            81,
            "149 values, expected 150",
            "wrong_column_count",
        ),
        (
            lambda ls: ls.__setitem__(2, ls[2] + ",0.5"),
            3,
            "151 values, expected 150",
            "wrong_column_count",
        ),
        (
            lambda ls: ls.__setitem__(33, set_cell(ls[33], COLUMNS.index("z3"), "18.1195")),
            34,
            "z of plane 3 is 18.1195, expected 181.195",
            "z_mismatch",
        ),
    ],
)
def test_bad_line_is_named_or_skipped(
    tmp_path: Path, edit, line: int, message: str, reason: str, block_size: int
) -> None:
    lines = csv_lines(tmp_path)
    edit(lines)
    csv = write(tmp_path, lines)
    out = tmp_path / "t.parquet"
    with pytest.raises(InputFileError) as err:
        convert(csv, out, block_size=block_size)
    assert str(err.value).startswith(f"{csv}:{line}: ")
    assert message in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".t.parquet*"))

    quality = convert(csv, out, tmp_path / "q.json", bad_rows="skip", block_size=block_size)
    assert quality["skipped_rows"] == {reason: 1}
    assert quality["skipped_examples"][0]["line"] == line
    assert quality["rows"] == 119
    good = np.loadtxt(tmp_path / "src.csv", delimiter=",", skiprows=1, dtype=np.float32)
    np.testing.assert_allclose(read_array(out), np.delete(good, line - 2, axis=0), rtol=1e-6)


def test_truncated_last_line(tmp_path: Path) -> None:
    lines = csv_lines(tmp_path, n=50)
    text = "\n".join(lines)
    csv = tmp_path / "t.csv"
    csv.write_text(text[: -len(lines[-1]) // 2])  # cut in the middle of the last line
    with pytest.raises(InputFileError, match=rf"{csv}:51: the last line is cut short \(\d+ of 150"):
        convert(csv, tmp_path / "t.parquet")
    quality = convert(csv, tmp_path / "t.parquet", bad_rows="skip")
    assert quality["skipped_rows"] == {"truncated_last_line": 1} and quality["rows"] == 49

    # Cut inside the last number: a bad last value, no line break.
    csv.write_text(text[: len(text) - len(lines[-1].rsplit(",", 1)[1]) + 1] + "e")
    with pytest.raises(InputFileError, match=rf"{csv}:51: the last line ends in"):
        convert(csv, tmp_path / "t.parquet")

    # The same line with a line break is a wrong column count, not a truncation.
    csv.write_text(text[: -len(lines[-1]) // 2] + "\n")
    with pytest.raises(InputFileError, match=rf"{csv}:51: \d+ values, expected 150"):
        convert(csv, tmp_path / "t.parquet")

    # A complete last line without a line break is fine.
    csv.write_text(text)
    assert convert(csv, tmp_path / "t.parquet")["rows"] == 50


def test_skip_counts_every_reason_and_keeps_line_numbers(tmp_path: Path) -> None:
    lines = csv_lines(tmp_path, n=300)
    lines[5] = set_cell(lines[5], 3, "x")
    lines[6] = set_cell(lines[6], 3, "?")
    lines[100] = lines[100] + ","
    lines[101] = ""  # an empty line is not a row, and not an error
    lines[250] = set_cell(lines[250], 2, "66")
    csv = write(tmp_path, lines)
    csv.write_bytes(csv.read_bytes().replace(b"\n", b"\r\n"))  # Windows line breaks
    with pytest.raises(InputFileError, match=rf"{csv}:6: column 4"):
        convert(csv, tmp_path / "t.parquet", block_size=30000)
    quality = convert(csv, tmp_path / "t.parquet", bad_rows="skip", block_size=30000)
    assert quality["skipped_rows"] == {"non_numeric": 2, "wrong_column_count": 1, "z_mismatch": 1}
    assert [e["line"] for e in quality["skipped_examples"]] == [6, 7, 101, 251]
    assert quality["rows"] == 300 - 5


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "the file is empty"),
        (",".join(COLUMNS[:-1]), "header has 149 columns, expected 150"),
        (
            ",".join(["x", "y", "z", "px", "py", "p_z", *COLUMNS[6:]]),
            "header column 6 is 'p_z', expected 'pz'",
        ),
    ],
)
def test_header_is_checked(tmp_path: Path, header: str, message: str) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(header + ("\n" if header else ""))
    with pytest.raises(InputFileError, match=f"{csv}:1: {message}"):
        convert(csv, tmp_path / "t.parquet")


def test_header_with_bom_and_no_rows(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("\ufeff" + ",".join(COLUMNS) + "\r\n", encoding="utf-8")
    quality = convert(csv, tmp_path / "t.parquet")
    assert quality["rows"] == 0 and pq.read_table(tmp_path / "t.parquet").num_rows == 0


def test_every_line_rejected_is_an_error(tmp_path: Path) -> None:
    lines = csv_lines(tmp_path, n=3)
    csv = write(tmp_path, [lines[0], *[set_cell(ln, 0, "?") for ln in lines[1:]]])
    with pytest.raises(InputFileError, match="every data line was rejected"):
        convert(csv, tmp_path / "t.parquet", bad_rows="skip")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = csv_lines(tmp_path, n=30)
    lines[12] = set_cell(lines[12], 7, "bad")
    csv = write(tmp_path, lines)
    out, q = tmp_path / "t.parquet", tmp_path / "q.json"
    assert main(["--csv", str(csv), "--out", str(out), "--quality", str(q)]) == 1
    err = capsys.readouterr().err
    assert f"ERROR tracklstm.to_parquet: {csv}:13: column 8 (y1) holds 'bad', not a number" in err
    assert "Traceback" not in err
    assert not out.exists() and not q.exists()
    args = ["--csv", str(csv), "--out", str(out), "--quality", str(q), "--bad-rows", "skip"]
    assert main(args) == 0
    quality = json.loads(q.read_text())
    assert quality["rows"] == 29 and quality["skipped_rows"] == {"non_numeric": 1}
    assert quality["bad_rows"] == "skip"
