"""Training throughput: samples per second of one training epoch, three ways, in one run.

(a) this trainer: ``tracklstm.train.trainer.Trainer.train_epoch`` on device-resident tensors
    (randperm batches on the device, running metric sums on the device, stop-request checks); (b)
    the naive loop of the published port: ``DataLoader(TensorDataset(x, y), batch_size=1256,
    shuffle=True)`` over host tensors, each batch copied to the device, ``loss.item()`` per step;
    (c) the limit: the bare zero_grad/forward/backward/clip/step loop on batches made beforehand.

All three train the reference model (132,038 parameters) with the same optimizer, loss and
clipping; the variants run in interleaved rounds (a, b, c, a, b, c, ...) so that a machine whose
load changes treats them alike, and the median over rounds is reported. On a CUDA GPU
``--variants`` adds runs of (a) with the options (TF32, bf16, fp16, CUDA graphs), and the run
projects the time of the full-size 100-epoch training (2,802,254 training windows: 194,601
tracks, 80 % for training, 18 windows each) from (a)'s rate and a measured validation pass.

    PYTHONPATH=src python benchmarks/train_throughput.py                  # CPU, moderate size
    PYTHONPATH=src python benchmarks/train_throughput.py --device cuda --full-size \\
        --variants tf32,bf16,graphs,bf16+graphs

Results: ``benchmarks/results/train_throughput.json`` (one record per device kind).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracklstm.files import write_json
from tracklstm.models.build import build_model, count_parameters
from tracklstm.stage_cli import setup_logging
from tracklstm.train.config import resolve_settings
from tracklstm.train.data import DeviceWindows
from tracklstm.train.runtime import configure_backends, pick_device
from tracklstm.train.trainer import Trainer, make_optimizer

log = logging.getLogger("train_throughput")

FULL_TRAIN = 2_802_254  # 194,601 tracks x 0.8 x 18 windows (length 7, targets up to plane 24)
FULL_VAL = 350_282
RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "tf32": {"tf32": True},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "graphs": {"cuda_graphs": True},
    "bf16+graphs": {"precision": "bf16", "cuda_graphs": True},
    "tf32+graphs": {"tf32": True, "cuda_graphs": True},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settings(device: torch.device, batch_size: int, **options: Any) -> dict[str, Any]:
    """The reference training settings with ``batch_size`` and the runtime ``options``, as one
    mapping."""
    resolved = resolve_settings(
        {"training": {"batch_size": batch_size}, "runtime": {"device": str(device), **options}}
    )
    return {**resolved["training"], **resolved["runtime"]}


class Runner:
    """One way of training an epoch; ``run()`` records its wall and CPU time in seconds."""

    def __init__(self, name: str, epoch: Callable[[int], None], device: torch.device) -> None:
        self.name, self._epoch, self.device = name, epoch, device
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def run(self, epoch: int) -> float:
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self._epoch(epoch)
        sync(self.device)
        seconds = time.perf_counter() - t0
        self.seconds.append(seconds)
        self.cpu_seconds.append(time.process_time() - c0)
        return seconds

    def clear(self) -> None:
        self.seconds.clear()
        self.cpu_seconds.clear()


def make_trainer(
    model0: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any]
) -> Callable[[int], None]:
    device = x.device
    configure_backends(cfg, device)
    model = copy.deepcopy(model0).to(device)
    trainer = Trainer(model, cfg, device, runtime=cfg)
    source = DeviceWindows(x, y)

    def epoch(e: int) -> None:
        configure_backends(cfg, device)  # the options are process-wide: set them per run
        trainer.set_sums()
        trainer.train_epoch(source, e, seed=0)
        trainer.global_sums()  # the trainer's one sync per epoch

    return epoch


def make_naive(
    model0: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any], batch: int
) -> Callable[[int], None]:
    device = x.device
    model = copy.deepcopy(model0).to(device)
    optimizer = make_optimizer(model, cfg, device)
    loss_fn = nn.L1Loss()
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch, shuffle=True)

    def epoch(e: int) -> None:
        configure_backends(cfg, device)
        model.train()
        running = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_value_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.item()

    return epoch


def make_bare(
    model0: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any], batch: int
) -> Callable[[int], None]:
    device = x.device
    model = copy.deepcopy(model0).to(device)
    optimizer = make_optimizer(model, cfg, device)
    loss_fn = nn.L1Loss()
    perm = torch.randperm(len(x), device=device)
    xs, ys = x[perm], y[perm]
    batches = [(xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(x), batch)]
    params = list(model.parameters())

    def epoch(e: int) -> None:
        configure_backends(cfg, device)
        model.train()
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_value_(params, 1.0)
            optimizer.step()

    return epoch


def validation_seconds(model0: nn.Module, n_val: int, device: torch.device, cfg: dict) -> float:
    """Time of one validation pass over ``n_val`` windows, as the trainer runs it."""
    x = torch.rand(n_val, 7, 6, device=device)
    y = torch.rand(n_val, 6, device=device)
    model = copy.deepcopy(model0).to(device)
    trainer = Trainer(model, cfg, device, runtime=cfg)
    source = DeviceWindows(x, y)
    trainer.evaluate(source)  # warm-up
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        trainer.evaluate(source)
        times.append(time.perf_counter() - t0)
    return min(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--windows", type=int, default=0, help="training windows (default: CPU 10,048; GPU 502,400)"
    )
    parser.add_argument("--full-size", action="store_true", help="the real set's 2,802,254 windows")
    parser.add_argument("--rounds", type=int, default=10, help="timed epochs per way (median)")
    parser.add_argument("--batch-size", type=int, default=1256)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument(
        "--variants", default="", help="extra runs of (a), comma-separated: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--skip-naive", action="store_true", help="leave out (b)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    n = FULL_TRAIN if args.full_size else args.windows or (502_400 if cuda else 10_048)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")

    torch.manual_seed(0)
    model0 = build_model({})
    x = torch.rand(n, 7, 6, device=device)
    y = torch.rand(n, 6, device=device)
    base = settings(device, batch_size=args.batch_size)
    runners = [Runner("a_trainer", make_trainer(model0, x, y, base), device)]
    if not args.skip_naive:
        runners.append(
            Runner("b_naive_dataloader", make_naive(model0, x, y, base, args.batch_size), device)
        )
    runners.append(Runner("c_bare_loop", make_bare(model0, x, y, base, args.batch_size), device))
    for v in variants:
        cfg = settings(device, batch_size=args.batch_size, **VARIANTS[v])
        runners.append(Runner(f"a_trainer_{v}", make_trainer(model0, x, y, cfg), device))
    log.info(
        "%s: %d windows, batch %d, %d parameters, %d rounds of %s",
        device_name(device),
        n,
        args.batch_size,
        count_parameters(model0),
        args.rounds,
        ", ".join(r.name for r in runners),
    )
    for r in runners:  # warm-up epoch (allocations, cuDNN plans, graph capture), not timed
        r.run(0)
        r.clear()
    for k in range(1, args.rounds + 1):
        # ABBA order: a slow drift of the machine's load favours no way.
        for r in runners if k % 2 else runners[::-1]:
            s = r.run(k)
            log.info("round %d %-22s %8.2f s %10.0f samples/s", k, r.name, s, n / s)

    rates = {r.name: sorted(n / s for s in r.seconds) for r in runners}
    median = {name: statistics.median(v) for name, v in rates.items()}
    best = {name: max(v) for name, v in rates.items()}
    per_cpu_s = {r.name: n / statistics.median(r.cpu_seconds) for r in runners}
    a, c = runners[0], next(r for r in runners if r.name == "c_bare_loop")
    record: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "windows": n,
        "batch_size": args.batch_size,
        "parameters": count_parameters(model0),
        "rounds": args.rounds,
        "samples_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "samples_per_s_best": {k: round(v, 1) for k, v in best.items()},
        "samples_per_s_all": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "samples_per_cpu_s_median": {k: round(v, 1) for k, v in per_cpu_s.items()},
        # Rounds run a, b, c back to back: the ratio within a round sees the same machine load;
        # its median is the figure to quote on a shared machine.
        "ratio_a_to_c": round(
            statistics.median(sc / sa for sa, sc in zip(a.seconds, c.seconds, strict=True)), 4
        ),
        "ratio_a_to_c_per_round": [
            round(sc / sa, 4) for sa, sc in zip(a.seconds, c.seconds, strict=True)
        ],
        "ratio_a_to_c_best": round(best["a_trainer"] / best["c_bare_loop"], 4),
        "ratio_a_to_c_cpu_time": round(per_cpu_s["a_trainer"] / per_cpu_s["c_bare_loop"], 4),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if "b_naive_dataloader" in median:
        b = next(r for r in runners if r.name == "b_naive_dataloader")
        record["ratio_a_to_b"] = round(
            statistics.median(sb / sa for sa, sb in zip(a.seconds, b.seconds, strict=True)), 3
        )
    val_s = validation_seconds(model0, FULL_VAL if args.full_size else max(1, n // 8), device, base)
    record["validation_seconds"] = round(val_s, 4)
    if cuda:
        full_val = (
            validation_seconds(model0, FULL_VAL, device, base) if not args.full_size else val_s
        )
        record["projected_100_epochs_s"] = {
            name: round(100 * (FULL_TRAIN / rate + full_val), 1) for name, rate in median.items()
        }
    for name, rate in median.items():
        log.info("%-22s median %10.0f  best %10.0f samples/s", name, rate, best[name])
    log.info(
        "(a)/(c): median per round %.3f, best %.3f, CPU time %.3f",
        record["ratio_a_to_c"],
        record["ratio_a_to_c_best"],
        record["ratio_a_to_c_cpu_time"],
    )
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[device.type] = record
    write_json(args.out, results)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
