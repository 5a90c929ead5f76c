"""Helpers of the farm tests (tests/test_slurm.py, tests/test_reruns.py).

* :func:`copy_workflow`: a snapshot of the workflow (Snakefile, workflow/, src/, profiles/ and the
  ``slurm`` profile link) in a temporary folder, so that a test can edit its code and config and
  is not disturbed by edits of the checkout while it runs.
* :func:`snakemake`: run the real ``snakemake`` in such a folder.
* :func:`parse_jobs`: the jobs Snakemake lists (dry-run) or starts (real run) in its output.
* :func:`downstream`: the jobs that consume, directly or not, the outputs of some jobs.
* :func:`slurm_up`: make sure the one-node Slurm of ``tests/slurm/slurm-up.sh`` answers.
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

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_TEST_STATE_DIR", "/tmp/tracklstm-slurm"))

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".ruff_cache")
_JOB_HEAD = re.compile(r"^(local)?(?:checkpoint|rule) (\w+):$")
_FIELD = re.compile(r"^\s{4}(\w[\w ]*): (.*)$")
_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
_SUBMITTED_LOG = re.compile(
    r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S*/rule_(\w+)/\S*)\)"
)


def copy_workflow(dst: Path, config: dict[str, Any] | Path) -> Path:
    """Copy the workflow into ``dst`` (created) with ``config`` as its config.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "Snakefile", dst / "Snakefile")
    for folder in ("workflow", "src", "profiles"):
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


@dataclass(frozen=True)
class Submission:
    """One sbatch of a run (a retried job is submitted again)."""

    rule: str
    slurm_id: str
    log: Path


def submissions(text: str) -> list[Submission]:
    """Every Slurm job a run submitted, in order."""
    return [Submission(rule, sid, Path(log)) for sid, log, rule in _SUBMITTED_LOG.findall(text)]


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


# --------------------------------------------------------------------------------------------
# The local Slurm


def slurm_env() -> dict[str, str]:
    """SLURM_CONF as slurm-up.sh wrote it (when its slurm.conf is not /etc/slurm/slurm.conf)."""
    env_sh = STATE_DIR / "env.sh"
    if env_sh.is_file():
        match = re.search(r"SLURM_CONF=(\S+)", env_sh.read_text())
        if match:
            return {"SLURM_CONF": match.group(1)}
    return {}


def slurm_answers() -> bool:
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return False
    try:
        ping = subprocess.run(
            ["scontrol", "ping"],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, **slurm_env()},
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "is UP" in ping.stdout


def slurm_up() -> tuple[bool, str]:
    """Start the local Slurm unless it answers: (started here, summary); raise RuntimeError."""
    if slurm_answers():
        return False, "Slurm already up"
    if os.geteuid() != 0:
        raise RuntimeError(
            "no Slurm answers and starting one needs root: run `sudo bash tests/slurm/slurm-up.sh`"
        )
    result = subprocess.run(
        ["bash", str(SLURM_DIR / "slurm-up.sh")], capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if "ERROR" in ln]
        reason = lines[-1] if lines else (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise RuntimeError(reason)
    return True, result.stdout.strip()


def slurm_down() -> None:
    subprocess.run(["bash", str(SLURM_DIR / "slurm-down.sh")], capture_output=True, timeout=300)


def slurm_job(job_id: str) -> dict[str, str]:
    """Slurm's own record of a job (``scontrol show job``), as KEY -> value."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **slurm_env()},
        check=True,
    ).stdout
    record = {}
    for token in re.findall(r"(\w+)=(\S*)", out):
        record.setdefault(token[0], token[1])
    return record
