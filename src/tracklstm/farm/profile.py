"""The Slurm profile's site settings: ``TRACKLSTM_SLURM_*`` variables, checked, as values.

Snakemake evaluates a resource's value as a Python expression. A variable pasted into the
profile as it is would be run as code (``ACCOUNT='__import__("os").system(...)'`` runs the
command during a dry run), and turned into something else (``0x10`` becomes 16, ``None`` drops
the account). So the profile (``profiles/slurm/config.yaml``) reads every variable through this
module:

- ``name``: an account, partition, QOS or GPU type: the characters Slurm allows in such a name,
  passed on as a quoted string literal; ``constraint``: a node-feature expression (features
  joined by ``&``, ``|``, ``,``, with ``[ ]``, ``( )`` and ``*count``);
- ``count``: a whole number (GPUs, CPUs) within its bounds;
- ``train_runtime``: minutes, or arithmetic in ``attempt`` (``+ - * / // ( )``, numbers,
  ``min``, ``max``), the only expression Snakemake is given;
- ``status_command``: ``sacct`` or ``squeue``, or chosen from Slurm's configuration.

Anything else stops Snakemake with one line naming the variable, its value and what it
accepts (``SettingError``; YTE reports a SystemExit's message alone).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess

#: Letters, digits and the punctuation Slurm allows in account, partition, QOS and GPU names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
#: Node features joined as ``sbatch --constraint`` accepts them.
CONSTRAINT = re.compile(r"[A-Za-z0-9_.\-&|,\[\]()*]+")
#: The operations a runtime expression may use.
_RUNTIME_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.USub, ast.UAdd,
)  # fmt: skip
_RUNTIME_NAMES = {"attempt", "min", "max"}
STATUS_COMMANDS = ("sacct", "squeue")
#: The rules the profile gives the GPU settings (``TRACKLSTM_SLURM_GPU_*``).
GPU_RULES: tuple[str, ...] = ("train", "export_aoti_cuda")

_IN_USE = False


def mark_in_use() -> None:
    """Called by the profile when Snakemake loads it: the run submits to Slurm (``in_use``)."""
    global _IN_USE
    _IN_USE = True


def in_use() -> bool:
    """Whether this snakemake loaded the Slurm profile (and is not itself inside a job)."""
    return _IN_USE and "SLURM_JOB_ID" not in os.environ


class SettingError(SystemExit):
    """A site setting that cannot be used; its message is the one line Snakemake prints."""


def _value(var: str) -> str | None:
    value = os.environ.get(var)
    return None if value is None or not value.strip() else value.strip()


def name(var: str, what: str = "name") -> str | None:
    """``var`` as a quoted string literal (None when unset or empty)."""
    value = _value(var)
    if value is None:
        return None
    if not NAME.fullmatch(value):
        raise SettingError(
            f"{var}={value!r}: not a Slurm {what} (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)"
        )
    return repr(value)


def constraint(var: str, default: str | None = None) -> str | None:
    """``var`` as a quoted node-feature expression (``default`` when unset or empty)."""
    value = _value(var)
    if value is None:
        return None if default is None else repr(default)
    if not CONSTRAINT.fullmatch(value):
        raise SettingError(
            f"{var}={value!r}: not a Slurm constraint (features of letters, digits, '_', '.', "
            "'-', joined by '&', '|' or ',', with '[ ]', '( )' and '*count')"
        )
    return repr(value)


def count(var: str, default: int, minimum: int = 0) -> int:
    """``var`` as a whole number, at least ``minimum`` (``default`` when unset)."""
    raw = os.environ.get(var)
    if raw is None:
        return default
    value = raw.strip()
    if not value.isdigit() or int(value) < minimum:
        raise SettingError(f"{var}={raw!r}: not a whole number of {minimum} or more")
    return int(value)


def train_runtime(var: str = "TRACKLSTM_SLURM_TRAIN_RUNTIME", default: int = 480) -> int | str:
    """Minutes, or an arithmetic expression of the attempt number such as ``240 * attempt``."""
    raw = os.environ.get(var)
    if raw is None:
        return default
    value = raw.strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    problem = f"{var}={raw!r}: not minutes or arithmetic in `attempt` (e.g. '240 * attempt')"
    try:
        tree = ast.parse(value, mode="eval")
    except SyntaxError:
        raise SettingError(problem) from None
    for node in ast.walk(tree):
        allowed = isinstance(node, _RUNTIME_NODES)
        if isinstance(node, ast.Name):
            allowed = node.id in _RUNTIME_NAMES
        elif isinstance(node, ast.Constant):
            allowed = type(node.value) in (int, float)
        elif isinstance(node, ast.Call):
            allowed = isinstance(node.func, ast.Name) and node.func.id in ("min", "max")
            allowed = allowed and not node.keywords
        if not allowed:
            raise SettingError(problem)
    for attempt in (1, 2, 3):
        env = {"__builtins__": {}, "min": min, "max": max, "attempt": attempt}
        try:
            minutes = eval(compile(tree, var, "eval"), env)  # only what the walk above allows
        except ArithmeticError:
            raise SettingError(problem) from None
        if not minutes > 0:
            raise SettingError(f"{var}={raw!r}: {minutes} minutes at attempt {attempt}")
    return value


@functools.cache
def accounting_database() -> bool:
    """Whether Slurm keeps an accounting database (``scontrol show config``; asked once)."""
    try:
        conf = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip() not in ("", "accounting_storage/none")
    return False


def status_command(var: str = "TRACKLSTM_SLURM_STATUS") -> str:
    """``sacct`` needs Slurm's accounting database; without one, ``squeue``."""
    chosen = _value(var)
    if chosen is not None:
        if chosen not in STATUS_COMMANDS:
            raise SettingError(f"{var}={chosen!r}: not one of {', '.join(STATUS_COMMANDS)}")
        return chosen
    return "sacct" if accounting_database() else "squeue"
