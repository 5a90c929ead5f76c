"""The ``tracklstm`` command: every stage as a subcommand (``tracklstm train --help``)."""

from __future__ import annotations

import importlib
import sys

import tracklstm

#: subcommand -> module; each module has ``main(argv) -> int``.
COMMANDS: dict[str, str] = {
    "simulate": "tracklstm.simulate",
    "download": "tracklstm.download",
    "to-parquet": "tracklstm.to_parquet",
    "windows": "tracklstm.windows",
    "challenge": "tracklstm.challenge",
    "train": "tracklstm.train",
    "export": "tracklstm.export",
    "aoti": "tracklstm.aoti",
    "predict": "tracklstm.predict",
    "evaluate": "tracklstm.evaluate",
    "compare": "tracklstm.compare",
}


def usage() -> str:
    lines = ["usage: tracklstm [--version] <command> [options]", "", "commands:"]
    for name, module in COMMANDS.items():
        doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<12} {doc[0] if doc else ''}")
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
