"""Project hygiene: lint and format checks, the conda environment, the README's commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return found


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_conda_env_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "workflow/envs/tracklstm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    norm = lambda specs: sorted(re.sub(r"\s+", "", s).lower() for s in specs)  # noqa: E731
    assert norm(pip) == norm(project)


def test_ruff_clean() -> None:
    result = run([tool("ruff"), "check", "src", "tests", "benchmarks"])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([tool("ruff"), "format", "--check", "src", "tests", "benchmarks"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_clean() -> None:
    result = run([tool("snakefmt"), "--check", "Snakefile", "workflow"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.workflow
def test_snakemake_lint_clean(tmp_path: Path) -> None:
    """``snakemake --lint`` of the workflow with the project's config, in a copy of it."""
    from workflow_runs import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path, ROOT / "config.yaml")
    out = snakemake(workdir, "--lint", "--cores", "1").stdout
    assert "Lints for" not in out and "good condition" in out, out


def test_readme_opens_with_two_setup_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    commands = re.findall(r"^(make \w+)$", head, flags=re.M)
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in ci
