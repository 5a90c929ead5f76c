"""The Slurm profile: what it asks Slurm for (dry-run), and a real run through a local Slurm.

The real run needs the one-node Slurm of ``tests/slurm/slurm-up.sh``: it is used when it answers,
started when it does not (as root; stopped again afterwards), and the test is skipped with the
script's reason when it cannot be started. That node has no GPU, 2 CPUs and no accounting
database, so the run sets TRACKLSTM_SLURM_GPUS=0 and TRACKLSTM_SLURM_TRAIN_CPUS=1; job states come
from squeue (the profile notices the missing database).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tracklstm.constants import PLANE_Z

sys.path.insert(0, str(Path(__file__).with_name("slurm")))
from farmrun import FAST, FarmRun
from farmtest import slurm_env, slurm_job, slurm_up, submissions
from workflow_runs import (
    ROOT,
    Job,
    copy_workflow,
    parse_jobs,
    run_env,
    snakemake,
)

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
#: Rules that run as Slurm jobs in the tiny pipeline, and the light ones run by snakemake itself.
CLUSTER_RULES = {"simulate", "to_parquet", "windows", "challenge", "train", "export", "evaluate"}
LOCAL_RULES = {"all", "quality_table", "models_table"}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a user has it (with the `slurm` link), with the tiny config."""
    return copy_workflow(tmp_path_factory.mktemp("project"), copy.deepcopy(TINY))


def dry_run(workdir: Path, profile: str, **env: str) -> dict[str, Job]:
    """``snakemake --profile PROFILE -n`` in ``workdir``: the jobs by rule (one of each). The
    requests are checked here, not against the local Slurm (no preflight, unless ``env`` asks)."""
    env = {"TRACKLSTM_SLURM_PREFLIGHT": "0", **env}
    out = snakemake(workdir, "--profile", profile, "-n", env=run_env(workdir, **env)).stdout
    assert f"Using profiles {profile} " in out, out[:2000]
    return {job.rule: job for job in parse_jobs(out)}


# --------------------------------------------------------------------------------------------
# What the profile asks for (no Slurm needed)


def test_project_root_has_the_profile_under_its_plain_name() -> None:
    # `snakemake --profile slurm` looks for ./slurm first: the link to profiles/slurm.
    assert (ROOT / "slurm").resolve() == (ROOT / "profiles" / "slurm").resolve()
    assert (ROOT / "slurm" / "config.yaml").is_file()


def test_profile_resources_by_default(workflow_copy: Path) -> None:
    jobs = dry_run(workflow_copy, "slurm")
    assert set(jobs) >= CLUSTER_RULES | LOCAL_RULES

    train = jobs["train"].resources
    assert train["gpu"] == "1"  # one GPU
    assert train["cpus_per_task"] == "8"
    assert train["runtime"] == "480"
    assert train["mem_mb"] == "16000"
    assert not {"gpu_model", "slurm_partition", "slurm_account"} & set(train)
    for rule in CLUSTER_RULES - {"train"}:
        res = jobs[rule].resources
        assert "gpu" not in res, rule
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0, rule
        assert int(res["cpus_per_task"]) >= 1, rule

    # The same profile by its path.
    by_path = dry_run(workflow_copy, "profiles/slurm")
    assert {r: j.resources for r, j in by_path.items()} == {r: j.resources for r, j in jobs.items()}


