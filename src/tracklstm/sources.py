"""The source files a stage's code is made of, derived from its real imports.

Each Snakemake rule declares the files of the module it runs, and of every ``tracklstm`` module
that module imports (directly or not, at top level or inside a function), as inputs: editing any
of them re-runs the rule and everything downstream, and editing anything else does not. The
paths are relative to the working directory, so a finished project that is copied or moved to
another folder (``cp -a``) finds its outputs up to date.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

#: The package's own folder (``src/tracklstm``).
PACKAGE_DIR: Path = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def _module_file(name: str) -> Path | None:
    """``tracklstm.a.b`` -> its file (a module's .py, a package's __init__.py), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if base.is_dir():
        return base / "__init__.py"
    file = base.with_suffix(".py")
    return file if file.is_file() else None


def _module_name(file: Path) -> str:
    rel = file.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(file: Path) -> set[str]:
    """The ``tracklstm`` modules ``file`` imports (absolute or relative, anywhere in it)."""
    name = _module_name(file)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from tracklstm import windows`: the name may be a module itself.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == PACKAGE}


@cache
def module_files(module: str) -> tuple[Path, ...]:
    """Every file of the package that running ``python -m <module>`` may import, sorted.

    A package's ``__main__.py`` and every enclosing ``__init__.py`` are included.
    """
    start = _module_file(module)
    if start is None:
        raise ValueError(f"{module}: not a module of {PACKAGE}")
    todo = [start]
    if start.name == "__init__.py" and (start.parent / "__main__.py").is_file():
        todo.append(start.parent / "__main__.py")
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        # The enclosing packages' __init__.py run first.
        for parent in file.parents:
            if parent == PACKAGE_DIR.parent:
                break
            init = parent / "__init__.py"
            if init.is_file() and init not in seen:
                todo.append(init)
        for name in _imported(file):
            found = _module_file(name)
            if found is not None and found not in seen:
                todo.append(found)
    return tuple(sorted(seen))


def stage_inputs(module: str, workdir: str | os.PathLike[str] | None = None) -> list[str]:
    """``module_files(module)`` relative to ``workdir`` (default: the current directory)."""
    base = os.path.abspath(workdir or os.getcwd())
    return [os.path.relpath(f, base) for f in module_files(module)]
