"""The one way the tests run the real Snakemake: on a copy of the workflow, never in the project.

* :func:`copy_workflow`: a snapshot of the workflow (Snakefile, workflow/, src/, profiles/ and the
  ``slurm`` profile link) in a temporary folder, with a config of the test's, so that a test can
  edit its code and config, is not disturbed by edits of the checkout while it runs, and never
  reads or writes the project's own ``results/`` or ``.snakemake/``.
* :func:`snakemake`: run the real ``snakemake`` in such a folder.
* :func:`parse_jobs`: the jobs Snakemake lists (dry-run) or starts (real run) in its output.
* :func:`downstream`: the jobs that consume, directly or not, the outputs of some jobs.

The Slurm helpers of the farm tests are in ``tests/slurm/farmtest.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The tiny test config: a few hundred simulated tracks and a small model, seconds per stage.
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".ruff_cache", "build")
_JOB_HEAD = re.compile(r"^(local)?(?:checkpoint|rule) (\w+):$")
_FIELD = re.compile(r"^\s{4}(\w[\w ]*): (.*)$")
_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


def copy_workflow(dst: Path, config: dict[str, Any] | Path) -> Path:
    """Copy the workflow into ``dst`` (created) with ``config`` as its config.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "Snakefile", dst / "Snakefile")
    for folder in ("workflow", "src", "profiles", "cpp"):  # cpp/: what export_plain compiles
        shutil.copytree(ROOT / folder, dst / folder, ignore=_IGNORE, symlinks=True)
    os.symlink("profiles/slurm", dst / "slurm")
    if isinstance(config, Path):
        shutil.copy(config, dst / "config.yaml")
    else:
        (dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dst


def read_config(workdir: Path) -> dict[str, Any]:
    return yaml.safe_load((workdir / "config.yaml").read_text())


def write_config(workdir: Path, config: dict[str, Any]) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a run: this interpreter first on PATH, the copy's own package."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TRACKLSTM_SLURM_", "SNAKEMAKE_"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(workdir / "src")
    env.update(extra)
    return env


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``snakemake args...`` in ``workdir`` (its Snakefile); output in ``.stdout``."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env or run_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-12000:]}"
        )
    return result


@dataclass
class Job:
    """One job as Snakemake prints it."""

    rule: str
    local: bool
    jobid: int | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    wildcards: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    slurm_id: str | None = None

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What identifies the job across runs: its rule and outputs."""
        return self.rule, tuple(sorted(self.outputs))


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(", ") if v.strip())


def _pairs(value: str) -> dict[str, str]:
    out = {}
    for item in _split(value):
        key, _, val = item.partition("=")
        out[key] = val
    return out


def parse_jobs(text: str) -> list[Job]:
    """The job blocks (``rule NAME:`` / ``localrule NAME:`` and their fields) of ``text``.

    A job submitted to Slurm gets the Slurm job id of the submission that follows its block (a
    retried job is listed, and submitted, once per attempt).
    """
    jobs: list[Job] = []
    current: Job | None = None
    for line in text.splitlines():
        head = _JOB_HEAD.match(line)
        if head:
            current = Job(rule=head.group(2), local=bool(head.group(1)))
            jobs.append(current)
            continue
        sent = _SUBMITTED.search(line)
        if sent:
            waiting = [j for j in jobs if j.jobid == int(sent.group(1)) and j.slurm_id is None]
            if waiting:
                waiting[-1].slurm_id = sent.group(2)
        if current is None:
            continue
        item = _FIELD.match(line)
        if not item:
            current = None
            continue
        key, value = item.groups()
        if key == "input":
            current.inputs = _split(value)
        elif key == "output":
            current.outputs = _split(value)
        elif key == "jobid":
            current.jobid = int(value)
        elif key == "wildcards":
            current.wildcards = _pairs(value)
        elif key == "resources":
            current.resources = _pairs(value)
        elif key == "reason":
            current.reason = value
    return jobs


def job_keys(jobs: Iterable[Job]) -> set[tuple[str, tuple[str, ...]]]:
    return {j.key for j in jobs}


def downstream(dag: list[Job], seeds: Iterable[Job]) -> set[tuple[str, tuple[str, ...]]]:
    """Keys of ``seeds`` and of every job of ``dag`` that uses their outputs, directly or not."""
    todo = list(seeds)
    found = {j.key for j in todo}
    while todo:
        made = set(todo.pop().outputs)
        for job in dag:
            if job.key not in found and made & set(job.inputs):
                found.add(job.key)
                todo.append(job)
    return found


def rules_of(keys: Iterable[tuple[str, tuple[str, ...]]]) -> set[str]:
    return {rule for rule, _ in keys}


def output_times(workdir: Path, dag: list[Job]) -> dict[str, int]:
    """Modification times (ns) of every output file of ``dag`` that exists."""
    times = {}
    for job in dag:
        for out in job.outputs:
            path = workdir / out
            if path.exists():
                times[out] = path.stat().st_mtime_ns
    return times
