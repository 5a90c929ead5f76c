"""The `tracklstm` console command dispatches to every stage."""

from __future__ import annotations

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
