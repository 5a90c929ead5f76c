"""Re-runs redo only what changed: each change previewed with ``snakemake -n``, then run for real.

Copies of the workflow (code and config; edits stay in the copy), each built once:

* ``full``: the whole pipeline on the tiny simulated dataset. A training setting is changed and
  run for real (that run is killed in the middle of training and recovered with
  ``--rerun-incomplete``). Every other change is previewed on the whole pipeline, then undone,
  after which nothing is left to do (Snakemake compares the checksums of inputs newer than the
  outputs, so restored bytes count as unchanged).
* ``data``: the data stages (raw CSV, Parquet, quality table, windows, challenge files) of a
  small simulated set: the other changes are run for real there.
* ``sources``: the data stages of a local file (``source: path``) and of a download from a local
  HTTP server (``source: url``): the same bytes again, and other bytes.

The jobs expected to run are derived from the DAG Snakemake reports (``-n -F``): the jobs that
use what changed and every job downstream of them, nothing else. A real run must run exactly
those (their outputs rewritten, no other output touched) and leave nothing to do.
"""

from __future__ import annotations

import copy
import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import copy_project, toy_tracks, write_tracks_csv

sys.path.insert(0, str(Path(__file__).with_name("slurm")))
from workflow_runs import (
    ROOT,
    Job,
    copy_workflow,
    downstream,
    job_keys,
    output_times,
    parse_jobs,
    read_config,
    rules_of,
    run_env,
    snakemake,
    write_config,
)

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

TINY = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
DATA_STAGES = {"simulate", "download", "use_local", "to_parquet", "quality_table", "windows"}
Keys = set[tuple[str, tuple[str, ...]]]


# --------------------------------------------------------------------------------------------
# Running and reading Snakemake


def full_dag(workdir: Path, *targets: str) -> list[Job]:
    """Every job of the DAG (as if nothing existed), with inputs and outputs."""
    return parse_jobs(snakemake(workdir, "-n", "-F", "--cores", "1", *targets).stdout)


def dry_run(workdir: Path, *targets: str, extra: tuple[str, ...] = ()) -> list[Job]:
    """The jobs a dry-run lists."""
    out = snakemake(workdir, "-n", "--cores", "1", *extra, *targets).stdout
    jobs = parse_jobs(out)
    assert jobs or "Nothing to be done" in out, out[-3000:]
    return jobs


def planned(workdir: Path, *targets: str, extra: tuple[str, ...] = ()) -> Keys:
    return job_keys(dry_run(workdir, *targets, extra=extra))


def assert_nothing_to_do(workdir: Path, *targets: str) -> None:
    out = snakemake(workdir, "-n", "--cores", "1", *targets).stdout
    assert "Nothing to be done" in out, out[-3000:]


def summary_table(workdir: Path) -> dict[str, tuple[str, str]]:
    """``snakemake --summary``: output file -> (status, plan)."""
    out = snakemake(workdir, "--summary", "--cores", "1").stdout
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") >= 5]
    return {r[0]: (r[4], r[5]) for r in rows[1:]}


def check_run(
    workdir: Path, dag: list[Job], expected: Keys, *targets: str, extra: tuple[str, ...] = ()
) -> str:
    """Run for real: exactly ``expected`` runs (its outputs rewritten, no other); then nothing."""
    before = output_times(workdir, dag)
    result = snakemake(workdir, "--cores", "2", *extra, *targets)
    assert job_keys(parse_jobs(result.stdout)) == expected, result.stdout[-4000:]
    after = output_times(workdir, dag)
    rewritten = {out for out, t in after.items() if before.get(out) != t}
    assert rewritten == {out for _, outs in expected for out in outs}
    assert_nothing_to_do(workdir, *targets)
    return result.stdout


def preview_and_undo(
    workdir: Path, change: Callable[[], Callable[[], None]], expected: Keys
) -> None:
    """``-n`` after ``change()`` lists exactly ``expected``; after its undo nothing is left."""
    undo = change()
    assert planned(workdir) == expected
    undo()
    assert_nothing_to_do(workdir)