def test_profile_site_settings_from_the_environment(workflow_copy: Path) -> None:
    jobs = dry_run(
        workflow_copy,
        "slurm",
        TRACKLSTM_SLURM_ACCOUNT="proj42",
        TRACKLSTM_SLURM_PARTITION="short",
        TRACKLSTM_SLURM_GPU_PARTITION="gpu",
        TRACKLSTM_SLURM_GPU_MODEL="a100",
        TRACKLSTM_SLURM_TRAIN_CPUS="16",
        TRACKLSTM_SLURM_TRAIN_RUNTIME="240 * attempt",
    )
    train = jobs["train"].resources
    assert (train["gpu"], train["gpu_model"], train["slurm_partition"]) == ("1", "a100", "gpu")
    assert (train["cpus_per_task"], train["runtime"]) == ("16", "240")  # first attempt
    assert train["slurm_account"] == "proj42"
    for rule in CLUSTER_RULES - {"train"}:
        res = jobs[rule].resources
        assert (res["slurm_partition"], res["slurm_account"]) == ("short", "proj42"), rule
        assert "gpu_model" not in res

    sited = dry_run(
        workflow_copy,
        "slurm",
        TRACKLSTM_SLURM_QOS="normal",
        TRACKLSTM_SLURM_GPU_QOS="gpu_long",
        TRACKLSTM_SLURM_CONSTRAINT="cpu",
        TRACKLSTM_SLURM_GPU_CONSTRAINT="gpu",
    )
    assert (sited["train"].resources["qos"], sited["train"].resources["constraint"]) == (
        "gpu_long",
        "gpu",
    )
    for rule in CLUSTER_RULES - {"train"}:
        res = sited[rule].resources
        assert (res["qos"], res["constraint"]) == ("normal", "cpu"), rule
    assert not {"qos", "constraint"} & set(jobs["windows"].resources)
    # A constraint for the CPU jobs only: the GPU job gets none (sbatch -C '').
    cpu_constrained = dry_run(workflow_copy, "slurm", TRACKLSTM_SLURM_CONSTRAINT="cpu")
    assert cpu_constrained["train"].resources["constraint"] == ""
    assert cpu_constrained["windows"].resources["constraint"] == "cpu"

    cpu_only = dry_run(workflow_copy, "slurm", TRACKLSTM_SLURM_GPUS="0")
    assert cpu_only["train"].resources["gpu"] == "0"  # no --gpus for sbatch


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("TRACKLSTM_SLURM_ACCOUNT", '__import__("os").system("touch {marker}")', "account"),
        ("TRACKLSTM_SLURM_PARTITION", "short;rm -rf", "partition"),
        ("TRACKLSTM_SLURM_QOS", "'normal'", "QOS"),
        ("TRACKLSTM_SLURM_GPU_MODEL", "a100:2", "GPU type"),
        ("TRACKLSTM_SLURM_CONSTRAINT", "x' + open('{marker}', 'w').name + '", "constraint"),
        ("TRACKLSTM_SLURM_GPUS", "abc", "whole number"),
        ("TRACKLSTM_SLURM_GPUS", "", "whole number"),
        ("TRACKLSTM_SLURM_TRAIN_CPUS", "0", "whole number of 1 or more"),
        ("TRACKLSTM_SLURM_TRAIN_RUNTIME", '__import__("os").system("touch {marker}")', "attempt"),
        ("TRACKLSTM_SLURM_TRAIN_RUNTIME", "attempt.bit_length()", "attempt"),
        ("TRACKLSTM_SLURM_TRAIN_RUNTIME", "60 - 60 * attempt", "minutes at attempt 1"),
        ("TRACKLSTM_SLURM_STATUS", "ps", "sacct, squeue"),
    ],
)
def test_profile_setting_that_is_not_a_value_stops_with_one_line(
    workflow_copy: Path, tmp_path: Path, variable: str, value: str, accepts: str
) -> None:
    """A site setting is a value, never code: a wrong one stops `snakemake --profile slurm -n`
    before it plans anything, with one line naming the variable, and runs nothing."""
    marker = tmp_path / "ran"
    value = value.format(marker=marker)
    env = run_env(workflow_copy, **{variable: value})
    result = snakemake(workflow_copy, "--profile", "slurm", "-n", env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if variable in line]
    assert result.returncode != 0 and len(lines) == 1, result.stdout[-3000:]
    assert f"{variable}={value!r}" in lines[0] and accepts in lines[0], lines[0]
    assert "Traceback" not in result.stdout and "usage:" not in result.stdout
    assert "Job stats" not in result.stdout and not marker.exists()


def test_profile_names_stay_names_and_runtime_stays_arithmetic(workflow_copy: Path) -> None:
    """Values Python would read as something else reach Slurm as typed; the runtime keeps
    its arithmetic in the attempt number (min and max too)."""
    jobs = dry_run(
        workflow_copy,
        "slurm",
        TRACKLSTM_SLURM_ACCOUNT="0x10",
        TRACKLSTM_SLURM_PARTITION="None",
        TRACKLSTM_SLURM_GPU_CONSTRAINT="a100|h100",
        TRACKLSTM_SLURM_TRAIN_RUNTIME="min(120 * attempt, 600) + 30",
    )
    train = jobs["train"].resources
    assert (train["slurm_account"], train["slurm_partition"]) == ("0x10", "None")
    assert (train["constraint"], train["runtime"]) == ("a100|h100", "150")


