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


#: Runs ``--help`` of each named command in one fresh process (each stage imports torch: one
#: process for all of them instead of one each), printing {name: [exit code, stdout]} as JSON.
#: ``tracklstm``: through the console command's ``main``; ``python -m``: through runpy, which is
#: what ``python -m tracklstm.<name>`` uses.
HELP_SCRIPT = """
import contextlib, io, json, runpy, sys
from tracklstm import cli
how, names = sys.argv[1], sys.argv[2:]
out = {}
for name in names:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            if how == "tracklstm":
                code = cli.main([name, "--help"])
            else:
                sys.argv = [name, "--help"]
                runpy.run_module(f"tracklstm.{name}", run_name="__main__", alter_sys=True)
                code = None
        except SystemExit as exit:
            code = exit.code
    out[name] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def helps(how: str, names: list[str]) -> dict[str, tuple[int | None, str]]:
    done = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, how, *names], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def command_helps() -> dict[str, tuple[int | None, str]]:
    return helps("tracklstm", sorted(cli.COMMANDS))


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_stage_has_help(name: str, command_helps: dict) -> None:
    code, stdout = command_helps[name]
    assert code == 0, stdout
    assert "usage:" in stdout
    # the program name is what a user types: `tracklstm <command>`
    assert stdout.startswith(f"usage: tracklstm {name}"), stdout[:200]


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
    """``python -m tracklstm.<name> --help`` for every stage: each prints its own usage and
    exits 0."""
    results = helps("python -m", list(STAGE_NAMES))
    for name in STAGE_NAMES:
        code, usage = results[name]
        assert code == 0, (name, usage)
        assert usage.startswith(f"usage: tracklstm {name.replace('_', '-')} "), usage[:200]
