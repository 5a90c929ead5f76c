"""Benchmark of the inference engines: TorchScript, AOTInductor, onnxruntime, beside the helix.

Usage::

    PYTHONPATH=src python benchmarks/bench_engines.py                 # 1 and 2 threads, 7 rounds
    PYTHONPATH=src python benchmarks/bench_engines.py --threads 2 --rounds 11
    PYTHONPATH=src python benchmarks/bench_engines.py --no-compile-compare   # one compile only

The reference-size model (LSTM 128 -> 64 -> 32, random weights: the speed does not depend on the
values) is exported by ``tracklstm.export.formats.export`` (model.ts, model.onnx) and compiled by
``tracklstm.export.aoti`` (model.aoti.pt2), then timed on the same simulated windows at batch 1
(per-track latency) and batch 1,024 (rows per second), N CPU threads (torch, onnxruntime and the C++
program limited to N; the numpy helix is single-threaded):

- from Python: eager PyTorch, TorchScript (``torch.jit.load``), the AOTInductor packages
  (``tracklstm.export.loading.load_package``; ``aotinductor``: the default, oneDNN's fused RNN
  layers; ``aotinductor_decomposed``: ``rnn_kernels="decomposed"``, matrix products and inductor's
  cell kernels), onnxruntime (CPU provider) and the numpy helix
  (``tracklstm.physics.helix.helix``, nominal field) on the windows' last states;
- from C++: ``cpp/build/tracklstm_predict --bench`` with each file (TorchScript and the two
  packages), when built (cpp/README.md).

Engines are interleaved round by round (the order rotates each round); each round times a block
of calls per engine (at least 3 calls and ``--block-seconds``). Timings on a shared machine swing
by 1.5x and more, so the figure quoted is the MEDIAN over rounds of the per-round ratio
``torchscript_time / engine_time`` (> 1: faster than TorchScript); the median and best times are
recorded too, with the share of the CPUs that other processes used meanwhile (``others_cpu``).

The compile time of each export is recorded: ``tracklstm.export.export``'s own times, and the
AOTInductor compile in a fresh process with an empty inductor cache (cold): with weight
freezing, the decomposed variant, and (unless ``--no-compile-compare``) without freezing and
once more with the warm cache.

Results: ``benchmarks/results/engines.json``, one record per run, with the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracklstm.constants import PLANE_Z
from tracklstm.export.formats import export
from tracklstm.export.loading import ONNX_INPUT, ONNX_OUTPUT, load_package, load_torchscript
from tracklstm.export.module import load_physical_model
from tracklstm.files import write_json
from tracklstm.physics.helix import nominal_helix
from tracklstm.stage_cli import setup_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import bench_rows, machine, machine_busy_seconds, make_reference_run

log = logging.getLogger("bench_engines")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "engines.json"
DEFAULT_CPP = ROOT / "cpp" / "build" / "tracklstm_predict"
BATCHES = (1, 1024)
REFERENCE = "torchscript"
AOTI_ENGINES = ("aotinductor", "aotinductor_decomposed")
PY_ENGINES = ("eager", "torchscript", *AOTI_ENGINES, "onnxruntime", "helix")
CPP_ENGINES = ("torchscript", *AOTI_ENGINES)


class OthersMeter:
    """The share of the CPUs that other processes used between start and stop."""

    def __enter__(self) -> OthersMeter:
        self.busy0, self.wall0 = machine_busy_seconds(), time.perf_counter()
        self.own0 = _own_cpu()
        self.share: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, wall1, own1 = machine_busy_seconds(), time.perf_counter(), _own_cpu()
        if self.busy0 is not None and busy1 is not None:
            others = max(0.0, busy1 - self.busy0 - (own1 - self.own0))
            self.share = round(others / ((wall1 - self.wall0) * (os.cpu_count() or 1)), 2)


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def windows_of(tracks: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows of 7 states at random offsets, and the z of each one's next plane."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(tracks), n)
    starts = rng.integers(0, tracks.shape[1] - 7, n)
    idx = starts[:, None] + np.arange(7)[None, :]
    win = tracks[rows[:, None], idx]
    return win.astype(np.float32), np.asarray(PLANE_Z)[starts + 7]


def compile_cold(run: Path, out: Path, threads: int, cache: Path, *extra: str) -> dict[str, Any]:
    """``python -m tracklstm.export.aoti`` in a fresh process with the inductor cache ``cache``.

    Cold when ``cache`` is empty (inductor's compiled kernels and headers are not reused).
    """
    state = "warm" if any(cache.iterdir()) else "cold"
    report = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "tracklstm.export.aoti", "--run", str(run), "--out", str(out)]
    cmd += ["--report", str(report), "--threads", str(threads)]
    cmd += extra
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    with OthersMeter() as meter:
        t0 = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    record = json.loads(report.read_text())
    record.update(process_seconds=round(wall, 1), others_cpu=meter.share, cache=state)
    record.pop("package_metadata", None)
    log.info(
        "AOTInductor compile (freezing %s, RNN kernels %s, cache %s): %.1f s, %.1f s process",
        record["freezing"], record["rnn_kernels"], state, record["seconds"]["compile"], wall,
    )  # fmt: skip
    return record


def time_block(fn: Callable[[], Any], block_seconds: float, min_calls: int = 3) -> float:
    """Seconds per call of ``fn`` over at least ``min_calls`` calls and ``block_seconds``."""
    calls = 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while calls < min_calls or elapsed < block_seconds:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
    return elapsed / calls


def python_engines(files: dict[str, Path], threads: int) -> dict[str, Callable[..., Any]]:
    """Each Python engine as ``f(x_torch, x_numpy, last_states, z_next)``."""
    import onnxruntime as ort

    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(files["onnx"]), opts, providers=["CPUExecutionProvider"])
    script, _ = load_torchscript(files["torchscript"])
    package, _ = load_package(files["aotinductor"])
    decomposed, _ = load_package(files["aotinductor_decomposed"])
    eager, _ = load_physical_model(files["run"])
    propagate = nominal_helix()

    def no_grad(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
        def run(x: torch.Tensor, *_: Any) -> Any:
            with torch.inference_mode():
                return model(x)

        return run

    return {
        "eager": no_grad(eager),
        "torchscript": no_grad(script),
        "aotinductor": no_grad(package),
        "aotinductor_decomposed": no_grad(decomposed),
        "onnxruntime": lambda _x, xn, *_: session.run([ONNX_OUTPUT], {ONNX_INPUT: xn})[0],
        "helix": lambda _x, _xn, last, z: propagate(last, z),
    }


def summarize(per_round: dict[str, list[float]], batch: int) -> dict[str, Any]:
    """Median/best seconds per call and the median per-round speed ratio to TorchScript."""
    out: dict[str, Any] = {}
    ref = per_round.get(REFERENCE)
    for name, times in per_round.items():
        med = statistics.median(times)
        rec: dict[str, Any] = {
            "median_ms": round(med * 1e3, 4),
            "best_ms": round(min(times) * 1e3, 4),
            "rows_per_s_median": round(batch / med, 1),
            "rows_per_s_best": round(batch / min(times), 1),
            "rounds_ms": [round(t * 1e3, 4) for t in times],
        }
        if ref is not None:
            ratios = [r / t for r, t in zip(ref, times, strict=True)]
            rec["speed_vs_torchscript_median"] = round(statistics.median(ratios), 3)
            rec["speed_vs_torchscript_rounds"] = [round(r, 3) for r in ratios]
        out[name] = rec
    return out


def bench_python(
    files: dict[str, Path], windows: np.ndarray, z_next: np.ndarray, threads: int, args: Any
) -> dict[str, Any]:
    engines = python_engines(files, threads)
    names = [n for n in PY_ENGINES if n in engines]
    result: dict[str, Any] = {}
    for batch in BATCHES:
        xn = np.ascontiguousarray(windows[:batch])
        x = torch.from_numpy(xn)
        last = xn[:, -1].astype(np.float64)
        z = z_next[:batch]
        for name in names:  # warm-up: the TorchScript executor profiles its first calls
            for _ in range(20 if batch == 1 else 3):
                engines[name](x, xn, last, z)
        per_round: dict[str, list[float]] = {n: [] for n in names}
        with OthersMeter() as meter:
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    call = functools.partial(engines[name], x, xn, last, z)
                    per_round[name].append(time_block(call, args.block_seconds))
        result[f"batch_{batch}"] = {**summarize(per_round, batch), "others_cpu": meter.share}
        for name in names:
            log_timing("Python", threads, batch, name, result[f"batch_{batch}"][name])
    return result


def log_timing(side: str, threads: int, batch: int, engine: str, rec: dict[str, Any]) -> None:
    """One engine's summarized timing at one batch size, as a log line."""
    log.info(
        "%-6s %d threads, batch %4d, %-22s %9.3f ms  %10.0f rows/s  x%.2f vs TorchScript",
        side, threads, batch, engine, rec["median_ms"], rec["rows_per_s_median"],
        rec["speed_vs_torchscript_median"],
    )  # fmt: skip


def bench_cpp(exe: Path, files: dict[str, Path], threads: int, args: Any) -> dict[str, Any] | str:
    if not exe.is_file():
        return f"not built ({exe} missing; see cpp/README.md)"
    per_round: dict[int, dict[str, list[float]]] = {
        b: {e: [] for e in CPP_ENGINES} for b in BATCHES
    }
    with OthersMeter() as meter:
        for r in range(args.rounds):
            k = r % len(CPP_ENGINES)
            order = CPP_ENGINES[k:] + CPP_ENGINES[:k]
            for engine in order:
                cmd = [
                    str(exe),
                    "--model",
                    str(files[engine]),
                    "--bench",
                    "--threads",
                    str(threads),
                ]
                cmd += ["--bench-batches", ",".join(map(str, BATCHES))]
                cmd += ["--bench-seconds", str(args.block_seconds)]
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if result.returncode != 0:
                    return f"failed: {' '.join(cmd)}: {result.stderr.strip()[-500:]}"
                for row in bench_rows(result.stdout):
                    assert row["engine"] == engine.split("_")[0], row
                    per_round[int(row["batch"])][engine].append(float(row["ms_per_batch"]) / 1e3)
    out: dict[str, Any] = {f"batch_{b}": summarize(per_round[b], b) for b in BATCHES}
    out["others_cpu"] = meter.share
    for b in BATCHES:
        for engine in CPP_ENGINES:
            log_timing("C++", threads, b, engine, out[f"batch_{b}"][engine])
    return out


def targets(record: dict[str, Any], threads: int) -> dict[str, Any]:
    """AOTInductor at least as fast as TorchScript at batch 1 and 1,024, Python and C++."""
    out: dict[str, Any] = {}
    section = record["threads"].get(str(threads), {})
    for engine in AOTI_ENGINES:
        for side in ("python", "cpp"):
            data = section.get(side)
            for batch in BATCHES:
                key = f"{engine}_{side}_batch_{batch}"
                if not isinstance(data, dict):
                    out[key] = {"met": None, "why": str(data)}
                    continue
                ratio = data[f"batch_{batch}"][engine]["speed_vs_torchscript_median"]
                out[key] = {"speed_vs_torchscript_median": ratio, "met": ratio >= 1.0}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tracklstm.data.simulate import simulate_tracks

    threads_list = [int(t) for t in str(args.threads).split(",")]
    tracks = simulate_tracks(2000, seed=1, shard=0)
    windows, z_next = windows_of(tracks, max(BATCHES))
    record: dict[str, Any] = {
        "benchmark": "engines",
        "model": "LSTM 128 -> 64 -> 32 (reference size), random weights",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {**machine(), "load_before": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"torch": torch.__version__},
        "rounds": args.rounds,
        "block_seconds": args.block_seconds,
        "batches": list(BATCHES),
        "note": "speed_vs_torchscript_*: torchscript time / engine time per round (> 1: faster), "
        "median over rounds; machine shared with other jobs (see others_cpu)",
        "threads": {},
    }
    try:
        import onnxruntime

        record["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp_name:
        tmp = Path(tmp_name)
        files = {"run": make_reference_run(tmp / "run", tracks)}
        files["torchscript"], files["onnx"] = tmp / "model.ts", tmp / "model.onnx"
        rep = export(files["run"], torchscript=files["torchscript"], onnx=files["onnx"])
        compile_rec: dict[str, Any] = {"tracklstm_export_seconds": rep["seconds"]}
        threads = max(threads_list)
        cache = tmp / "inductor_cache"
        cache.mkdir()
        files["aotinductor"] = tmp / "model.aoti.pt2"
        compile_rec["aoti_freezing_cold"] = compile_cold(
            files["run"], files["aotinductor"], threads, cache
        )
        if args.compile_compare:
            warm = tmp / "warm" / "model.aoti.pt2"
            compile_rec["aoti_freezing_warm_cache"] = compile_cold(
                files["run"], warm, threads, cache
            )
            cache2 = tmp / "inductor_cache_2"
            cache2.mkdir()
            compile_rec["aoti_no_freezing_cold"] = compile_cold(
                files["run"], tmp / "nofreeze" / "model.aoti.pt2", threads, cache2, "--no-freezing"
            )
        cache3 = tmp / "inductor_cache_3"
        cache3.mkdir()
        files["aotinductor_decomposed"] = tmp / "decomposed" / "model.aoti.pt2"
        compile_rec["aoti_decomposed_freezing_cold"] = compile_cold(
            files["run"], files["aotinductor_decomposed"], threads, cache3, "--rnn-kernels",
            "decomposed",
        )  # fmt: skip
        record["compile"] = compile_rec
        record["package_bytes"] = files["aotinductor"].stat().st_size
        record["torchscript_bytes"] = files["torchscript"].stat().st_size
        for n in threads_list:
            section: dict[str, Any] = {}
            section["python"] = bench_python(files, windows, z_next, n, args)
            section["cpp"] = bench_cpp(Path(args.cpp), files, n, args)
            record["threads"][str(n)] = section
    record["machine"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    record["targets"] = {str(n): targets(record, n) for n in threads_list}
    for n in threads_list:
        for key, value in record["targets"][str(n)].items():
            log.info("target (%d threads) %s: %s", n, key, value)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (odd: median)")
    parser.add_argument(
        "--block-seconds", type=float, default=0.3, help="minimum timed seconds per engine/round"
    )
    parser.add_argument(
        "--no-compile-compare",
        dest="compile_compare",
        action="store_false",
        help="only the cold compile with freezing (skip the warm-cache and no-freezing ones)",
    )
    parser.add_argument("--cpp", default=str(DEFAULT_CPP), help="the C++ program, if built")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="JSON file to write")
    args = parser.parse_args(argv)
    setup_logging()
    record = run(args)
    write_json(args.results, record)
    log.info("wrote %s", args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
