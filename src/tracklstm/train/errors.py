"""How a training run fails: the two exceptions of ``train`` and the command's exit codes."""

from __future__ import annotations

from pathlib import Path

EXIT_BAD_INPUT = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: "stopped, rerun to continue"


class TrainingInputError(ValueError):
    """Settings or data that make no sense; raised before any training starts."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (a signal) after its checkpoint was written."""

    def __init__(self, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__(
            f"stopped in epoch {epoch} after step {step}; the state is saved in {checkpoint}, "
            "run the same command again to continue"
        )
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step
