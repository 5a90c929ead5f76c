"""What the benchmarks share: the facts of the machine the numbers come from, a run folder of
the reference model to export, and the arguments and results file of the benchmarks that judge
an exported model on a windows file.

The benchmarks run as scripts (``python benchmarks/<name>.py``), so this folder is on their
import path: ``from benchlib import machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracklstm.files import write_json
from tracklstm.models.build import build_model

ROOT = Path(__file__).resolve().parents[1]


def add_model_and_windows(parser: argparse.ArgumentParser) -> None:
    """``--model`` (default: the demo's one-state model) and ``--windows`` (the demo's)."""
    parser.add_argument("--model", type=Path,
                        default=ROOT / "results/demo/residual_markov/model.ts")  # fmt: skip
    parser.add_argument("--windows", type=Path, default=ROOT / "results/demo/windows.h5")


def record_per_dataset(
    out: Path, windows: Path, result: dict[str, Any], started: float | None = None
) -> None:
    """Put ``result`` into the JSON file ``out`` under the name of ``windows``'s folder (the
    dataset: ``demo``, ``full``), keeping the other datasets' entries; with the machine, the
    date and, from ``started`` (a ``time.perf_counter()``), the seconds it took."""
    if started is not None:
        result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = machine()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record = json.loads(out.read_text()) if out.is_file() else {}
    record[windows.resolve().parent.name] = result
    write_json(out, record)


def machine() -> dict[str, Any]:
    """The machine the numbers come from."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for mod in ("numpy", "pandas", "pyarrow", "h5py"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def bench_rows(stdout: str) -> list[dict[str, str]]:
    """The rows of ``cpp/build/tracklstm_predict --bench``'s tab-separated table, by column."""
    header, *rows = [line.split("\t") for line in stdout.strip().splitlines()]
    return [dict(zip(header, row, strict=True)) for row in rows]


def machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have used so far (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def make_reference_run(out: Path, tracks: np.ndarray) -> Path:
    """A run folder with the reference architecture and random weights."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    settings = {"model": {"cell": "lstm", "hidden_sizes": [128, 64, 32], "dropout": 0.0}}
    core = build_model(settings["model"])
    for name in ("weights_best.pt", "weights_last.pt"):
        torch.save(core.state_dict(), out / name)
    states = tracks.reshape(-1, 6)
    summary = {
        "settings": settings,
        "norm_min": states.min(axis=0).tolist(),
        "norm_max": states.max(axis=0).tolist(),
        "window_length": 7,
        "data_fingerprint": "benchmark",
    }
    (out / "training.json").write_text(json.dumps(summary))
    return out