def test_cuda_package_job_gets_a_gpu_like_train(tmp_path: Path) -> None:
    """`export.aoti_cuda: true` adds rule export_aoti_cuda, which the profile gives one GPU
    (even where train runs on CPUs) and the GPU partition, type, QOS and constraint."""
    config = copy.deepcopy(TINY)
    config["export"] = {"aoti_cuda": True}
    work = copy_workflow(tmp_path, config)
    jobs = dry_run(
        work,
        "slurm",
        TRACKLSTM_SLURM_GPUS="0",
        TRACKLSTM_SLURM_PARTITION="short",
        TRACKLSTM_SLURM_GPU_PARTITION="gpu",
        TRACKLSTM_SLURM_GPU_MODEL="h100",
        TRACKLSTM_SLURM_GPU_QOS="gpu_long",
    )
    assert set(jobs) >= CLUSTER_RULES | LOCAL_RULES | {"export_aoti_cuda"}
    cuda = jobs["export_aoti_cuda"]
    assert cuda.outputs[0] == "results/tiny/small/model.cuda.aoti.pt2"
    res = cuda.resources
    assert (res["gpu"], res["gpu_model"], res["slurm_partition"]) == ("1", "h100", "gpu")
    assert (res["qos"], res["runtime"], res["mem_mb"], res["cpus_per_task"]) == (
        "gpu_long",
        "30",
        "8000",
        "2",
    )
    assert jobs["train"].resources["gpu"] == "0"
    assert jobs["export"].resources["slurm_partition"] == "short"


# --------------------------------------------------------------------------------------------
# The preflight against the local Slurm (one node of 2 CPUs, no GPU; partitions debug, the
# default, short with a 30-minute limit, and closed, which is down)


@pytest.fixture(scope="module")
def local_slurm() -> dict[str, str]:
    """The local Slurm, started if needed; the environment its clients need."""
    try:
        slurm_up()
    except RuntimeError as err:
        pytest.skip(f"no local Slurm: {err}")
    return slurm_env()


def preflight_run(workdir: Path, slurm: dict[str, str], *args: str, **env: str) -> str:
    """``snakemake --profile slurm ARGS`` that the preflight must stop: its output."""
    result = snakemake(
        workdir, "--profile", "slurm", *args, env=run_env(workdir, **slurm, **env), check=False
    )
    out = result.stdout
    assert result.returncode != 0, out[-3000:]
    assert "Slurm can never start these jobs" in out, out[-3000:]
    assert "Job stats" not in out and "submitted with SLURM jobid" not in out, out[-3000:]
    return out


