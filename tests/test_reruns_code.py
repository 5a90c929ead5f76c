"""Code edits re-run only the rules the edited file can change (the rule for what counts:
src/tracklstm/code_inputs.py), each previewed with ``snakemake -n`` on a finished copy of the
tiny project, with a second dataset read from a file (``source: path``) built beside it.

The helpers (previews, expected jobs from the DAG) are those of ``tests/test_reruns.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import copy_project, toy_tracks, write_tracks_csv
from test_reruns import (
    Built,
    assert_nothing_to_do,
    build,
    preview_and_undo,
    rewrite,
    using,
)
from workflow_runs import downstream, read_config, rules_of, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

PLUMBING = ("settings.py", "stage_cli.py", "evaluation_plan.py", "cli.py", "code_inputs.py")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, tiny_project: Path) -> Built:
    """A copy of the finished tiny project with a second dataset, a file on disk (`real`,
    ``source: path``), on which the small model is trained and evaluated too: built."""
    root = tmp_path_factory.mktemp("mixed")
    workdir = copy_project(tiny_project, root / "project")
    write_tracks_csv(toy_tracks(150, seed=3), root / "tracks.csv")
    cfg = read_config(workdir)
    cfg["datasets"]["real"] = {"source": "path", "path": str(root / "tracks.csv")}
    cfg["build"]["datasets"] = ["tiny", "real"]
    write_config(workdir, cfg)
    return build(workdir)


def edit_code(workdir: Path, *files: str) -> Callable[[], None]:
    """Append a comment line to each of ``files`` (under src/tracklstm/); returns the undo."""
    undos = []
    for name in files:
        path = workdir / "src" / "tracklstm" / name
        undos.append(rewrite(path, path.read_bytes() + b"\n# edited\n"))
    return lambda: [undo() for undo in undos]


def test_plumbing_and_package_docs_edits_plan_nothing(mixed: Built) -> None:
    """The settings resolver, the stage command line, the evaluation plan, the command and
    the packages' __init__.py files: no job of either dataset runs again."""
    inits = [p.relative_to(mixed.workdir / "src" / "tracklstm").as_posix() for p in
             (mixed.workdir / "src" / "tracklstm").rglob("__init__.py")]  # fmt: skip
    undo = edit_code(mixed.workdir, *PLUMBING, *inits)
    assert_nothing_to_do(mixed.workdir)
    undo()


def test_simulator_edit_plans_only_what_follows_the_simulated_data(mixed: Built) -> None:
    """The simulator and its material re-run the simulated dataset's jobs, and of the dataset
    read from a file only the check of the simulator against its tracks (not its predict, not
    its evaluate)."""
    for module in ("data/simulate.py", "physics/material.py"):
        path = mixed.workdir / "src" / "tracklstm" / module
        expected = downstream(mixed.dag, using(mixed.workdir, mixed.dag, path))
        assert {"simulate", "to_parquet", "train", "predict", "evaluate"} <= rules_of(expected)
        real = [out for _, outs in expected for out in outs if "/real/" in out]
        assert real and all("/real/simulator/" in out for out in real), (module, real)
        preview_and_undo(mixed.workdir, lambda module=module: edit_code(mixed.workdir, module),
                         expected)  # fmt: skip


def test_export_edit_plans_export_and_what_follows_not_train(mixed: Built) -> None:
    path = mixed.workdir / "src" / "tracklstm" / "export" / "formats.py"
    expected = downstream(mixed.dag, using(mixed.workdir, mixed.dag, path))
    assert {"export", "predict", "evaluate", "models_table"} <= rules_of(expected)
    assert not rules_of(expected) & {"train", "windows", "simulate", "to_parquet"}
    assert {j.wildcards["dataset"] for j in mixed.dag if j.rule == "export"} == {"tiny", "real"}
    preview_and_undo(mixed.workdir, lambda: edit_code(mixed.workdir, "export/formats.py"), expected)
