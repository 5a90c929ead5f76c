"""predict: challenge-format test rows -> answers with an exported TorchScript model."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_tracks
from test_export import make_run

from tracklstm.constants import PLANE_Z
from tracklstm.evaluate.predict import ChallengeInputError, main, predict_file, read_challenge_rows
from tracklstm.evaluate.real_track import REAL_TRACK_FILE
from tracklstm.export.formats import export, export_torchscript
from tracklstm.export.loading import load_torchscript, predict_windows

ROOT = Path(__file__).resolve().parents[1]
REAL_TRACK = REAL_TRACK_FILE


@pytest.fixture(scope="module")
def model_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("predict")
    run = make_run(base / "run")
    export_torchscript(run, base / "model.ts")
    return base / "model.ts"


def row_text(track: np.ndarray, n_states: int, target_z: float | None = None) -> str:
    """A test-input line: the first ``n_states`` states and the z of the plane to predict."""
    z = PLANE_Z[n_states] if target_z is None else target_z
    return ",".join(f"{v:.6g}" for v in [*track[:n_states].ravel(), z])


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def rounded(values: np.ndarray) -> np.ndarray:
    """What the file holds: 6 significant digits."""
    return np.array([float(f"{v:.6g}") for v in np.ravel(values)]).reshape(np.shape(values))


def test_predicts_the_plane_after_the_last_seven_states(model_ts: Path, tmp_path: Path) -> None:
    tracks = toy_tracks(40, seed=5)
    n_states = np.random.default_rng(0).integers(7, 25, size=len(tracks))
    n_states[:3] = [7, 24, 12]
    inputs = write_rows(
        tmp_path / "in.csv", [row_text(t, int(n)) for t, n in zip(tracks, n_states, strict=True)]
    )
    stats = predict_file(model_ts, inputs, tmp_path / "out.csv", batch=16)
    assert stats["rows"] == len(tracks)

    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert len(lines) == len(tracks)
    got = np.array([[float(v) for v in line.split(",")] for line in lines])
    assert got.shape == (len(tracks), 5)

    model, _ = load_torchscript(model_ts)
    windows = np.stack(
        [rounded(t[n - 7 : n]) for t, n in zip(tracks, n_states, strict=True)]
    ).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(windows)).numpy()[:, [0, 1, 3, 4, 5]]
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-7 * np.abs(want).max())


def test_onnx_model_gives_the_same_answers(model_ts: Path, tmp_path: Path) -> None:
    """--model model.onnx runs under onnxruntime; answers agree with TorchScript's to rounding."""
    run = make_run(tmp_path / "run")  # the same weights as model_ts (seed 0)
    export(run, torchscript=tmp_path / "model.ts", onnx=tmp_path / "model.onnx")
    tracks = toy_tracks(30, seed=12)
    inputs = write_rows(tmp_path / "in.csv", [row_text(t, 15) for t in tracks])
    stats = predict_file(tmp_path / "model.onnx", inputs, tmp_path / "onnx.csv", batch=8)
    assert stats["engine"] == "onnxruntime"
    predict_file(model_ts, inputs, tmp_path / "ts.csv")
    got = np.loadtxt(tmp_path / "onnx.csv", delimiter=",")
    want = np.loadtxt(tmp_path / "ts.csv", delimiter=",")
    assert got.shape == want.shape == (30, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_answers_have_seven_significant_digits_and_no_header(
    model_ts: Path, tmp_path: Path
) -> None:
    tracks = toy_tracks(3, seed=1)
    inputs = write_rows(tmp_path / "in.csv", [row_text(t, 10) for t in tracks])
    predict_file(model_ts, inputs, tmp_path / "out.csv")
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert len(rows) == 3
    for row in rows:
        assert len(row) == 5
        for cell in row:
            float(cell)  # a number, not a header
            assert len(cell.lstrip("-").replace(".", "").split("e")[0].lstrip("0")) <= 7


def test_real_track_row(model_ts: Path, tmp_path: Path) -> None:
    """A row built from a real challenge track (6-digit values) reads and predicts."""
    data = np.loadtxt(REAL_TRACK, delimiter=",", comments="#", skiprows=5)
    states = data[:, 1:]
    assert states.shape == (24, 6)
    inputs = write_rows(tmp_path / "in.csv", [row_text(states, 23)])
    rows = read_challenge_rows(inputs)
    np.testing.assert_allclose(rows.windows[0], states[16:23], rtol=1e-6)
    assert rows.target_plane.tolist() == [23]
    predict_file(model_ts, inputs, tmp_path / "out.csv")
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1


def bad_file(tmp_path: Path, bad_line: str, good: int = 2) -> Path:
    tracks = toy_tracks(good, seed=2)
    lines = [row_text(t, 9) for t in tracks]
    lines.insert(1, bad_line)  # line 2 of the file
    return write_rows(tmp_path / "bad.csv", lines)


@pytest.mark.parametrize(
    ("make_line", "message"),
    [
        (lambda t: row_text(t, 6), r"line 2: 6 states; the model needs the last 7"),
        (
            lambda t: row_text(t, 9, target_z=PLANE_Z[11]),
            r"line 2: target z = 244\.015 cm is not the plane after the row's last state "
            r"\(last state z = 237\.639 cm, next plane z = 239\.765 cm\)",
        ),
        (lambda t: row_text(t, 9, target_z=PLANE_Z[9] + 0.5), r"line 2: target z"),
        (lambda t: row_text(t, 9)[:-9], r"line 2: \d+ values; a row holds 6 per state"),
        (
            lambda t: row_text(np.delete(t, 5, axis=0), 9),
            r"line 2: the last 7 states \(z = .*\) are not on consecutive planes",
        ),
        (lambda t: row_text(t, 9).replace(",", ",,", 1), r"line 2: \d+ values|line 2: value 2"),
        (lambda t: "nan," + row_text(t, 9).split(",", 1)[1], r"line 2: value 1 is empty"),
        (lambda t: row_text(t, 9).replace(",", ",abc,", 1), r"line 2, value 2: 'abc'"),
        (lambda t: row_text(t, 9).replace(",", ",1.5.3,", 1), r"line 2, value 2: '1.5.3'"),
        (lambda t: row_text(t, 9).replace(",", ',"1,5",', 1), r"line 2, value 2: '\"1'"),
        (lambda t: row_text(t, 9) + ",", r"line 2: \d+ values; a row holds 6 per state"),
        (lambda t: row_text(t, 9).replace(",", ",  ,", 1), r"line 2, value 2: ''"),
        (
            lambda t: ",".join(f"{v:.6g}" for v in [*t.ravel(), 350.0]),
            r"line 2: the last state is on the last plane",
        ),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, make_line, message: str) -> None:
    track = toy_tracks(1, seed=9)[0]
    path = bad_file(tmp_path, make_line(track))
    with pytest.raises(ChallengeInputError, match=message):
        read_challenge_rows(path)


def test_state_off_the_planes(tmp_path: Path) -> None:
    track = toy_tracks(1, seed=9)[0].copy()
    track[7, 2] += 1.0  # z of the 8th state between planes
    with pytest.raises(ChallengeInputError, match=r"line 2: state z = 236\.514 cm is not the z"):
        read_challenge_rows(bad_file(tmp_path, row_text(track, 9)))


@pytest.mark.parametrize("threads", [1, 2])
def test_error_lists_first_bad_rows_and_counts_the_rest(tmp_path: Path, threads: int) -> None:
    tracks = toy_tracks(12, seed=3)
    lines = [row_text(t, 5 if i % 2 else 9) for i, t in enumerate(tracks)]
    path = write_rows(tmp_path / "in.csv", lines)
    with pytest.raises(ChallengeInputError) as err:
        read_challenge_rows(path, chunk_rows=4, threads=threads)  # bad rows in every chunk
    text = str(err.value)
    assert "6 of 12 rows cannot be predicted" in text
    assert "line 2: 5 states" in text and "line 10: 5 states" in text
    assert "line 12" not in text and "(and 1 more)" in text


def test_a_blank_line_between_rows_is_an_error_naming_it(
    model_ts: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The answers keep the input's lines one for one: a blank line between rows would shift
    every answer after it, so it stops the run (blank lines at the end answer nothing)."""
    tracks = toy_tracks(3, seed=4)
    lines = [row_text(tracks[0], 9), "", row_text(tracks[1], 8), "  ", row_text(tracks[2], 7)]
    path = write_rows(tmp_path / "in.csv", lines)
    with pytest.raises(ChallengeInputError, match=r"in\.csv, line 2: blank line between rows"):
        read_challenge_rows(path)
    out = tmp_path / "out.csv"
    rc = main(["--model", str(model_ts), "--inputs", str(path), "--out", str(out)])
    err = capfd.readouterr().err
    assert rc == 1 and not out.exists()
    assert "line 2: blank line between rows" in err and "Traceback" not in err
    write_rows(path, [lines[0], lines[2], lines[4], "", " "])
    rows = read_challenge_rows(path)
    assert rows.lines.tolist() == [1, 2, 3]
    assert rows.target_plane.tolist() == [9, 8, 7]


def test_chunks_give_the_same_windows(tmp_path: Path) -> None:
    tracks = toy_tracks(25, seed=6)
    ns = np.random.default_rng(1).integers(7, 25, size=len(tracks))
    path = write_rows(
        tmp_path / "in.csv", [row_text(t, int(n)) for t, n in zip(tracks, ns, strict=True)]
    )
    whole = read_challenge_rows(path)
    for threads in (1, 3):
        chunked = read_challenge_rows(path, chunk_rows=4, threads=threads)
        np.testing.assert_array_equal(whole.windows, chunked.windows)
        np.testing.assert_array_equal(whole.target_plane, chunked.target_plane)
    np.testing.assert_array_equal(whole.target_plane, ns)
    assert whole.windows.dtype == np.float32 and whole.windows.shape == (25, 7, 6)
    want = np.stack([t[n - 7 : n] for t, n in zip(tracks, ns, strict=True)])
    np.testing.assert_array_equal(whole.windows, rounded(want).astype(np.float32))


def test_gzip_input_reads_the_same_and_corrupt_gzip_is_named(tmp_path: Path) -> None:
    tracks = toy_tracks(9, seed=4)
    lines = [row_text(t, 7 + i) for i, t in enumerate(tracks)]
    plain = read_challenge_rows(write_rows(tmp_path / "in.csv", lines))
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress((tmp_path / "in.csv").read_bytes()))
    unpacked = read_challenge_rows(packed)
    np.testing.assert_array_equal(plain.windows, unpacked.windows)
    assert unpacked.lines.tolist() == plain.lines.tolist()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(ChallengeInputError, match=r"cut\.csv\.gz: cannot decompress"):
        read_challenge_rows(cut)


def test_first_parse_error_in_file_order(tmp_path: Path) -> None:
    """With several chunks parsed at once, the error is still the first bad field of the file."""
    tracks = toy_tracks(20, seed=8)
    lines = [row_text(t, 9) for t in tracks]
    lines[6] = lines[6].replace(",", ",one,", 1)
    lines[17] = lines[17].replace(",", ",two,", 1)
    path = write_rows(tmp_path / "in.csv", lines)
    with pytest.raises(ChallengeInputError, match=r"line 7, value 2: 'one'"):
        read_challenge_rows(path, chunk_rows=3, threads=2)


def test_windows_and_crlf_line_ends_read_the_same(tmp_path: Path) -> None:
    tracks = toy_tracks(6, seed=2)
    lines = [row_text(t, 7 + i) for i, t in enumerate(tracks)]
    unix = read_challenge_rows(write_rows(tmp_path / "unix.csv", lines))
    dos = tmp_path / "dos.csv"
    dos.write_bytes(("\r\n".join(lines)).encode())  # no final line end either
    crlf = read_challenge_rows(dos)
    np.testing.assert_array_equal(unix.windows, crlf.windows)
    assert crlf.lines.tolist() == [1, 2, 3, 4, 5, 6]


def test_empty_file_is_an_error_and_writes_nothing(model_ts: Path, tmp_path: Path, capfd) -> None:
    """No row to predict is a mistake (a wrong file, a failed earlier step), not empty answers."""
    for text in ("", "\n\n"):
        (tmp_path / "in.csv").write_text(text)
        rc = main(
            [
                "--model",
                str(model_ts),
                "--inputs",
                str(tmp_path / "in.csv"),
                "--out",
                str(tmp_path / "out.csv"),
            ]
        )
        assert rc == 1 and not (tmp_path / "out.csv").exists()
        assert f"{tmp_path / 'in.csv'}: no rows to predict" in capfd.readouterr().err


def test_impossible_states_non_utf8_and_bad_models_are_named(
    model_ts: Path, tmp_path: Path, capfd
) -> None:
    """A px of 1e30 or x of 1e5 cm is refused naming its line; so is a non-UTF-8 file; a model
    file that is not a model is named; one line each, exit 1, no answers file."""
    good = ",".join(
        f"{x:g},{y:g},{z},0.1,-0.05,1.5"
        for x, y, z in zip([1.0] * 7, [2.0] * 7, PLANE_Z[:7], strict=True)
    )
    line = f"{good},{PLANE_Z[7]}"
    out = tmp_path / "out.csv"
    cases = {
        "px": (line + "\n" + line.replace("0.1,", "1e30,", 1) + "\n").encode(),
        "x": (line + "\n" + line + "\n" + line.replace("1,2,", "100000,2,", 1) + "\n").encode(),
        "utf8": line.encode() + b"\n\xff\xfe,1,2\n",
    }
    expected = {
        "px": r":? ?.*line 2: state 1 \(z = 65 cm\): momentum",
        "x": r".*line 3: state 1 \(z = 65 cm\): radius",
        "utf8": ":2: not UTF-8 text",
    }
    for name, data in cases.items():
        inputs = tmp_path / f"{name}.csv"
        inputs.write_bytes(data)
        rc = main(["--model", str(model_ts), "--inputs", str(inputs), "--out", str(out)])
        err = capfd.readouterr().err
        assert rc == 1 and not out.exists(), err
        assert re.search(re.escape(str(inputs)) + expected[name], err), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for junk in (b"", b"not a model", bytes(range(256)) * 40):
        bad_model = tmp_path / "bad.ts"
        bad_model.write_bytes(junk)
        inputs = tmp_path / "ok.csv"
        inputs.write_text(line + "\n")
        rc = main(["--model", str(bad_model), "--inputs", str(inputs), "--out", str(out)])
        err = capfd.readouterr().err
        assert rc == 1 and not out.exists() and str(bad_model) in err, err
        assert "Traceback" not in err


def test_predict_windows_batches_agree(model_ts: Path) -> None:
    model, meta = load_torchscript(model_ts)
    rng = np.random.default_rng(0)
    lo, hi = np.array(meta["norm_min"]), np.array(meta["norm_max"])
    x = (lo + rng.random((50, 7, 6)) * (hi - lo)).astype(np.float32)
    threads = torch.get_num_threads()
    one = predict_windows(model, x, batch=50, workers=1)
    many = predict_windows(model, x, batch=7, workers=3)  # 8 batches over 3 threads
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(one, many, rtol=1e-6, atol=1e-6 * (hi - lo).max())
    with torch.no_grad():
        direct = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(many, direct, rtol=1e-6, atol=1e-6 * (hi - lo).max())


def test_cli(model_ts: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    tracks = toy_tracks(4, seed=8)
    good = write_rows(tmp_path / "good.csv", [row_text(t, 8) for t in tracks])
    out = tmp_path / "pred.csv"
    args = ["--model", str(model_ts), "--out", str(out), "--threads", "1"]
    assert main([*args, "--inputs", str(good)]) == 0
    assert len(out.read_text().splitlines()) == 4

    bad = write_rows(tmp_path / "bad.csv", [row_text(tracks[0], 8), row_text(tracks[1], 3)])
    out.unlink()
    assert main([*args, "--inputs", str(bad)]) == 1
    assert not out.exists()
    err = capfd.readouterr().err
    assert "bad.csv: 1 of 2 rows cannot be predicted: line 2: 3 states" in err
    assert "Traceback" not in err

    assert main([*args, "--inputs", str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv" in capfd.readouterr().err


def test_every_state_of_a_row_is_within_bounds_not_only_the_window(
    model_ts: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """One bounds rule for every state of a row: a negative pz three states before the window
    is refused, naming the line and the state, as inside the window."""
    track = toy_tracks(1, seed=5)[0].copy()
    track[2, 5] = -1.5  # state 3 of the row; with 12 states the window is states 6..12
    lines = [row_text(toy_tracks(1, seed=6)[0], 9), row_text(track, 12)]
    path = write_rows(tmp_path / "in.csv", lines)
    out = tmp_path / "out.csv"
    rc = main(["--model", str(model_ts), "--inputs", str(path), "--out", str(out)])
    err = capfd.readouterr().err
    assert rc == 1 and not out.exists()
    assert re.search(r"line 2: state 3 \(z = [\d.]+ cm\): pz = -1\.5 GeV/c", err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_model_answering_nan_is_refused_and_writes_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """NaN or infinite answers are never written: exit 1, one line naming the model and how
    many rows."""

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x[:, -1].clone()
            out[1:, 0] = float("nan")  # every row but the first
            return out

    model = tmp_path / "broken.ts"
    torch.jit.script(Broken()).save(
        str(model), _extra_files={"metadata.json": json.dumps({"window_length": 7})}
    )
    tracks = toy_tracks(3, seed=7)
    path = write_rows(tmp_path / "in.csv", [row_text(t, 8) for t in tracks])
    out = tmp_path / "out.csv"
    assert main(["--model", str(model), "--inputs", str(path), "--out", str(out)]) == 1
    err = capfd.readouterr().err
    assert f"{model}: the model's answer is NaN or infinite for 2 of 3 rows" in err, err
    assert "line 2 of" in err and "Traceback" not in err and not out.exists()
