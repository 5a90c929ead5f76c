"""CSV -> Parquet: values, nulls, the quality summary, and malformed lines named by line number."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import toy_tracks, write_tracks_csv

from tracklstm.constants import COLUMNS, FEATURES, PLANE_Z
from tracklstm.data import to_parquet
from tracklstm.data.csv_blocks import InputFileError
from tracklstm.data.to_parquet import convert, main


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


def assert_no_output(err: str, folder: Path, *outputs: Path) -> None:
    """One error line, no traceback, and nothing that looks like a finished output."""
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if " ERROR " in line]) == 1
    for out in outputs:
        assert not out.exists()
    assert not list(folder.glob(".*.tmp"))


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


@pytest.mark.parametrize(("threads", "block_size"), [(1, 30000), (3, 30000), (3, 700)])
def test_small_blocks_give_the_same_file(
    tmp_path: Path, monkeypatch, threads: int, block_size: int
) -> None:
    csv = write(tmp_path, csv_lines(tmp_path, n=200))
    q1 = convert(csv, tmp_path / "a.parquet", threads=1)
    monkeypatch.setattr(to_parquet, "ROW_GROUP_ROWS", 50)
    # About 20 lines per block (or less than one), parsed by several threads, taken in order.
    q2 = convert(csv, tmp_path / "b.parquet", block_size=block_size, threads=threads)
    np.testing.assert_array_equal(
        read_array(tmp_path / "a.parquet"), read_array(tmp_path / "b.parquet")
    )
    assert q1 == q2
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 1
    row_groups = pq.ParquetFile(tmp_path / "b.parquet").metadata
    assert [row_groups.row_group(i).num_rows >= 50 for i in range(2)] == [True, True]
    assert row_groups.num_row_groups in (3, 4)  # blocks taken until 50 rows or more

    # The same file gzipped, read in blocks smaller than a line.
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress(csv.read_bytes()))
    q3 = convert(packed, tmp_path / "c.parquet", block_size=700, threads=threads)
    np.testing.assert_array_equal(
        read_array(tmp_path / "a.parquet"), read_array(tmp_path / "c.parquet")
    )
    assert {**q3, "file": None, "compression": None} == {**q1, "file": None}


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
    lines[270] = set_cell(lines[270], COLUMNS.index("px9"), "1e30")
    csv = write(tmp_path, lines)
    csv.write_bytes(csv.read_bytes().replace(b"\n", b"\r\n"))  # Windows line breaks
    with pytest.raises(InputFileError, match=rf"{csv}:6: column 4"):
        convert(csv, tmp_path / "t.parquet", block_size=30000)
    quality = convert(csv, tmp_path / "t.parquet", bad_rows="skip", block_size=30000)
    assert quality["skipped_rows"] == {
        "non_numeric": 2,
        "wrong_column_count": 1,
        "z_mismatch": 1,
        "out_of_bounds": 1,
    }
    assert [e["line"] for e in quality["skipped_examples"]] == [6, 7, 101, 251, 271]
    assert quality["rows"] == 300 - 6


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


@pytest.mark.parametrize("after_header", ["", "\r\n", "\n\n"])
def test_header_only_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], after_header: str
) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("\ufeff" + ",".join(COLUMNS) + "\r\n" + after_header, encoding="utf-8")
    out, q = tmp_path / "t.parquet", tmp_path / "q.json"
    assert main(["--csv", str(csv), "--out", str(out), "--quality", str(q)]) == 1
    err = capsys.readouterr().err
    assert f"ERROR tracklstm.to_parquet: {csv}: no data rows: the file holds only the header" in err
    assert_no_output(err, tmp_path, out, q)


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


# --------------------------------------------------------------------------------------------
# Through the command line: what passed but should not, and errors that name the file


def run_cli(
    capsys: pytest.CaptureFixture[str], csv: Path, out: Path, *extra: str
) -> tuple[int, str, Path]:
    """``main`` as the workflow runs it; (exit code, stderr, quality JSON path)."""
    q = out.with_suffix(".json")
    code = main(["--csv", str(csv), "--out", str(out), "--quality", str(q), *extra])
    return code, capsys.readouterr().err, q


NAN_CELLS = {
    "x": "NAN",
    "py3": "-nan",
    "pz7": "+nan",
    "x10": "nan(1)",
    "z12": " NaN ",
    "y24": '"nan"',
}


@pytest.mark.parametrize("block_size", [1 << 20, 3000])
def test_nan_spellings_are_nulls_on_both_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], block_size: int, monkeypatch
) -> None:
    """Every NaN spelling is a null, as an empty cell, whether its block is read by pyarrow
    (fast path) or line by line (another line of the block is bad); and the error blames the
    bad line, not a NaN line."""
    monkeypatch.setattr(to_parquet, "BLOCK_BYTES", block_size)
    lines = csv_lines(tmp_path, n=40)
    for k, (col, text) in enumerate(NAN_CELLS.items()):
        lines[3 + k] = set_cell(lines[3 + k], COLUMNS.index(col), text)  # lines 4..9
    good = write(tmp_path, lines, "good.csv")
    lines[10] = set_cell(lines[10], 40, "abc")  # line 11, in the same block as the NaN lines
    bad = write(tmp_path, lines, "bad.csv")

    code, err, q = run_cli(capsys, good, tmp_path / "good.parquet")
    assert code == 0, err
    quality = json.loads(q.read_text())
    assert quality["null_cells"] == dict.fromkeys(NAN_CELLS, 1)
    assert quality["rows_with_nulls"] == len(NAN_CELLS) and quality["rows"] == 40
    table = pq.read_table(tmp_path / "good.parquet")
    for k, col in enumerate(NAN_CELLS):
        assert table.column(col).null_count == 1 and table.column(col)[2 + k].as_py() is None
        assert not pc.any(pc.is_nan(table.column(col))).as_py()  # nulls, not NaN values

    code, err, _ = run_cli(capsys, bad, tmp_path / "bad.parquet")
    assert code == 1
    assert f"{bad}:11: column 41 ({COLUMNS[40]}) holds 'abc', not a number" in err
    assert_no_output(err, tmp_path, tmp_path / "bad.parquet", tmp_path / "bad.json")

    code, err, q = run_cli(capsys, bad, tmp_path / "bad.parquet", "--bad-rows", "skip")
    assert code == 0, err
    skipped = json.loads(q.read_text())
    assert skipped["skipped_rows"] == {"non_numeric": 1}
    assert skipped["skipped_examples"][0]["line"] == 11
    assert skipped["null_cells"] == quality["null_cells"]
    table = pq.read_table(tmp_path / "bad.parquet")
    assert table.column("pz7").null_count == 1
    assert not pc.any(pc.is_nan(table.column("pz7"))).as_py()


@pytest.mark.parametrize("block_size", [1 << 20, 20000])
@pytest.mark.parametrize(
    ("cells", "blamed", "message"),
    [
        ({"px5": "1e30"}, "px5", "momentum |p| = 1e+30 GeV/c"),
        ({"x3": "-120", "y3": "120"}, "x3", "radius sqrt(x^2 + y^2) = 169.706 cm"),
        ({"y": "151"}, "y", "is beyond conversion.bounds.max_radius_cm = 150"),
        ({"pz7": "-1.5"}, "pz7", "pz = -1.5 GeV/c is not above conversion.bounds.min_pz = 0"),
        ({"pz": "0"}, "pz", "pz = 0 GeV/c is not above"),
        ({"py24": "25"}, "py24", "is beyond conversion.bounds.max_momentum = 20"),
    ],
)
def test_out_of_bounds_is_refused_or_skipped(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch,
    cells: dict[str, str],
    blamed: str,
    message: str,
    block_size: int,
) -> None:
    monkeypatch.setattr(to_parquet, "BLOCK_BYTES", block_size)
    lines = csv_lines(tmp_path, n=120)
    for col, value in cells.items():
        lines[70] = set_cell(lines[70], COLUMNS.index(col), value)  # line 71
    csv = write(tmp_path, lines)
    out = tmp_path / "t.parquet"
    code, err, q = run_cli(capsys, csv, out)
    assert code == 1
    assert f"{csv}:71: column {COLUMNS.index(blamed) + 1} ({blamed}): " in err
    assert message in err
    assert_no_output(err, tmp_path, out, q)

    code, err, q = run_cli(capsys, csv, out, "--bad-rows", "skip")
    assert code == 0, err
    quality = json.loads(q.read_text())
    assert quality["skipped_rows"] == {"out_of_bounds": 1} and quality["rows"] == 119
    assert quality["skipped_examples"][0]["line"] == 71
    assert quality["bounds"] == {"max_radius_cm": 150.0, "max_momentum": 20.0, "min_pz": 0.0}
    assert quality["ranges"]["px"]["max"] < 1 and quality["ranges"]["pz"]["min"] > 0.5


def test_bounds_come_from_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = csv_lines(tmp_path, n=20)
    lines[5] = set_cell(lines[5], COLUMNS.index("pz3"), "-0.5")
    csv = write(tmp_path, lines)
    out = tmp_path / "t.parquet"
    settings = {"conversion": {"bounds": {"min_pz": -1.0, "max_radius_cm": 10}}}
    code, err, q = run_cli(capsys, csv, out, "--settings", json.dumps(settings))
    assert code == 1 and f"{csv}:2: column " in err and "max_radius_cm = 10" in err
    settings["conversion"]["bounds"]["max_radius_cm"] = 150
    code, err, q = run_cli(capsys, csv, out, "--settings", json.dumps(settings))
    assert code == 0, err
    assert json.loads(q.read_text())["ranges"]["pz"]["min"] == -0.5
    out.unlink()
    code, err, q = run_cli(capsys, csv, out, "--settings", '{"conversion": {"bounds": {"r": 1}}}')
    assert code == 1 and "conversion.bounds" in err and "Traceback" not in err
    assert not out.exists()


def test_last_line_without_line_break_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last line cut inside its final cell still parses: flagged, and a warning."""
    lines = csv_lines(tmp_path, n=30)
    last = lines[-1].rsplit(",", 1)
    lines[-1] = last[0] + "," + last[1][: max(1, len(last[1]) // 2)].rstrip(".e-+")
    csv = write(tmp_path, lines, end="")
    code, err, q = run_cli(capsys, csv, tmp_path / "t.parquet")
    assert code == 0, err
    quality = json.loads(q.read_text())
    assert quality["final_newline"] is False and quality["rows"] == 30
    warning = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warning) == 1
    assert f"{csv}: the last line (line 31) has no line break" in warning[0]

    code, err, q = run_cli(capsys, write(tmp_path, lines), tmp_path / "t.parquet")
    assert code == 0 and json.loads(q.read_text())["final_newline"] is True
    assert " WARNING " not in err


@pytest.mark.parametrize("which", ["--csv", "--out", "--quality"])
def test_a_directory_instead_of_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    csv = write(tmp_path, csv_lines(tmp_path, n=5))
    folder = tmp_path / "folder"
    folder.mkdir()
    args = {
        "--csv": str(csv),
        "--out": str(tmp_path / "t.parquet"),
        "--quality": str(tmp_path / "q.json"),
    }
    args[which] = str(folder)
    assert main([a for pair in args.items() for a in pair]) == 1
    err = capsys.readouterr().err
    assert f"ERROR tracklstm.to_parquet: {folder}: is a directory" in err
    assert_no_output(err, tmp_path, tmp_path / "t.parquet", tmp_path / "q.json")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["t.csv.gz", "t.csv"])
