"""The one-node Slurm of the farm tests (tests/test_slurm.py): start it, ask it about jobs.

* :func:`slurm_up`: make sure the one-node Slurm of ``tests/slurm/slurm-up.sh`` answers.
* :func:`submissions`: the Slurm jobs a run of the workflow submitted.
* :func:`slurm_job`: Slurm's own record of one job.

Running the workflow itself (on a copy of the project): ``tests/workflow_runs.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SLURM_DIR = Path(__file__).resolve().parent
STATE_DIR = Path(os.environ.get("SLURM_TEST_STATE_DIR", "/tmp/tracklstm-slurm"))

_SUBMITTED_LOG = re.compile(
    r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S*/rule_(\w+)/\S*)\)"
)


@dataclass(frozen=True)
class Submission:
    """One sbatch of a run (a retried job is submitted again)."""

    rule: str
    slurm_id: str
    log: Path


def submissions(text: str) -> list[Submission]:
    """Every Slurm job a run submitted, in order."""
    return [Submission(rule, sid, Path(log)) for sid, log, rule in _SUBMITTED_LOG.findall(text)]


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
