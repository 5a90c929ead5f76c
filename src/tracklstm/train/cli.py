"""The ``tracklstm train`` command (also ``python -m tracklstm.train``): its options, the
settings it reads (``--settings`` JSON, ``--settings-file`` JSON or YAML) and its exit codes:
0 done, 1 bad input or settings (one log line names the problem), 143 stopped by a signal after
saving the checkpoint (rerun to continue).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from tracklstm import stage_cli
from tracklstm.settings import merge
from tracklstm.train.errors import (
    EXIT_INTERRUPTED,
    TrainingInputError,
    TrainingInterrupted,
)
from tracklstm.train.fit import train
from tracklstm.train.runtime import env_int

log = logging.getLogger("tracklstm.train")  # the name of the log lines, also under `python -m`


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's arguments); its exit code."""
    from tracklstm import train as package  # its docstring's first line describes the command

    parser = stage_cli.parser("tracklstm train", package.__doc__)
    parser.add_argument("--windows", required=True, help="windows.h5 from the windows stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON with "model", "training", "runtime" and "window_length", as the workflow '
        "passes them (keys left out: the config schema's defaults, the reference)",
    )
    parser.add_argument("--settings-file", help="JSON or YAML file with the same content")
    parser.add_argument("--checkpoint", help="checkpoint file (default: OUT/checkpoint.pt)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)

    def body() -> int:
        if env_int("RANK", 0) > 0:  # one log per job under torchrun: the other ranks only warn
            logging.getLogger().setLevel(logging.WARNING)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        settings = _read_settings(args.settings, args.settings_file)
        try:
            train(args.windows, args.out, settings, checkpoint=args.checkpoint)
        except TrainingInterrupted as err:
            if env_int("RANK", 0) == 0:
                log.warning("%s", err)
            return EXIT_INTERRUPTED
        return 0

    return stage_cli.run(body, log, errors=(TrainingInputError,))


def _read_settings(text: str, file: str | None) -> dict:
    """``--settings`` JSON merged with ``--settings-file``; TrainingInputError names the bad one."""
    import yaml

    try:
        settings = json.loads(text)
    except ValueError as err:
        raise TrainingInputError(f"--settings is not valid JSON: {err}") from None
    if file:
        try:
            extra = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise TrainingInputError(f"--settings-file {file}: {err}") from None
        if not isinstance(settings, dict) or not isinstance(extra, dict):
            raise TrainingInputError("--settings and --settings-file must hold mappings")
        settings = merge(settings, extra)
    return settings
