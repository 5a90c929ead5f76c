"""The one runner behind every stage's command line (``python -m tracklstm.<stage>``).

Each stage module keeps its own argparse parser and a body that does the work; this module owns
what they share: the ``--settings`` option (the stage's config sections as JSON, the way every
Snakemake rule hands them over), how settings given by hand are completed from the schema's
defaults and checked, logging set-up, and the error tail: an expected error becomes one log line
naming the file or key and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from tracklstm.settings import ConfigError, stage_defaults

#: Exit code of a stage given bad input or settings.
EXIT_BAD_INPUT = 1
#: The errors every stage reports as one line: bad settings, bad or missing files.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def parser(prog: str, doc: str | None, stage: str | None = None) -> argparse.ArgumentParser:
    """A stage's parser, described by the first line of its module docstring.

    With ``stage``, it takes ``--settings JSON``: the stage's config sections (see
    ``tracklstm.settings.STAGE_SECTIONS``); options given one by one win over it.
    """
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0])
    if stage is not None:
        p.add_argument(
            "--settings",
            type=_json_mapping,
            default={},
            help="the stage's config sections as JSON, as the workflow passes them; "
            "keys left out take the defaults of the config schema",
        )
    return p


def _json_mapping(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON mapping, got {text!r}")
    return value


def settings(
    stage: str, given: dict[str, Any], options: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The stage's settings: the schema's defaults, then ``given`` (``--settings``), then the
    options given one by one (``{section: {key: value or None}}``; None: not given). Checked;
    a ConfigError names the key."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in given.items()}
    for section, values in (options or {}).items():
        picked = {k: v for k, v in values.items() if v is not None}
        if picked:
            merged[section] = {**(merged.get(section) or {}), **picked}
    return stage_defaults(stage, merged)


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps; Snakemake redirects stderr to the rule's log file."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def show_progress() -> bool:
    """Progress bars only on a terminal; log lines otherwise (Snakemake logs, Slurm)."""
    return sys.stderr.isatty()


def run(
    body: Callable[[], Any],
    log: logging.Logger,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Set up logging and run ``body``; an expected error (``EXPECTED_ERRORS``, bad paths and
    values among them, and the stage's own ``errors``) is one log line and exit code 1."""
    setup_logging()
    try:
        code = body()
    except ConfigError as err:
        log.error("%s", str(err).replace("invalid configuration:\n  ", ""))
        return EXIT_BAD_INPUT
    except (*EXPECTED_ERRORS, *errors) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    return int(code or 0)
