"""Files in and out: no command writes over one of its own inputs, whatever path names it, and a
path that cannot be written is named as the user gave it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tracklstm.data import challenge, download, simulate, to_parquet, windows
from tracklstm.evaluate import cli as evaluate_cli
from tracklstm.evaluate import predict, quality
from tracklstm.export import aoti, formats
from tracklstm.files import atomic_path, check_outputs, same_file
from tracklstm.train import cli as train_cli

PAYLOAD = b"precious input: must survive\n"


def precious(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PAYLOAD)
    return path


def test_same_file_through_relative_paths_and_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a = precious(tmp_path / "a.csv")
    (tmp_path / "sym.csv").symlink_to(a)
    os.link(a, tmp_path / "hard.csv")
    (tmp_path / "sub").mkdir()
    for other in ("a.csv", "./a.csv", "sub/../a.csv", "sym.csv", "hard.csv"):
        assert same_file(a, other), other
    assert not same_file(a, tmp_path / "b.csv")
    assert not same_file(a, tmp_path / "sub")


def test_check_outputs_names_both_paths(tmp_path: Path) -> None:
    a = precious(tmp_path / "a.csv")
    with pytest.raises(ValueError, match=r"--out .*a\.csv is the input --inputs .*a\.csv"):
        check_outputs({"--out": tmp_path / "." / "a.csv"}, {"--inputs": a})
    with pytest.raises(ValueError, match=r"--onnx .*m\.ts and --out .*m\.ts are the same file"):
        check_outputs({"--out": tmp_path / "m.ts", "--onnx": tmp_path / "m.ts"})
    check_outputs({"--out": tmp_path / "b.csv", "--report": None}, {"--inputs": [a]})


def test_an_output_that_cannot_be_a_file_is_named_as_given(tmp_path: Path) -> None:
    afile = precious(tmp_path / "afile")
    under_a_file = pytest.raises(ValueError, match=r"afile/out\.csv: .*afile is a file, not a dir")
    with under_a_file, atomic_path(afile / "out.csv"):
        pass
    (tmp_path / "folder").mkdir()
    with (
        pytest.raises(ValueError, match=r"folder: is a directory"),
        atomic_path(tmp_path / "folder"),
    ):
        pass
    assert afile.read_bytes() == PAYLOAD and not list(tmp_path.glob(".*tmp"))


def run_dir(path: Path) -> Path:
    """A training run folder's files (the contents do not matter: the check comes first)."""
    for name in ("training.json", "weights_best.pt", "weights_last.pt"):
        precious(path / name)
    return path


# Each command given an output that is one of its inputs (by another spelling, a link, or the
# same path): (inputs to create, argv, the input that must survive).
Case = Callable[[Path], tuple[list[str], Path]]


def _predict_same_input(t: Path) -> tuple[list[str], Path]:
    precious(t / "a.csv")
    return [
        "--model",
        str(t / "m.ts"),
        "--inputs",
        str(t / "a.csv"),
        "--out",
        "./a.csv",
    ], t / "a.csv"


def _predict_over_model(t: Path) -> tuple[list[str], Path]:
    model = precious(t / "model.ts")
    return [
        "--model",
        str(model),
        "--inputs",
        str(precious(t / "a.csv")),
        "--out",
        str(model),
    ], model


def _export_over_weights(t: Path) -> tuple[list[str], Path]:
    run = run_dir(t / "run")
    return ["--run", str(run), "--out", str(run / "weights_best.pt")], run / "weights_best.pt"


def _aoti_over_summary(t: Path) -> tuple[list[str], Path]:
    run = run_dir(t / "run")
    out = run / "training.json"
    return ["--run", str(run), "--out", str(t / "m.aoti.pt2"), "--report", str(out)], out


def _to_parquet_through_symlink(t: Path) -> tuple[list[str], Path]:
    csv = precious(t / "tracks.csv")
    (t / "link.parquet").symlink_to(csv)
    return ["--csv", str(csv), "--out", str(t / "link.parquet")], csv


def _windows_over_a_hard_link(t: Path) -> tuple[list[str], Path]:
    part = precious(t / "tracks.parquet")
    os.link(part, t / "windows.h5")
    return ["--parquet", str(part), "--out", str(t / "windows.h5")], part


def _challenge_over_windows(t: Path) -> tuple[list[str], Path]:
    h5 = precious(t / "windows.h5")
    argv = ["--parquet", str(precious(t / "t.parquet")), "--windows", str(h5)]
    return [*argv, "--inputs-out", str(t / "i.csv"), "--answers-out", str(h5)], h5


def _use_local_onto_itself(t: Path) -> tuple[list[str], Path]:
    src = precious(t / "tracks.csv")
    return ["--path", str(src), "--out", str(t / "sub" / ".." / "tracks.csv")], src


def _quality_over_a_summary(t: Path) -> tuple[list[str], Path]:
    part = precious(t / "shard000.json")
    return ["--out", str(part), str(part)], part


def _train_into_the_windows(t: Path) -> tuple[list[str], Path]:
    h5 = precious(t / "run" / "training.json")
    return ["--windows", str(h5), "--out", str(t / "run")], h5


def _evaluate_over_the_windows(t: Path) -> tuple[list[str], Path]:
    h5 = precious(t / "eval" / "metrics.json")
    model = precious(t / "model.ts")
    return ["--model", str(model), "--windows", str(h5), "--out", str(t / "eval")], h5


CASES: dict[str, tuple[Callable[[list[str]], int], Case]] = {
    "predict --out ./input": (predict.main, _predict_same_input),
    "predict --out model": (predict.main, _predict_over_model),
    "export --out weights": (formats.main, _export_over_weights),
    "aoti --report training.json": (aoti.main, _aoti_over_summary),
    "to_parquet --out symlink to --csv": (to_parquet.main, _to_parquet_through_symlink),
    "windows --out hard link to --parquet": (windows.main, _windows_over_a_hard_link),
    "challenge --answers-out --windows": (challenge.main, _challenge_over_windows),
    "download --path onto itself": (download.main, _use_local_onto_itself),
    "quality --out a summary": (quality.main, _quality_over_a_summary),
    "train --out holding --windows": (train_cli.main, _train_into_the_windows),
    "evaluate --out holding --windows": (evaluate_cli.main, _evaluate_over_the_windows),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_command_writes_over_its_input(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before anything is read: exit 1, one line naming both paths, the input intact."""
    monkeypatch.chdir(tmp_path)
    main, make = CASES[case]
    argv, survivor = make(tmp_path)
    assert main(argv) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "is the input" in err and "destroy" in err, err
    assert survivor.name in err.split("is the input")[1], err
    assert survivor.read_bytes() == PAYLOAD


def test_export_outputs_that_are_one_file_are_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    run = run_dir(tmp_path / "run")
    out = tmp_path / "model.ts"
    assert formats.main(["--run", str(run), "--out", str(out), "--onnx", str(out)]) == 1
    err = capfd.readouterr().err
    assert f"--onnx {out} and --out {out} are the same file" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_an_output_path_that_cannot_be_a_file_names_the_users_path(
    where: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    afile = precious(tmp_path / "afile")
    (tmp_path / "folder").mkdir()
    out = afile / "tracks.csv" if where == "under a file" else tmp_path / "folder"
    rc = simulate.main(["--n-tracks", "3", "--seed", "1", "--out", str(out)])
    err = capfd.readouterr().err
    assert rc == 1 and f"{out}:" in err, err
    assert ("afile is a file" if where == "under a file" else "is a directory") in err
    assert ".tmp" not in err and "Errno" not in err and "Traceback" not in err
    assert afile.read_bytes() == PAYLOAD