def test_gzip_is_read_transparently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    lines = csv_lines(tmp_path, n=150)
    plain = write(tmp_path, lines, "plain.csv")
    packed = tmp_path / name
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    code, err, q = run_cli(capsys, packed, tmp_path / "gz.parquet")
    assert code == 0, err
    assert run_cli(capsys, plain, tmp_path / "plain.parquet")[0] == 0
    np.testing.assert_array_equal(
        read_array(tmp_path / "gz.parquet"), read_array(tmp_path / "plain.parquet")
    )
    quality = json.loads(q.read_text())
    assert quality["compression"] == "gzip" and quality["rows"] == 150
    plain_quality = json.loads((tmp_path / "plain.json").read_text())
    assert plain_quality["compression"] is None
    assert quality["column_ranges"] == plain_quality["column_ranges"]

    # Line numbers count the decompressed lines.
    lines[99] = set_cell(lines[99], 16, "abc")
    packed.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    code, err, _ = run_cli(capsys, packed, tmp_path / "gz.parquet")
    assert code == 1 and f"{packed}:100: column 17 (py2) holds 'abc', not a number" in err

    # A gzip stream cut short is an error naming the file.
    packed.write_bytes(gzip.compress(plain.read_bytes())[:-2000])
    out = tmp_path / "cut.parquet"
    code, err, q = run_cli(capsys, packed, out)
    assert code == 1 and f"{packed}: cannot decompress: gzip data corrupt or cut short" in err
    assert_no_output(err, tmp_path, out, q)


