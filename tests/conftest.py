"""Shared fixtures: small track sets built in the test, in the training-file format."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
# The helpers that copy the project and run its own Snakefile (tests/slurm/farmtest.py).
sys.path.insert(0, str(ROOT / "tests" / "slurm"))
# Subprocesses (python -m tracklstm..., snakemake) use this checkout's package too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from tracklstm.constants import COLUMNS, N_PLANES, PLANE_Z  # noqa: E402

# Several test processes (pytest-xdist) share the cores: each gets its share of torch's threads
# (more threads than cores make torch's workers wait on each other, many times slower).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def toy_tracks(n: int, seed: int = 0) -> np.ndarray:
    """(n, 25, 6) helices in a uniform 2 T field: a cheap stand-in for real tracks in unit tests."""
    rng = np.random.default_rng(seed)
    z = np.asarray(PLANE_Z)
    pz = rng.uniform(1.0, 2.5, n)
    pt = rng.uniform(0.05, 0.4, n)
    phi0 = rng.uniform(-np.pi, np.pi, n)
    x0 = rng.uniform(-20, 20, n)
    y0 = rng.uniform(-20, 20, n)
    k = -0.3 * 2.0 / pz / 100.0  # dphi/dz per cm
    dz = z[None, :] - z[0]
    phi = phi0[:, None] + k[:, None] * dz
    radius = pt[:, None] / np.abs(k[:, None]) / pz[:, None]  # cm per GeV/c * GeV/c
    sign = np.sign(k)[:, None]
    x = x0[:, None] + sign * radius * (np.sin(phi) - np.sin(phi0[:, None]))
    y = y0[:, None] - sign * radius * (np.cos(phi) - np.cos(phi0[:, None]))
    out = np.empty((n, N_PLANES, 6))
    out[..., 0] = x
    out[..., 1] = y
    out[..., 2] = z[None, :]
    out[..., 3] = pt[:, None] * np.cos(phi)
    out[..., 4] = pt[:, None] * np.sin(phi)
    out[..., 5] = pz[:, None]
    return out


def write_tracks_csv(tracks: np.ndarray, path: Path) -> Path:
    """Write (n, 25, 6) tracks in the training-file format."""
    flat = tracks.reshape(len(tracks), -1)
    with open(path, "w") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        np.savetxt(fh, flat, delimiter=",", fmt="%.6g")
    return path


@pytest.fixture
def tracks_csv(tmp_path: Path) -> Path:
    """A CSV of 200 toy tracks in the training-file format."""
    return write_tracks_csv(toy_tracks(200, seed=1), tmp_path / "tracks.csv")


@pytest.fixture
def windows_h5(tmp_path: Path, tracks_csv: Path) -> Path:
    """windows.h5 built from ``tracks_csv`` with the default settings."""
    from tracklstm.data.to_parquet import convert
    from tracklstm.data.windows import build

    parquet = tmp_path / "tracks.parquet"
    convert(tracks_csv, parquet)
    out = tmp_path / "windows.h5"
    build(parquet, out, seed=3)
    return out


def session_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of the whole test session, the same for every pytest-xdist worker (each has a
    temporary folder of its own below the session's)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


@contextlib.contextmanager
def session_lock(folder: Path) -> Iterator[None]:
    """Holds ``folder/.lock`` (created) while one worker builds what the others share."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (Snakefile, workflow/, src/, profiles/) with the tiny test config,
    the whole pipeline built once per session (by the first worker that needs it; the others
    wait for it) by the real Snakemake and shared by the workflow, export and rerun tests.
    Read-only: a test that changes anything works on ``copy_project`` of it."""
    from workflow_runs import TINY_CONFIG, copy_workflow, snakemake

    shared = session_dir(tmp_path_factory, "tiny_project")
    work = shared / "project"
    with session_lock(shared):
        if not (shared / "built").exists():
            shutil.rmtree(work, ignore_errors=True)
            snakemake(copy_workflow(work, TINY_CONFIG), "--cores", "2")
            (shared / "built").touch()
    return work


def copy_project(src: Path, dst: Path) -> Path:
    """``cp -a src dst``: a finished project moved elsewhere, modification times kept."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session", autouse=True)
def farm_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The Slurm test's pipeline run (tests/slurm/farmrun.py), started in the background when
    the session begins (once, by the first test process, while the others wait: it sizes the
    training on a quiet machine) if that test is selected, so that its waiting overlaps the
    other tests; ``tests/test_slurm.py`` waits for it and checks it."""
    if not any(item.get_closest_marker("slurm") for item in request.session.items):
        return None
    from farmrun import FarmRun

    run = FarmRun(session_dir(tmp_path_factory, "farm_run"))
    with session_lock(run.root):
        if not run.started:
            run.start()
    # The tests yield the CPU to the run's Slurm jobs, so that its training runs at the speed
    # it was sized at (it must outlast its time limit, and should not run much longer).
    os.nice(10)
    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order of the modules for several test processes (``make test`` gives each one module
    at a time): those with the most workflow runs and slow tests first, so that the processes
    end at about the same time instead of one starting a long module last; the module of the
    Slurm run last, so that the run started with the session has ended when its test looks."""
    slurm = {item.module.__name__ for item in items if item.get_closest_marker("slurm")}
    heavy = collections.Counter(
        item.module.__name__
        for item in items
        if item.get_closest_marker("workflow") or item.get_closest_marker("slow")
    )
    items.sort(key=lambda item: (item.module.__name__ in slurm, -heavy[item.module.__name__]))
