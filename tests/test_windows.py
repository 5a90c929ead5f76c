"""Windows: every complete window, split by track (seeded), normalization from training only."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import toy_tracks

from tracklstm.constants import COLUMNS, FEATURES, N_PLANES, PLANE_Z
from tracklstm.data.windows import SPLITS, build, main, make_windows, split_tracks


def reference_windows(tracks: np.ndarray, length: int, last: int, stride: int = 1):
    """Per-offset slicing, one track at a time: the obvious (slow) way, for comparison."""
    out = []
    for t, track in enumerate(tracks):
        for off in range(0, last - length + 1, stride):
            window = track[off : off + length + 1]
            if np.isfinite(window).all():
                out.append((t, off + length, window[:length], window[length]))
    return out


def with_holes(n: int, seed: int = 0) -> np.ndarray:
    """Toy tracks with empty values: a missing plane in some, one missing value in others."""
    tracks = toy_tracks(n, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    for t in rng.choice(n, n // 4, replace=False):
        tracks[t, rng.integers(0, N_PLANES)] = np.nan
    for t in rng.choice(n, n // 4, replace=False):
        tracks[t, rng.integers(0, N_PLANES), rng.integers(0, 6)] = np.nan
    return tracks


def write_parquet(tracks: np.ndarray, path: Path) -> Path:
    flat = tracks.reshape(len(tracks), -1).astype(np.float32)
    arrays = [pa.array(flat[:, j], mask=np.isnan(flat[:, j])) for j in range(flat.shape[1])]
    pq.write_table(pa.table(arrays, names=list(COLUMNS)), path)
    return path


def test_complete_tracks_give_every_window() -> None:
    tracks = toy_tracks(10).astype(np.float32)
    inputs, targets, track, plane = make_windows(tracks, 7)
    assert inputs.shape == (10 * 18, 7, 6) and targets.shape == (10 * 18, 6)
    assert inputs.dtype == targets.dtype == np.float32
    np.testing.assert_array_equal(track, np.repeat(np.arange(10), 18))
    np.testing.assert_array_equal(plane, np.tile(np.arange(7, 25), 10))
    np.testing.assert_array_equal(inputs[20], tracks[1, 2:9])
    np.testing.assert_array_equal(targets[20], tracks[1, 9])
    # The reference stopped at plane 23: 17 windows per track.
    assert len(make_windows(tracks, 7, last_target_plane=23)[0]) == 10 * 17
    assert len(make_windows(tracks, 7, stride=2)[0]) == 10 * 9


@pytest.mark.parametrize(
    ("length", "last", "stride"), [(7, 24, 1), (7, 23, 1), (3, 20, 2), (1, 24, 1)]
)
def test_missing_values_leave_every_complete_window(length: int, last: int, stride: int) -> None:
    tracks = with_holes(60)
    expected = reference_windows(tracks, length, last, stride)
    inputs, targets, track, plane = make_windows(tracks, length, stride, last)
    assert len(inputs) == len(expected)
    assert [(t, p) for t, p, _, _ in expected] == list(
        zip(track.tolist(), plane.tolist(), strict=True)
    )
    np.testing.assert_array_equal(inputs, np.stack([w for _, _, w, _ in expected]))
    np.testing.assert_array_equal(targets, np.stack([y for _, _, _, y in expected]))
    assert np.isfinite(inputs).all() and np.isfinite(targets).all()


def test_a_missing_plane_costs_only_its_windows() -> None:
    tracks = toy_tracks(2).astype(np.float32)
    tracks[0, 12] = np.nan  # plane 12 is in the windows at offsets 5..12 (targets 12..19)
    _, _, track, plane = make_windows(tracks, 7)
    kept = set(plane[track == 0].tolist())
    assert kept == {7, 8, 9, 10, 11} | {20, 21, 22, 23, 24}
    assert (track == 1).sum() == 18


def test_bad_settings() -> None:
    tracks = toy_tracks(2)
    with pytest.raises(ValueError, match="leaves no target plane"):
        make_windows(tracks, 10, last_target_plane=9)
    with pytest.raises(ValueError, match="last_target_plane"):
        make_windows(tracks, 7, last_target_plane=25)
    with pytest.raises(ValueError, match="at least 1"):
        make_windows(tracks, 7, stride=0)


def test_split_by_track_is_seeded() -> None:
    a = split_tracks(1000, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=5)
    b = split_tracks(1000, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=5)
    c = split_tracks(1000, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert np.bincount(a, minlength=3).tolist() == [800, 100, 100]
    assert np.bincount(split_tracks(10, {"train": 8, "validation": 1, "test": 1}, 0)).tolist() == [
        8,
        1,
        1,
    ]


@pytest.fixture
def holes_h5(tmp_path: Path) -> tuple[np.ndarray, Path]:
    tracks = with_holes(300, seed=2)
    out = tmp_path / "windows.h5"
    parts = tmp_path / "tracks.parquet"
    parts.mkdir()
    write_parquet(tracks[:170], parts / "shard000.parquet")
    write_parquet(tracks[170:], parts / "shard001.parquet")
    build(parts, out, seed=11, batch_rows=64)
    return tracks, out


def test_build_windows_file(holes_h5: tuple[np.ndarray, Path]) -> None:
    tracks, out = holes_h5
    expected = reference_windows(tracks, 7, 24)
    with h5py.File(out) as h5:
        split_tracks_ = {s: h5["tracks"][s][...] for s in SPLITS}
        all_tracks = np.concatenate(list(split_tracks_.values()))
        assert sorted(all_tracks.tolist()) == list(range(300))  # every track, in one split only
        assert [len(split_tracks_[s]) for s in SPLITS] == [240, 30, 30]
        found = []
        for s in SPLITS:
            g = h5[s]
            t = g["track"][...]
            assert set(t.tolist()) <= set(split_tracks_[s].tolist())
            assert g["inputs"].dtype == np.float32 and g["target_plane"].dtype == np.int8
            np.testing.assert_array_equal(
                g["inputs"][...],
                tracks[t[:, None], g["target_plane"][...][:, None] - 7 + np.arange(7)],
            )
            np.testing.assert_array_equal(g["targets"][...], tracks[t, g["target_plane"][...]])
            found += list(zip(t.tolist(), g["target_plane"][...].tolist(), strict=True))
        assert sorted(found) == [(t, p) for t, p, _, _ in expected]

        train = h5["train"]
        values = np.concatenate([train["inputs"][...].reshape(-1, 6), train["targets"][...]])
        np.testing.assert_array_equal(h5.attrs["norm_min"], values.min(axis=0))
        np.testing.assert_array_equal(h5.attrs["norm_max"], values.max(axis=0))
        assert list(h5.attrs["features"]) == list(FEATURES)
        np.testing.assert_allclose(h5.attrs["plane_z"], PLANE_Z)
        assert h5.attrs["window_length"] == 7 and h5.attrs["stride"] == 1
        assert h5.attrs["last_target_plane"] == 24 and h5.attrs["split_seed"] == 11
        assert h5.attrs["n_tracks"] == 300
        assert json.loads(h5.attrs["split_fractions"]) == {
            "train": 0.8,
            "validation": 0.1,
            "test": 0.1,
        }
        assert json.loads(h5.attrs["n_windows"]) == {s: len(h5[s]["track"]) for s in SPLITS}
        assert len(h5.attrs["data_fingerprint"]) == 64


def test_normalization_from_training_tracks_only(tmp_path: Path) -> None:
    tracks = toy_tracks(200, seed=4).astype(np.float32)
    labels = split_tracks(200, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    test_track = int(np.nonzero(labels == 2)[0][0])
    tracks[test_track, 10, 0] = 999.0  # far outside; in a test track only
    write_parquet(tracks, tmp_path / "t.parquet")
    build(tmp_path / "t.parquet", tmp_path / "w.h5", seed=3)
    with h5py.File(tmp_path / "w.h5") as h5:
        assert h5.attrs["norm_max"][0] < 500
        assert h5.attrs["norm_max"][0] == tracks[labels == 0][:, :, 0].max()
        assert (h5["test"]["inputs"][...][..., 0] == 999.0).any()


def test_batches_do_not_change_the_file(tmp_path: Path, holes_h5: tuple[np.ndarray, Path]) -> None:
    _, out = holes_h5
    build(tmp_path / "tracks.parquet", tmp_path / "big.h5", seed=11)  # one batch
    with h5py.File(out) as a, h5py.File(tmp_path / "big.h5") as b:
        for s in SPLITS:
            for name in ("inputs", "targets", "track", "target_plane"):
                np.testing.assert_array_equal(a[s][name][...], b[s][name][...])
        np.testing.assert_array_equal(a.attrs["norm_min"], b.attrs["norm_min"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_parquet(toy_tracks(50).astype(np.float32), tmp_path / "t.parquet")
    out = tmp_path / "w.h5"
    args = ["--parquet", str(tmp_path / "t.parquet"), "--out", str(out), "--split", "0.6,0.2,0.2"]
    assert main([*args, "--seed", "1", "--last-target-plane", "23"]) == 0
    with h5py.File(out) as h5:
        assert [len(h5["tracks"][s]) for s in SPLITS] == [30, 10, 10]
        assert len(h5["train"]["track"]) == 30 * 17
    assert main(["--parquet", str(tmp_path / "missing.parquet"), "--out", str(out)]) == 1
    assert "missing.parquet: no such file" in capsys.readouterr().err


def test_no_training_window_is_an_error(tmp_path: Path) -> None:
    tracks = toy_tracks(20).astype(np.float32)
    tracks[:, ::4] = np.nan  # a gap every 4 planes: no 8 planes in a row
    write_parquet(tracks, tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="cannot fit the normalization: 0 training windows"):
        build(tmp_path / "t.parquet", tmp_path / "w.h5")
    assert not (tmp_path / "w.h5").exists()


def _windows_error(capsys: pytest.CaptureFixture[str], parquet: Path, out: Path) -> str:
    """Run the CLI, expect exit 1 and one error line; return that line."""
    assert main(["--parquet", str(parquet), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))
    return errors[0]


def test_not_a_parquet_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    line = _windows_error(capsys, junk, tmp_path / "w.h5")
    assert f"{junk}: not a readable Parquet file" in line


def test_missing_and_wrong_columns_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pq.read_table(write_parquet(toy_tracks(20).astype(np.float32), tmp_path / "t.parquet"))
    part = tmp_path / "few.parquet"
    pq.write_table(table.drop_columns(["x3", "pz24"]), part)
    line = _windows_error(capsys, part, tmp_path / "w.h5")
    assert f"{part}: 2 of the 150 track columns are missing (x3, pz24)" in line

    pq.write_table(table.select(["x", "y"]), part)
    line = _windows_error(capsys, part, tmp_path / "w.h5")
    assert f"{part}: 148 of the 150 track columns are missing (z, px, py, pz, x1, y1, ...)" in line

    strings = table.set_column(7, "y1", pa.array(["a"] * 20))
    pq.write_table(strings, part)
    line = _windows_error(capsys, part, tmp_path / "w.h5")
    assert f"{part}: column y1 is string, expected floats" in line


def test_corrupt_data_pages_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = write_parquet(toy_tracks(300).astype(np.float32), tmp_path / "t.parquet")
    data = bytearray(part.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 20000] = np.random.default_rng(1).bytes(20000)  # footer kept
    part.write_bytes(bytes(data))
    line = _windows_error(capsys, part, tmp_path / "w.h5")
    assert f"{part}: cannot read this Parquet file (" in line


def test_output_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = write_parquet(toy_tracks(20).astype(np.float32), tmp_path / "t.parquet")
    folder = tmp_path / "w.h5"
    folder.mkdir()
    assert main(["--parquet", str(part), "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{folder}: is a directory; the windows HDF5 output must be a file path" in err
    assert "Traceback" not in err and list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("chunk", "n", "batch_rows", "stride", "last", "holes"),
    [
        (4096, 1500, 4096, 1, 24, False),  # complete tracks: strided copies, several chunks
        (4096, 1500, 333, 1, 24, True),  # with holes: index arrays
        (64, 400, 50, 2, 23, False),  # many small chunks, batches across chunk boundaries
        (64, 400, 37, 3, 20, True),
    ],
)
def test_windows_across_chunks_match_make_windows(
    tmp_path: Path,
    monkeypatch,
    chunk: int,
    n: int,
    batch_rows: int,
    stride: int,
    last: int,
    holes: bool,
) -> None:
    """The file holds, per split, exactly make_windows' windows of that split's tracks, in
    order, whatever the chunk size and batch size; the normalization is their min and max."""
    from tracklstm.data import windows

    monkeypatch.setattr(windows, "CHUNK", chunk)
    tracks = with_holes(n, seed=5) if holes else toy_tracks(n, seed=5).astype(np.float32)
    write_parquet(tracks, tmp_path / "t.parquet")
    out = tmp_path / "w.h5"
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    kwargs = {"length": 7, "stride": stride, "last_target_plane": last}
    build(tmp_path / "t.parquet", out, fractions=fractions, seed=9, batch_rows=batch_rows, **kwargs)
    labels = split_tracks(n, fractions, 9)
    inputs, targets, track, plane = make_windows(tracks, 7, stride, last)
    with h5py.File(out) as h5:
        for i, s in enumerate(SPLITS):
            keep = labels[track] == i
            np.testing.assert_array_equal(h5[s]["inputs"][...], inputs[keep])
            np.testing.assert_array_equal(h5[s]["targets"][...], targets[keep])
            np.testing.assert_array_equal(h5[s]["track"][...], track[keep])
            np.testing.assert_array_equal(h5[s]["target_plane"][...], plane[keep])
            assert h5[s]["inputs"].chunks == (chunk, 7, 6)
        train = labels[track] == 0
        values = np.concatenate([inputs[train].reshape(-1, 6), targets[train]])
        np.testing.assert_array_equal(h5.attrs["norm_min"], values.min(axis=0))
        np.testing.assert_array_equal(h5.attrs["norm_max"], values.max(axis=0))
        assert json.loads(h5.attrs["n_windows"])["train"] == int(train.sum())


def test_reading_ahead_stops_with_the_consumer() -> None:
    """The reader thread ends when the consumer stops early or fails, and hands on errors."""
    from tracklstm.data.windows import _in_background

    def items(fail_at: int | None = None):
        for i in range(100):
            if i == fail_at:
                raise ValueError(f"part {i}: cannot read")
            yield i

    assert list(_in_background(items())) == list(range(100))
    gen = _in_background(items(), depth=1)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # the consumer stops early: the thread is joined, nothing hangs
    with pytest.raises(ValueError, match="part 5: cannot read"):
        list(_in_background(items(fail_at=5)))
    gen = _in_background(items(fail_at=50), depth=1)
    with pytest.raises(RuntimeError):
        for i in gen:
            if i == 10:
                raise RuntimeError("the consumer fails")


def test_every_reader_refuses_a_windows_file_changed_after_it_was_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """windows.h5 records each dataset's checksum; four values set to 1e4 cm afterwards are
    refused by the training, the evaluation and the challenge files, each naming the file and
    the dataset (exit 1, one line), and nothing is written."""
    from test_evaluate import untrained_model

    from tracklstm.data import challenge
    from tracklstm.evaluate import cli as evaluate_cli
    from tracklstm.train import cli as train_cli

    part = write_parquet(toy_tracks(120, seed=3).astype(np.float32), tmp_path / "t.parquet")
    h5_path = tmp_path / "windows.h5"
    assert main(["--parquet", str(part), "--out", str(h5_path)]) == 0
    model = untrained_model(tmp_path / "m.ts", h5_path)
    with h5py.File(h5_path) as h5:
        datasets: list[str] = []
        h5.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(datasets) == 15 and all(len(h5[n].attrs["sha256"]) == 64 for n in datasets)
    with h5py.File(h5_path, "a") as h5:
        for split in ("train", "test"):
            h5[f"{split}/inputs"][0, :2, 0] = 1e4
        h5["tracks/test"][0] = 10**6
    capfd.readouterr()
    out = tmp_path / "out"
    runs = {
        "train/inputs": train_cli.main(["--windows", str(h5_path), "--out", str(out / "run")]),
        "test/inputs": evaluate_cli.main(
            ["--model", str(model), "--windows", str(h5_path), "--out", str(out)]
        ),
        "tracks/test": challenge.main(
            [
                "--parquet",
                str(part),
                "--windows",
                str(h5_path),
                "--inputs-out",
                str(out / "i.csv"),
                "--answers-out",
                str(out / "a.csv"),
            ]
        ),
    }
    err = capfd.readouterr().err.strip().splitlines()
    assert list(runs.values()) == [1, 1, 1] and len(err) == 3, err
    for line, (name, _) in zip(err, runs.items(), strict=True):
        assert f"{h5_path}: {name} does not match its checksum" in line, line
    assert not out.exists() or not any(out.rglob("*.*")), list(out.rglob("*"))
