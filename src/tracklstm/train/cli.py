"""The ``tracklstm train`` command (also ``python -m tracklstm.train``): its options, the
settings it reads (``--settings`` JSON, ``--settings-file`` JSON or YAML) and its exit codes:
0 done, 1 bad input or settings (one log line names the problem), 143 stopped by a signal after
saving the checkpoint (rerun to continue).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from tracklstm.io import setup_logging
from tracklstm.settings import merge
from tracklstm.train.errors import (
    EXIT_BAD_INPUT,
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

    description = (package.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="tracklstm train", description=description)
    parser.add_argument("--windows", required=True, help="windows.h5 from the windows stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON with "model", "training" and "window_length" (defaults: the reference)',
    )
    parser.add_argument("--settings-file", help="JSON or YAML file with the same content")
    parser.add_argument("--checkpoint", help="checkpoint file (default: OUT/checkpoint.pt)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)
    setup_logging()
    if env_int("RANK", 0) > 0:  # one log per job under torchrun: the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import yaml

    try:
        settings = json.loads(args.settings)
    except ValueError as err:
        log.error("--settings is not valid JSON: %s", err)
        return EXIT_BAD_INPUT
    if args.settings_file:
        try:
            extra = yaml.safe_load(Path(args.settings_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            log.error("--settings-file %s: %s", args.settings_file, err)
            return EXIT_BAD_INPUT
        if not isinstance(settings, dict) or not isinstance(extra, dict):
            log.error("--settings and --settings-file must hold mappings")
            return EXIT_BAD_INPUT
        settings = merge(settings, extra)
    try:
        train(args.windows, args.out, settings, checkpoint=args.checkpoint)
    except TrainingInputError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as err:
        if env_int("RANK", 0) == 0:
            log.warning("%s", err)
        return EXIT_INTERRUPTED
    return 0