@pytest.mark.slurm
def test_preflight_stops_the_default_profile_on_the_small_node(
    workflow_copy: Path, local_slurm: dict[str, str]
) -> None:
    """The profile's defaults (8 CPUs and a GPU for training) on the 2-CPU node: snakemake
    stops before it submits anything, in a dry run and in a real one, naming the variable."""
    for args in (["-n"], []):
        out = preflight_run(workflow_copy, local_slurm, *args)
        assert (
            "train asks 8 CPUs per task; partition debug's nodes have 2: "
            "set TRACKLSTM_SLURM_TRAIN_CPUS"
        ) in out, out[-3000:]
        assert "train asks 1 GPU(s); partition debug's nodes have no GPU: " in out
        assert "TRACKLSTM_SLURM_GPUS to 0" in out
    # Only training asks too much: no line for the other rules, and no job was queued.
    problems = out.split("Slurm can never start these jobs")[1].splitlines()[1:]
    assert [p.split()[0] for p in problems if " asks " in p] == ["train", "train"], problems
    # Slurm holds no job from this folder, finished or not (it keeps them for MinJobAge).
    queued = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%Z"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert str(workflow_copy) not in queued, queued


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"TRACKLSTM_SLURM_GPUS": "1", "TRACKLSTM_SLURM_GPU_MODEL": "a100"},
            "train asks 1 GPU(s) of type a100; partition debug's nodes have no GPU: "
            "set TRACKLSTM_SLURM_GPU_MODEL",
        ),
        (
            {"TRACKLSTM_SLURM_PARTITION": "short"},
            "train asks a time limit of 480 min; partition short allows 30 min: "
            "set TRACKLSTM_SLURM_TRAIN_RUNTIME",
        ),
        (
            {"TRACKLSTM_SLURM_PARTITION": "nosuch"},
            "simulate asks partition nosuch; Slurm's partitions are closed, debug, short: "
            "set TRACKLSTM_SLURM_PARTITION",
        ),
        (
            {"TRACKLSTM_SLURM_GPU_PARTITION": "closed"},
            "train asks partition closed, which is DOWN: set TRACKLSTM_SLURM_GPU_PARTITION",
        ),
        (
            {"TRACKLSTM_SLURM_CONSTRAINT": "bigmem"},
            "windows asks node features bigmem; partition debug's nodes have none: "
            "set TRACKLSTM_SLURM_CONSTRAINT",
        ),
    ],
)
def test_preflight_names_each_request_no_node_can_satisfy(
    workflow_copy: Path, local_slurm: dict[str, str], env: dict[str, str], line: str
) -> None:
    fitting = {"TRACKLSTM_SLURM_GPUS": "0", "TRACKLSTM_SLURM_TRAIN_CPUS": "1"}
    out = preflight_run(workflow_copy, local_slurm, "-n", **{**fitting, **env})
    assert line in out, out[-3000:]


@pytest.mark.slurm
def test_preflight_passes_fitting_values_quickly_and_can_be_skipped(
    workflow_copy: Path, local_slurm: dict[str, str]
) -> None:
    """Fitting values pass (the session's farm run runs with them); the check costs well under
    the 2 seconds allowed; TRACKLSTM_SLURM_PREFLIGHT=0 skips it."""
    fitting = {"TRACKLSTM_SLURM_GPUS": "0", "TRACKLSTM_SLURM_TRAIN_CPUS": "2", **local_slurm}
    seconds = {}
    for switch in ("1", "0"):
        env = run_env(workflow_copy, TRACKLSTM_SLURM_PREFLIGHT=switch, **fitting)
        t0 = time.perf_counter()
        out = snakemake(workflow_copy, "--profile", "slurm", "-n", env=env).stdout
        seconds[switch] = time.perf_counter() - t0
        assert "Slurm can never start" not in out and "Job stats" in out
    assert seconds["1"] - seconds["0"] < 2.0, seconds
    skipped = run_env(workflow_copy, TRACKLSTM_SLURM_PREFLIGHT="0", **local_slurm)
    out = snakemake(workflow_copy, "--profile", "slurm", "-n", env=skipped).stdout
    assert "Slurm can never start" not in out


@pytest.mark.slurm
def test_a_job_that_waits_for_ever_is_named_while_the_run_goes_on(
    tmp_path: Path, local_slurm: dict[str, str]
) -> None:
    """Preflight skipped, every job sent to the partition that is down: the jobs are queued and
    wait (reason PartitionDown); after TRACKLSTM_SLURM_PENDING_MINUTES the run's log names the
    job, its rule, the reason and what to do."""
    work = copy_workflow(tmp_path / "project", copy.deepcopy(TINY))
    env = run_env(
        work,
        TRACKLSTM_SLURM_PREFLIGHT="0",
        TRACKLSTM_SLURM_PARTITION="closed",
        TRACKLSTM_SLURM_PENDING_MINUTES="0.05",
        **local_slurm,
    )
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm"]
    # A session of its own: stopping snakemake must not signal the test process.
    proc = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                break
            seen.append(line)
            if "which waiting does not clear" in line:
                break
    finally:
        # Its jobs can never run: snakemake would wait for them for ever.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # Only this test sends jobs to the partition that is down.
        subprocess.run(["scancel", "--partition", "closed"], check=False)
    text = "".join(seen)
    named = [line for line in seen if "which waiting does not clear" in line]
    assert named, text[-4000:]
    assert "reason PartitionDown" in named[0] and "(rule_simulate" in named[0], named[0]
    assert "the partition is down" in named[0] and "scancel" in named[0]


