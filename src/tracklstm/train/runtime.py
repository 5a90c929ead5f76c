"""Where and how a run executes: the device, stop requests (signals), the processes of a
data-parallel job (torchrun), process-wide CUDA math settings and the random number states.

None of this changes what a run computes, except the seeds: ``epoch_seed`` fixes each epoch's
shuffle, and the RNG states are saved in the checkpoint so that a resumed run is the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tracklstm.train.errors import TrainingInputError

log = logging.getLogger("tracklstm.train")  # one name for the package, also under `python -m`


#: Slurm's variables that say a GPU was granted to this job, and their values meaning none.
GPU_GRANT_VARIABLES: dict[str, tuple[str, ...]] = {
    "SLURM_JOB_GPUS": ("",),
    "SLURM_STEP_GPUS": ("",),
    "SLURM_GPUS_ON_NODE": ("", "0"),
}
#: How to get a torch that can use the GPU, for the error messages.
CUDA_TORCH_HINT = (
    "install a CUDA build of torch in the environment the jobs run, e.g. "
    "`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128` "
    "(pick the CUDA version the farm's driver supports; see the README, section 'The farm')"
)


def granted_gpus() -> str | None:
    """``NAME=value`` of the first Slurm variable saying this job was granted GPUs, or None."""
    for name, none in GPU_GRANT_VARIABLES.items():
        value = os.environ.get(name, "").strip()
        if value not in none:
            return f"{name}={value}"
    return None


def cuda_unusable_reason() -> str:
    """Why torch cannot use CUDA here, in words."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    return f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no usable GPU"


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU.

    A job that was granted a GPU (Slurm's variables, CUDA_VISIBLE_DEVICES) never falls back to
    the CPU quietly: with ``auto`` as with ``cuda``, a torch that cannot use it is an error that
    says how to install one that can.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        grant = granted_gpus()
        if grant:
            raise TrainingInputError(
                f"runtime.device is auto and this job was granted a GPU ({grant}), but "
                f"{cuda_unusable_reason()}: {CUDA_TORCH_HINT}; or set runtime.device: cpu "
                "(TRACKLSTM_SLURM_GPUS=0 on the farm) to train on CPUs"
            )
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingInputError(
            f"runtime.device is {name!r} but no CUDA GPU is available: "
            f"{cuda_unusable_reason()}; {CUDA_TORCH_HINT}"
        )
    return device


def configure_backends(runtime: dict[str, Any], device: torch.device) -> None:
    """Process-wide CUDA math settings of a run: TF32 only when ``runtime["tf32"]`` asks."""
    if device.type != "cuda":
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Off unless asked: cuDNN would otherwise run the fp32 LSTM in TF32 on Ampere and later.
        torch.backends.cuda.matmul.allow_tf32 = bool(runtime["tf32"])
        torch.backends.cudnn.allow_tf32 = bool(runtime["tf32"])


# --------------------------------------------------------------------------------------------
# Stop requests (signals)

_STOP: dict[str, Any] = {"signum": 0, "countdown": None}


def request_stop(signum: int = signal.SIGTERM, after_steps: int = 0) -> None:
    """Ask ``train`` to stop: it finishes the step, saves and raises ``TrainingInterrupted``.

    This is what SIGTERM and SIGINT do. ``after_steps`` > 0 lets that many more steps run first
    (a request made before ``train`` starts counts its steps). The request ends with ``train``.
    """
    if after_steps > 0:
        _STOP["countdown"] = int(after_steps)
    else:
        _STOP["signum"] = int(signum)


def clear_stop() -> None:
    """Forget the stop request (``train`` does this when it ends)."""
    _STOP.update(signum=0, countdown=None)


def stop_requested(tick: bool = False) -> bool:
    """This process's stop request; ``tick``: one more step has run (counts ``after_steps``)."""
    if tick and _STOP["countdown"] is not None:
        _STOP["countdown"] -= 1
        if _STOP["countdown"] <= 0:
            _STOP.update(signum=int(signal.SIGTERM), countdown=None)
    return _STOP["signum"] != 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT request a stop; a second one acts as usual (kills, or KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("%s: finishing the current step, then saving the checkpoint", name)
        request_stop(signum)
        for s in signals:  # a second signal is not caught
            signal.signal(s, previous[s])

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])


# --------------------------------------------------------------------------------------------
# Several processes (torchrun)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a data-parallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's ``RANK``, ``WORLD_SIZE``, ...)."""
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TrainingInputError(
            f"the environment variable {name}={value!r} is not an integer"
        ) from None


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """The device of this process; under torchrun also joins the process group."""
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(), pick_device(device_name)
    import torch.distributed as tdist

    rank, local = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    kind = pick_device(device_name).type
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise TrainingInputError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device(kind)
    tdist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local), device


def close_distributed(dist: Dist) -> None:
    """Leave the process group that ``init_distributed`` joined (nothing for one process)."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    """Sum (or ``max``) ``tensor`` over the ranks, in place; itself for one process."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------------------------
# Random number states


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's shuffle: a resumed epoch draws the same permutation again."""
    digest = hashlib.sha256(f"tracklstm-shuffle:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's torch RNG states (CPU, and the CUDA device's)."""
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(device: torch.device, dist: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (all ranks must call this)."""
    mine = rng_state(device)
    if dist.world == 1:
        return [mine]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world
    tdist.all_gather_object(out, mine)
    return [{k: v.cpu() if v is not None else None for k, v in s.items()} for s in out]
