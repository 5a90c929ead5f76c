"""The `tracklstm` console command dispatches to every stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tracklstm import cli


def test_usage_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command() -> None:
    assert cli.main(["nope"]) == 2


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_stage_has_help(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracklstm.cli", name, "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    # the program name is what a user types: `tracklstm <command>`
    assert result.stdout.startswith(f"usage: tracklstm {name}"), result.stdout[:200]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import tracklstm

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"tracklstm {tracklstm.__version__}\n"


#: The names users know: ``python -m tracklstm.<name>`` runs each stage (the rules call the
#: modules where the stages live; these keep the short names working).
STAGE_NAMES = (
    "simulate", "download", "to_parquet", "windows", "challenge", "train", "export", "aoti",
    "predict", "evaluate", "compare",
)  # fmt: skip


def test_python_m_runs_every_stage_by_its_short_name() -> None:
    """``python -m tracklstm.<name> --help`` for every stage, in one process (runpy is what
    ``python -m`` uses): each prints its own usage and exits 0."""
    code = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    sys.argv = [name, '--help']\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            runpy.run_module(f'tracklstm.{name}', run_name='__main__', alter_sys=True)\n"
        "            code = None\n"
        "        except SystemExit as exit:\n"
        "            code = exit.code\n"
        "    out[name] = [code, buf.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *STAGE_NAMES], capture_output=True, text=True, check=True
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name in STAGE_NAMES:
        code, usage = results[name]
        assert code == 0, (name, usage)
        assert usage.startswith(f"usage: tracklstm {name.replace('_', '-')} "), usage[:200]