def edit_config(workdir: Path, edit: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    """Apply ``edit`` to the config; returns the undo."""
    text = (workdir / "config.yaml").read_text()
    cfg = read_config(workdir)
    edit(cfg)
    write_config(workdir, cfg)
    return lambda: (workdir / "config.yaml").write_text(text)


def rewrite(path: Path, data: bytes) -> Callable[[], None]:
    """Write ``data`` to ``path``, with a modification time clearly after the current one.

    Returns the undo: the former bytes written back (again with a later modification time).
    """
    before = path.read_bytes()
    old = path.stat().st_mtime_ns
    path.write_bytes(data)
    if path.stat().st_mtime_ns <= old + 10**9:
        os.utime(path, ns=(old + 2 * 10**9, old + 2 * 10**9))

    def undo() -> None:
        rewrite(path, before)

    return undo


def using(workdir: Path, dag: list[Job], path: Path) -> list[Job]:
    """The jobs of ``dag`` with the file ``path`` as an input."""
    names = {str(path)}
    if path.is_relative_to(workdir):
        names.add(str(path.relative_to(workdir)))
    return [j for j in dag if names & set(j.inputs)]


# --------------------------------------------------------------------------------------------
# The two workflow copies


@dataclass
class Built:
    """A built copy of the workflow: its folder, the targets built and their whole DAG."""

    workdir: Path
    targets: tuple[str, ...]
    dag: list[Job]


def build(workdir: Path, *targets: str) -> Built:
    snakemake(workdir, "--cores", "2", *targets)
    return Built(workdir, targets, full_dag(workdir, *targets))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, tiny_project: Path) -> Built:
    """The whole pipeline on the tiny simulated dataset, built: a copy of the shared one."""
    workdir = copy_project(tiny_project, tmp_path_factory.mktemp("full") / "project")
    assert_nothing_to_do(workdir)
    return Built(workdir, (), full_dag(workdir))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def data_targets(*datasets: str) -> list[str]:
    return [
        f"results/{ds}/{name}"
        for ds in datasets
        for name in (
            "challenge/test_inputs.csv",
            "challenge/test_answers.csv",
            "quality/summary.html",
        )
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The data stages of a small simulated set (`sim`), built."""
    cfg = copy.deepcopy(TINY)
    cfg["build"]["datasets"] = ["sim"]
    cfg["datasets"] = {
        "sim": {
            "source": "simulate",
            "simulate": {"tracks_per_shard": 100, "shards": 2, "seed": 11},
        }
    }
    return build(copy_workflow(tmp_path_factory.mktemp("data"), cfg), *data_targets("sim"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, http_dir: tuple[Path, str]) -> Built:
    """The data stages of a local file (`file`, source: path) and a download (`web`), built."""
    root = tmp_path_factory.mktemp("sources")
    write_tracks_csv(toy_tracks(150, seed=3), root / "tracks.csv")
    served, url = http_dir
    write_tracks_csv(toy_tracks(150, seed=4), served / "tracks.csv")
    cfg = copy.deepcopy(TINY)
    cfg["build"]["datasets"] = ["file"]
    cfg["datasets"] = {
        "file": {"source": "path", "path": str(root / "tracks.csv")},
        "web": {"source": "url", "url": f"{url}/tracks.csv"},
    }
    return build(copy_workflow(root / "wf", cfg), *data_targets("file", "web"))


# --------------------------------------------------------------------------------------------
# 1. A training setting


def test_training_setting_reruns_train_and_what_follows(full: Built) -> None:
    workdir, dag = full.workdir, full.dag
    expected = downstream(dag, [j for j in dag if j.rule == "train"])
    assert {"train", "export", "evaluate", "all"} <= rules_of(expected)
    assert not rules_of(expected) & (DATA_STAGES | {"challenge"})

    # More epochs: long enough to stop the run in the middle of training.
    edit_config(workdir, lambda c: c["datasets"]["tiny"]["training"].update(epochs=6))
    jobs = dry_run(workdir)
    assert job_keys(jobs) == expected
    # Why: the dry-run's reasons, and the summary's status and plan of each output file.
    reasons = {j.rule: j.reason for j in jobs}
    assert reasons["train"].startswith("Params have changed since last execution")
    assert reasons["export"].startswith("Input files updated by another job")
    summary = summary_table(workdir)
    assert summary["results/tiny/small/training.json"][:2] == ("params changed", "update pending")
    assert summary["results/tiny/small/model.ts"][1] == "update pending"
    assert summary["results/tiny/windows.h5"][:2] == ("ok", "no update")

    # The run dies (SIGKILL of snakemake and its jobs) once the first epoch is saved.
    run_dir = workdir / "results" / "tiny" / "small"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=workdir,
        env=run_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        # metrics.partial.csv is rewritten just after the checkpoint: wait for both.
        while not all((run_dir / f).exists() for f in ("checkpoint.pt", "metrics.partial.csv")):
            assert proc.poll() is None, "the run ended before training saved a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Nothing that looks finished: no final file exists (the epochs so far are in
    # metrics.partial.csv), so Snakemake plans the training again, and only what follows it.
    for name in ("weights_best.pt", "weights_last.pt", "training.json", "metrics.csv"):
        assert not (run_dir / name).exists()
    assert (run_dir / "metrics.partial.csv").exists()
    snakemake(workdir, "--unlock", "--cores", "1")  # the killed run's lock
    assert planned(workdir) == expected
    assert planned(workdir, extra=("--rerun-incomplete",)) == expected

    check_run(workdir, dag, expected, extra=("--rerun-incomplete",))
    log = (workdir / "results" / "tiny" / "logs" / "train" / "small.log").read_text()
    assert "resuming from" in log
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 6
    assert not (run_dir / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------
# 2. A windowing setting


def test_windowing_setting_reruns_windows_and_what_follows(full: Built, data: Built) -> None:
    expected = downstream(full.dag, [j for j in full.dag if j.rule == "windows"])
    assert {"windows", "challenge", "train", "export", "evaluate"} <= rules_of(expected)
    assert not rules_of(expected) & {"simulate", "to_parquet", "quality_table"}
    tiny_windows = {"stride": 2}
    preview_and_undo(
        full.workdir,
        lambda: edit_config(
            full.workdir, lambda c: c["datasets"]["tiny"].update(windows=tiny_windows)
        ),
        expected,
    )

    expected = downstream(data.dag, [j for j in data.dag if j.rule == "windows"])
    assert rules_of(expected) == {"windows", "challenge"}
    edit_config(data.workdir, lambda c: c["datasets"]["sim"].update(windows={"stride": 2}))
    assert planned(data.workdir, *data.targets) == expected
    check_run(data.workdir, data.dag, expected, *data.targets)


# --------------------------------------------------------------------------------------------
# 3. The raw file's content


def test_raw_file_content_change_reruns_what_follows_but_same_bytes_nothing(full: Built) -> None:
    workdir, dag = full.workdir, full.dag
    raw = workdir / "results" / "tiny" / "raw" / "shard000.csv"
    original = raw.read_bytes()
    rewrite(raw, original)
    # Newer than what was made from it: only its checksum tells that it did not change.
    parquet = workdir / "results" / "tiny" / "tracks.parquet" / "shard000.parquet"
    assert raw.stat().st_mtime_ns > parquet.stat().st_mtime_ns
    assert_nothing_to_do(workdir)

    expected = downstream(dag, using(workdir, dag, raw))
    assert {"to_parquet", "windows", "train", "export", "evaluate"} <= rules_of(expected)
    assert "simulate" not in rules_of(expected)
    assert not any("shard001" in out for _, outs in expected for out in outs)
    one_track_less = b"".join(original.splitlines(keepends=True)[:-1])
    preview_and_undo(workdir, lambda: rewrite(raw, one_track_less), expected)


def test_local_or_downloaded_file_again_same_bytes_nothing_other_bytes_what_follows(
    sources: Built,
) -> None:
    workdir = sources.workdir
    file_targets = data_targets("file")
    # A local file (source: path) written again with the same bytes: nothing runs.
    source = Path(read_config(workdir)["datasets"]["file"]["path"])
    rewrite(source, source.read_bytes())
    copied = workdir / "results" / "file" / "raw" / "tracks.csv"
    assert source.stat().st_mtime_ns > copied.stat().st_mtime_ns
    assert_nothing_to_do(workdir, *file_targets)
    assert "Nothing to be done" in snakemake(workdir, "--cores", "2", *file_targets).stdout

    # A file downloaded again (forced) with the same bytes: only the download itself runs.
    raw_web = "results/web/raw/tracks.csv"
    fetched = (workdir / raw_web).stat().st_mtime_ns
    again = snakemake(workdir, raw_web, "--cores", "1", "--forcerun", "download")
    assert rules_of(job_keys(parse_jobs(again.stdout))) == {"download"}
    assert (workdir / raw_web).stat().st_mtime_ns != fetched
    assert_nothing_to_do(workdir, *data_targets("web"))

    # Other bytes in the local file: everything after it runs (and nothing of `web`).
    expected = downstream(sources.dag, using(workdir, sources.dag, source))
    assert rules_of(expected) == {
        "use_local",
        "to_parquet",
        "quality_table",
        "windows",
        "challenge",
    }
    assert not any("/web/" in out for _, outs in expected for out in outs)
    write_tracks_csv(toy_tracks(120, seed=5), source)
    assert planned(workdir, *sources.targets) == expected
    check_run(workdir, sources.dag, expected, *sources.targets)


# --------------------------------------------------------------------------------------------
# 4. A module of the package


def test_module_edit_reruns_the_rules_using_it_and_what_follows(full: Built, data: Built) -> None:
    module = Path("src") / "tracklstm" / "data" / "windows.py"
    users = using(full.workdir, full.dag, full.workdir / module)
    assert {j.rule for j in users} >= {"windows", "challenge"}
    expected = downstream(full.dag, users)
    assert {"windows", "challenge", "train", "export", "evaluate"} <= rules_of(expected)
    assert not rules_of(expected) & {"simulate", "to_parquet"}
    code = (full.workdir / module).read_bytes()
    preview_and_undo(
        full.workdir, lambda: rewrite(full.workdir / module, code + b"\n# edited\n"), expected
    )

    expected = downstream(data.dag, using(data.workdir, data.dag, data.workdir / module))
    assert rules_of(expected) >= {"windows", "challenge"}
    assert not rules_of(expected) & {"simulate", "to_parquet"}
    with open(data.workdir / module, "a") as fh:
        fh.write("\n# edited\n")
    assert planned(data.workdir, *data.targets) == expected
    check_run(data.workdir, data.dag, expected, *data.targets)


# --------------------------------------------------------------------------------------------
# 5. One more shard of simulated data


def _new_jobs(workdir: Path, dag: list[Job]) -> list[Job]:
    return [j for j in dag if j.outputs and not any((workdir / o).exists() for o in j.outputs)]


def _shard(job: Job) -> str:
    return job.wildcards.get("shard") or job.wildcards["part"]


def test_one_more_shard_simulates_and_converts_only_that_shard(full: Built, data: Built) -> None:
    undo = edit_config(full.workdir, lambda c: c["datasets"]["tiny"]["simulate"].update(shards=3))
    dag = full_dag(full.workdir)
    new = _new_jobs(full.workdir, dag)
    assert sorted((j.rule, _shard(j)) for j in new) == [
        ("simulate", "002"),
        ("to_parquet", "shard002"),
    ]
    expected = downstream(dag, new)
    assert {"quality_table", "windows", "train", "export", "evaluate"} <= rules_of(expected)
    assert planned(full.workdir) == expected
    undo()
    assert_nothing_to_do(full.workdir)

    workdir = data.workdir
    edit_config(workdir, lambda c: c["datasets"]["sim"]["simulate"].update(shards=3))
    dag = full_dag(workdir, *data.targets)
    new = _new_jobs(workdir, dag)
    assert sorted((j.rule, _shard(j)) for j in new) == [
        ("simulate", "002"),
        ("to_parquet", "shard002"),
    ]
    expected = downstream(dag, new)
    assert rules_of(expected) == {"simulate", "to_parquet", "quality_table", "windows", "challenge"}
    assert planned(workdir, *data.targets) == expected
    out = check_run(workdir, dag, expected, *data.targets)
    ran = parse_jobs(out)
    assert [j.wildcards["shard"] for j in ran if j.rule == "simulate"] == ["002"]
    assert [j.wildcards["part"] for j in ran if j.rule == "to_parquet"] == ["shard002"]
