"""The ``tracklstm`` command: every stage as a subcommand (``tracklstm train --help``)."""

from __future__ import annotations

import importlib
import sys

import tracklstm

#: subcommand -> module; each module has ``main(argv) -> int``.
COMMANDS: dict[str, str] = {
    "simulate": "tracklstm.data.simulate",
    "download": "tracklstm.data.download",
    "to-parquet": "tracklstm.data.to_parquet",
    "windows": "tracklstm.data.windows",
    "challenge": "tracklstm.data.challenge",
    "train": "tracklstm.train.cli",
    "export": "tracklstm.export.formats",
    "aoti": "tracklstm.export.aoti",
    "plain": "tracklstm.export.plain",
    "predict": "tracklstm.evaluate.predict",
    "evaluate": "tracklstm.evaluate.cli",
    "compare": "tracklstm.evaluate.compare",
    "track-fit": "tracklstm.evaluate.track_fit",
    "calibration-plot": "tracklstm.evaluate.calibration_plot",
}


def _summary(module: str) -> str:
    """The first line of what a command's module (a package's ``cli``: the package) says."""
    described = module.removesuffix(".cli")
    doc = (importlib.import_module(described).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def usage() -> str:
    lines = ["usage: tracklstm [--version] <command> [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    for name, module in COMMANDS.items():
        lines.append(f"  {name:<{width}} {_summary(module)}")
    lines.append("")
    lines.append("'tracklstm <command> --help' shows the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to the stage module's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage() + "\n")
        return 0
    if argv[0] in ("-V", "--version"):
        sys.stdout.write(f"tracklstm {tracklstm.__version__}\n")
        return 0
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        sys.stderr.write(f"tracklstm: unknown command {argv[0]!r}\n\n{usage()}\n")
        return 2
    module = importlib.import_module(COMMANDS[name])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
