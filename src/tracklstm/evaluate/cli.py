"""The ``tracklstm evaluate`` command (also ``python -m tracklstm.evaluate``): options, exit codes.

``tracklstm evaluate quality ...`` goes to the data-quality table (``quality.main``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from tracklstm import stage_cli
from tracklstm.evaluate import quality
from tracklstm.evaluate.run import OUTPUT_FILES, evaluate
from tracklstm.files import check_outputs
from tracklstm.physics.helix_field import NOMINAL_FIELD, check_field

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    from tracklstm import evaluate as package  # its docstring describes the command

    parser = stage_cli.parser("tracklstm evaluate", package.__doc__, stage="evaluate")
    parser.epilog = "'tracklstm evaluate quality --help': the data-quality table instead."
    parser.add_argument("--model", required=True, help="exported TorchScript model (model.ts)")
    parser.add_argument("--windows", required=True, help="windows.h5 whose test split is used")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the plots")
    parser.add_argument("--metrics-csv", help="metrics.csv of the training run (loss curves)")
    parser.add_argument("--bins", type=int, help="histogram bins (default 100)")
    parser.add_argument(
        "--momentum-bins", type=int, help="bins of |p| and pt, equal populations (default 8)"
    )
    parser.add_argument(
        "--helix-field",
        help="JSON list of [z_from_cm, qBz_T] regions for the helix baseline "
        f"(default {json.dumps([list(r) for r in NOMINAL_FIELD])})",
    )
    parser.add_argument("--challenge-inputs", help="challenge-format test inputs (CSV)")
    parser.add_argument("--challenge-answers", help="the true x,y,px,py,pz of those tracks")
    parser.add_argument("--challenge-predictions", help="the model's x,y,px,py,pz for them")
    parser.add_argument("--model-name", help="name of the model in titles (default: its folder)")
    parser.add_argument("--data-name", help="name of the data in titles (default: its folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-plots", action="store_true", help="numbers only, no PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 1 when an input cannot be evaluated (logged)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quality"]:
        return quality.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    challenge = [args.challenge_inputs, args.challenge_answers, args.challenge_predictions]
    if any(challenge) and not all(challenge):
        parser.error(
            "--challenge-inputs, --challenge-answers and --challenge-predictions go together"
        )

    def body() -> None:
        inputs = {
            "--model": args.model,
            "--windows": args.windows,
            "--metrics-csv": args.metrics_csv,
            "--challenge-inputs": args.challenge_inputs,
            "--challenge-answers": args.challenge_answers,
            "--challenge-predictions": args.challenge_predictions,
        }
        check_outputs({"--out": [Path(args.out) / name for name in OUTPUT_FILES]}, inputs)
        field = None
        if args.helix_field:
            try:
                field = json.loads(args.helix_field)
                check_field(field)
            except (ValueError, TypeError) as err:
                raise ValueError(f"--helix-field: {err}") from None
        options = {"bins": args.bins, "momentum_bins": args.momentum_bins, "helix_field": field}
        cfg = stage_cli.settings("evaluate", args.settings, {"evaluation": options})
        cfg = cfg["evaluation"]
        field = check_field(cfg["helix_field"])
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        evaluate(
            args.model,
            args.windows,
            args.out,
            metrics_csv=args.metrics_csv,
            bins=cfg["bins"],
            n_momentum_bins=cfg["momentum_bins"],
            helix_field=field,
            challenge_inputs=args.challenge_inputs,
            challenge_answers=args.challenge_answers,
            challenge_predictions=args.challenge_predictions,
            model_name=args.model_name,
            data_name=args.data_name,
            plots=not args.no_plots,
        )

    return stage_cli.run(body, log)