def test_download_record_is_copied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write(tmp_path, csv_lines(tmp_path, n=10))
    code, err, q = run_cli(capsys, csv, tmp_path / "t.parquet")
    quality = json.loads(q.read_text())
    assert quality["download"] is None and quality["verified"] is None  # not downloaded

    record = {"url": "http://x/t.csv", "bytes": csv.stat().st_size, "sha256": "0" * 64}
    record_path = tmp_path / "t.csv.download.json"
    record_path.write_text(json.dumps({**record, "verified": False, "verified_by": None}))
    code, err, q = run_cli(capsys, csv, tmp_path / "t.parquet")
    assert code == 0
    quality = json.loads(q.read_text())
    assert quality["verified"] is False and quality["download"]["url"] == "http://x/t.csv"
    assert f"{csv}: the download was not verified" in err

    record_path.write_text(json.dumps({**record, "verified": True, "verified_by": "sha256"}))
    run_cli(capsys, csv, tmp_path / "t.parquet")
    assert json.loads(q.read_text())["verified"] is True

    # A record of another file (another size) is not this file's.
    record_path.write_text(json.dumps({**record, "bytes": 1, "verified": True}))
    run_cli(capsys, csv, tmp_path / "t.parquet")
    assert json.loads(q.read_text())["verified"] is None
