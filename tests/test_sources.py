"""The module files each rule declares come from the real imports, as relative paths."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tracklstm import cli, sources

PACKAGE = Path(sources.__file__).parent


def imported_names(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("tracklstm.")}


@pytest.mark.parametrize("module", sorted(set(cli.COMMANDS.values())))
def test_every_direct_import_is_declared(module: str) -> None:
    files = sources.module_files(module)
    names = {str(f.relative_to(PACKAGE.parent).with_suffix("")).replace(os.sep, ".") for f in files}
    names = {n.removesuffix(".__init__") for n in names}
    for file in files:
        for imported in imported_names(file):
            assert imported in names, f"{file} imports {imported}, not among {sorted(names)}"
    assert PACKAGE / "__init__.py" in files


def test_known_dependencies() -> None:
    train = {f.name for f in sources.module_files("tracklstm.train")}
    assert {"model.py", "constants.py", "io.py", "settings.py"} <= train
    assert "evaluate.py" not in train and "simulate.py" not in train
    simulate = {f.name for f in sources.module_files("tracklstm.simulate")}
    assert "model.py" not in simulate


def test_stage_inputs_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    paths = sources.stage_inputs("tracklstm.windows", PACKAGE.parent.parent)
    assert "src/tracklstm/windows.py" in paths
    assert not any(os.path.isabs(p) for p in paths)
    elsewhere = sources.stage_inputs("tracklstm.windows", tmp_path)
    assert all((tmp_path / p).resolve().is_file() for p in elsewhere)
    with pytest.raises(ValueError, match="not a module"):
        sources.module_files("numpy")
