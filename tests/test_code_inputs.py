"""A rule's code inputs: the modules that compute its outputs, from their real imports, as
relative paths; the package's layout that keeps them few (no loops, no import back up)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracklstm import cli
from tracklstm import code_inputs as ci

PACKAGE = ci.PACKAGE_DIR
ROOT = PACKAGE.parents[1]
#: The packages in the order the pipeline runs; a module imports only from its own package, the
#: top-level modules or a package before it (same rank: neither imports the other).
RANK = {"physics": 1, "models": 2, "data": 2, "train": 3, "export": 4, "evaluate": 5}
#: The modules the workflow's rules run.
RULE_MODULES = sorted(set(ci.rule_modules(ROOT / "workflow" / "rules").values()))


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def names(files: tuple[Path, ...]) -> set[str]:
    return {f.relative_to(PACKAGE).as_posix() for f in files}


def rank(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], 0) if len(parts) > 2 else 0


def test_the_rules_run_modules_of_the_package() -> None:
    assert len(RULE_MODULES) >= 9
    for module in RULE_MODULES:
        assert ci.module_files(module), module
    # every stage a user runs by name is one of them, or the command line of one
    for name, module in cli.COMMANDS.items():
        assert module in RULE_MODULES or module.rpartition(".")[0] in RULE_MODULES, name


@pytest.mark.parametrize("module", RULE_MODULES)
def test_every_import_of_a_code_input_is_declared_unless_plumbing(module: str) -> None:
    files = ci.module_files(module)
    declared = {ci.module_name(f) for f in files if f.suffix == ".py"}
    for file in files:
        if file.suffix != ".py":
            continue
        for imported in ci.imported(file):
            target = ci.module_file(imported)
            if target.name == "__init__.py" or imported in ci.PLUMBING:
                continue
            assert imported in declared, f"{file} imports {imported}, not among {sorted(declared)}"


def test_plumbing_imports_only_plumbing() -> None:
    for module in ci.PLUMBING:
        file = ci.module_file(module)
        assert file is not None, module
        others = {m for m in ci.imported(file) if ci.module_file(m).name != "__init__.py"}
        assert others <= ci.PLUMBING, f"{module} imports {sorted(others - ci.PLUMBING)}"


def test_init_files_only_document() -> None:
    for file in PACKAGE.rglob("__init__.py"):
        body = ast.parse(file.read_text()).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        rest = [ast.unparse(node) for node in body[1:]]
        allowed = ["__version__ = '0.1.0'"] if file.parent == PACKAGE else []
        assert [r.split(" = ")[0] for r in rest] == [a.split(" = ")[0] for a in allowed], file


def test_no_import_loops_and_none_back_up_the_pipeline() -> None:
    graph = {ci.module_name(f): ci.imported(f) for f in modules()}
    for module, imported in graph.items():
        if ci.is_short_name(ci.module_file(module)):
            continue  # `python -m tracklstm.windows`: runs the stage, nothing imports it
        for target in imported:
            same_package = target.split(".")[:2] == module.split(".")[:2]
            assert same_package or rank(target) < rank(module) or rank(target) == 0, (
                f"{module} imports {target}: back up the pipeline"
            )
    # Any loop, through imports at top level or inside functions (Tarjan's algorithm).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt == node:
                loops.append([node])
            if nxt not in graph or nxt == node:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not loops, loops


def test_what_each_stage_is_made_of() -> None:
    train = names(ci.module_files("tracklstm.train"))
    assert {"models/build.py", "models/residual.py", "physics/helix_prior.py"} <= train
    assert {"train/__main__.py", "train/cli.py", "train/fit.py", "files.py"} <= train
    # Of the data stages, training reads only the checksums that verify its windows.h5.
    assert {n for n in train if n.startswith(("data/", "export/", "evaluate/"))} == {
        "data/checksums.py"
    }
    assert not {"settings.py", "stage_cli.py", "evaluation_plan.py", "train/__init__.py"} & train
    # the energy-loss term's tail needs the simulator's cut, not its material
    assert "physics/delta_rays.py" in train and "physics/material.py" not in train

    simulate = names(ci.module_files("tracklstm.data.simulate"))
    assert simulate == {
        "data/simulate.py",
        "physics/solenoid.py",
        "physics/material.py",
        "physics/delta_rays.py",
        "constants.py",
        "files.py",
    }
    for module in ("tracklstm.data.to_parquet", "tracklstm.data.windows", "tracklstm.export"):
        assert "data/simulate.py" not in names(ci.module_files(module)), module

    export = names(ci.module_files("tracklstm.export"))
    assert not {n for n in export if n.startswith(("train/", "data/", "evaluate/"))}
    assert not {"physics/solenoid.py", "physics/material.py"} & export

    evaluate = names(ci.module_files("tracklstm.evaluate"))
    assert "data/mlchallenge2_track3.csv" in evaluate  # the real track it scores
    assert not {"data/simulate.py", "physics/material.py", "models/build.py"} & evaluate
    assert not {n for n in evaluate if n.startswith("train/")}


def test_predict_is_made_of_twelve_files_or_fewer() -> None:
    predict = names(ci.module_files("tracklstm.evaluate.predict"))
    assert len(predict) <= 12, sorted(predict)
    assert not {n for n in predict if n.startswith(("train/", "models/", "physics/"))}
    assert "data/simulate.py" not in predict and "export/formats.py" not in predict


def test_stage_inputs_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    paths = ci.stage_inputs("tracklstm.data.windows", ROOT)
    assert "src/tracklstm/data/windows.py" in paths
    assert not any(os.path.isabs(p) for p in paths)
    elsewhere = ci.stage_inputs("tracklstm.data.windows", tmp_path)
    assert all((tmp_path / p).resolve().is_file() for p in elsewhere)
    with pytest.raises(ValueError, match="not a module"):
        ci.module_files("numpy")


def test_docs_reruns_table_is_the_generated_one() -> None:
    """docs/reruns.md holds the table ``python -m tracklstm.code_inputs --table`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "tracklstm.code_inputs", "--table", "workflow/rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = (ROOT / "docs" / "reruns.md").read_text()
    assert done.stdout in doc, "docs/reruns.md: regenerate the table (see its text)"
    assert "| `data/simulate.py` | `simulate`, `simulator_vs_real` |" in done.stdout
    assert "| `settings.py` | none: plumbing" in done.stdout