# --------------------------------------------------------------------------------------------
# A real run through the local Slurm


@pytest.mark.slurm
@pytest.mark.slow
def test_pipeline_through_slurm_with_training_at_its_time_limit(farm_run: FarmRun) -> None:
    """The whole tiny pipeline through the profile on the one-node Slurm, started in the
    background when the session starts (tests/slurm/farmrun.py: its waiting for the time limit
    and for the executor's polling overlaps the other tests); here, what it did."""
    done = farm_run.wait()
    if "skip_reason" in done:
        pytest.skip(done["skip_reason"])
    log = done["log"]
    assert done["rc"] == 0, log[-8000:]
    # Its values fit the node: the preflight (on by default) let it through.
    assert "TRACKLSTM_SLURM_PREFLIGHT" not in done["env"] and "can never start" not in log
    workdir, env, epochs = farm_run.workdir, done["env"], done["epochs"]
    jobs = parse_jobs(log)
    sent = submissions(log)

    # Every cluster job went through Slurm, the light ones did not.
    assert {s.rule for s in sent} == CLUSTER_RULES | {"predict"}, log[-5000:]
    assert all(j.slurm_id for j in jobs if not j.local), log[-5000:]
    assert {j.rule for j in jobs if j.local} >= LOCAL_RULES
    assert not {j.rule for j in jobs if j.local} & {s.rule for s in sent}

    # Slurm's own records: each job ran under the name of its rule, in the workflow's folder,
    # and finished; its Slurm log is kept.
    records = {s.slurm_id: slurm_job(s.slurm_id) for s in sent}
    for s in sent:
        record = records[s.slurm_id]
        assert record["Comment"].startswith(f"rule_{s.rule}_"), record
        assert record["WorkDir"] == str(workdir), record
        assert s.log.is_file() and s.log.parent.parent.name == f"rule_{s.rule}"
        if s.rule != "train":
            assert record["JobState"] == "COMPLETED", record

    # Training: stopped at its time limit, retried, resumed from its checkpoint, finished.
    trains = [s for s in sent if s.rule == "train"]
    states = [records[s.slurm_id]["JobState"] for s in trains]
    assert states == ["TIMEOUT", "COMPLETED"], states
    limits = [records[s.slurm_id]["TimeLimit"] for s in trains]
    assert limits == ["00:01:00", "00:10:00"], limits
    assert all(records[s.slurm_id]["NumCPUs"] == "1" for s in trains)
    killed = trains[0].log.read_text()
    assert "DUE TO TIME LIMIT" in killed
    run = workdir / "results" / "tiny" / "small"
    train_log = (workdir / "results" / "tiny" / "logs" / "train" / "small.log").read_text()
    # The killed job saved its state (the retry resumes from it) and left no output that looks
    # finished (the epochs so far went to metrics.partial.csv): Snakemake had nothing to remove.
    assert "Removing output files of failed job train" not in killed
    assert "resuming from" in train_log
    summary = json.loads((run / "training.json").read_text())
    assert summary["resumes"] >= 1 and summary["epochs_run"] == epochs
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + epochs
    assert not (run / "checkpoint.pt").exists()

    # The outputs are right.
    metrics = json.loads((run / "evaluation" / "tiny" / "metrics.json").read_text())
    assert metrics["n_test_windows"] > 0
    assert all(math.isfinite(s["rms"]) for s in metrics["residuals"].values())
    for png in (run / "evaluation" / "tiny").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("challenge/test_inputs.csv", "challenge/test_answers.csv", "quality/summary.html"):
        assert (workdir / "results" / "tiny" / name).stat().st_size > 0, name
    predict = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]); "
        f"x = torch.tensor([[[0., 0., z, .1, -.05, 1.5] for z in {list(PLANE_Z[:7])}]]); "
        "y = m(x); assert y.shape == (1, 6) and bool(torch.isfinite(y).all()); "
        "print(float(y[0, 2]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", predict, str(run / "model.ts")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert 60 < float(out.stdout) < 400  # the next plane's z, in cm: physical units
    assert "Nothing to be done" in snakemake(workdir, *FAST, "-n", env=env).stdout
