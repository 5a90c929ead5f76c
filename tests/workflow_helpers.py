"""Running the real Snakemake on the project's workflow from the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"


def env() -> dict[str, str]:
    """The environment for workflow runs: this interpreter's bin first on PATH."""
    e = dict(os.environ)
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    e.pop("SNAKEMAKE_PROFILE", None)
    return e


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run ``snakemake -s <repo>/Snakefile --directory workdir args...``."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env(), timeout=timeout, cwd=workdir
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def tiny_workdir(path: Path, config: Path = TINY_CONFIG) -> Path:
    """A working directory holding the tiny test config as its config.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, path / "config.yaml")
    return path
