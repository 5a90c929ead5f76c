"""The Slurm test's pipeline run, started in the background when the test session starts.

The real run through the one-node Slurm (``tests/test_slurm.py``) spends most of its minutes
waiting: for the training's one-minute time limit (Slurm checks time limits every 30 s) and for
the executor's status checks (10 s further apart each time no job has ended). Started first, in
a process of its own, that waiting overlaps the other tests (whichever pytest-xdist worker runs
them); the test itself waits for the run at the end and checks what it did, as before.

``FarmRun(root).start()``, called by the first test process while the others wait for it:
1. sizes the training on this machine, still quiet: a short training of the same size (the tiny
   dataset's 300 tracks, the small model, one thread) gives the wall time of an epoch (step,
   validation and checkpoint); the run's training gets ``TRAINING_SECONDS`` of it, which
   outlasts the first attempt's time limit (stopped 60 to 90 s after it starts). The test
   processes then lower their priority (``nice``), so that the tests that run beside it hardly
   slow the Slurm jobs (started by Slurm's daemons, at the usual priority) down;
2. starts ``python tests/slurm/farmrun.py ROOT EPOCHS`` in a process of its own, which starts
   the local Slurm if it does not answer (``slurm-up.sh``; as root) and runs
   ``snakemake --profile slurm`` on a copy of the workflow with the tiny config, writing, in
   ROOT, ``state.json`` (the epochs, the environment, or why it cannot run) and, when
   snakemake ends, ``rc`` (its exit code); its output goes to ``snakemake.log``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from farmtest import slurm_env, slurm_up  # noqa: E402
from workflow_runs import TINY_CONFIG, copy_workflow, run_env  # noqa: E402

#: The profile, and status checks from the first second (the plugin's default waits 40 s).
FAST: tuple[str, ...] = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1")
#: Wall seconds of training the run is given, at the speed measured before it starts.
TRAINING_SECONDS = 120.0
#: The longest the run may take, whatever the machine's load.
RUN_TIMEOUT = 1500


def seconds_per_epoch(workdir: Path, settings: dict[str, Any], epochs: int = 40) -> float:
    """Wall seconds per epoch of a training of the tiny dataset's size, one thread: the step,
    the validation and the checkpoint written after every epoch, from the times of the
    training's own log lines (its second half: the first epochs are slower)."""
    from test_train import make_windows_file

    workdir.mkdir(parents=True, exist_ok=True)
    windows = make_windows_file(workdir / "windows.h5", n_tracks=300)
    settings = {**settings, "training": {**settings["training"], "epochs": epochs}}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tracklstm.train", "--windows", str(windows)),
            *("--out", str(workdir / "run"), "--settings", json.dumps(settings)),
            *("--threads", "1"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in done.stderr.splitlines()
        if re.search(r"tracklstm\.train: epoch \d+/", line)
    ]
    if len(stamps) != epochs:
        raise RuntimeError(f"calibration: {len(stamps)} epochs logged:\n{done.stderr[-3000:]}")
    half = epochs // 2
    return (stamps[-1] - stamps[half]).total_seconds() / (epochs - 1 - half)


def tiny_config() -> dict[str, Any]:
    return yaml.safe_load(TINY_CONFIG.read_text())


def training_epochs(root: Path) -> tuple[int, float]:
    """The epochs of ``TRAINING_SECONDS`` at this machine's speed now, and the seconds of one."""
    config = tiny_config()
    settings = {
        "model": config["models"]["small"]["model"],
        "training": config["datasets"]["tiny"]["training"],
    }
    per_epoch = seconds_per_epoch(root / "calibration", settings)
    return min(5000, max(20, math.ceil(TRAINING_SECONDS / max(per_epoch, 1e-3)))), per_epoch


def run(root: Path, epochs: int) -> int:
    """The run itself (``python tests/slurm/farmrun.py ROOT EPOCHS``)."""
    state: dict[str, Any] = {"workdir": str(root / "project"), "epochs": epochs}
    try:
        config = tiny_config()
        tiny = config["datasets"]["tiny"]
        tiny["training"].update(epochs=epochs, early_stopping={"patience": None})
        # The same 300 tracks in one shard: two jobs fewer before the training starts.
        tiny["simulate"].update(shards=1, tracks_per_shard=2 * tiny["simulate"]["tracks_per_shard"])
        workdir = copy_workflow(root / "project", copy.deepcopy(config))
        try:
            slurm_up()
        except RuntimeError as err:
            state["skip_reason"] = f"no local Slurm: {err}"
            return 0
        env = run_env(
            workdir,
            TRACKLSTM_SLURM_GPUS="0",  # no GPU on this node
            TRACKLSTM_SLURM_TRAIN_CPUS="1",  # 2 CPUs: another job runs beside training
            # Minutes: the first attempt is stopped at 1 minute, the retry gets 10.
            TRACKLSTM_SLURM_TRAIN_RUNTIME="1 + 9 * min(attempt - 1, 1)",
            **slurm_env(),
        )
        state["env"] = env
        (root / "state.json").write_text(json.dumps(state))
        with open(root / "snakemake.log", "w") as out:
            code = subprocess.run(
                [sys.executable, "-m", "snakemake", *FAST],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT,
            ).returncode
        (root / "rc").write_text(str(code))
        return code
    except BaseException as err:
        state["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        (root / "state.json").write_text(json.dumps(state))
        if not (root / "rc").exists():
            (root / "rc").write_text("-1")


class FarmRun:
    """The run of a session, seen from the tests: start it, wait for it, read what it did."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workdir = root / "project"

    @property
    def started(self) -> bool:
        return (self.root / "started").exists()

    def start(self) -> None:
        """Size the training now, then start the run in a process of its own (it outlives the
        test process that starts it, which may end first when several run the tests)."""
        self.root.mkdir(parents=True, exist_ok=True)
        epochs, per_epoch = training_epochs(self.root)
        (self.root / "calibration.json").write_text(
            json.dumps({"epochs": epochs, "seconds_per_epoch": per_epoch})
        )
        with open(self.root / "runner.log", "w") as log:
            subprocess.Popen(
                [sys.executable, __file__, str(self.root), str(epochs)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.root / "started").touch()

    def wait(self, timeout: float = RUN_TIMEOUT + 300) -> dict[str, Any]:
        """What the run did, once it has ended: ``state.json`` plus ``rc`` and ``log``."""
        deadline = time.monotonic() + timeout
        while not (self.root / "rc").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the farm run in {self.root} did not end in {timeout:.0f} s")
            time.sleep(2)
        state = json.loads((self.root / "state.json").read_text())
        state["rc"] = int((self.root / "rc").read_text())
        log = self.root / "snakemake.log"
        state["log"] = log.read_text() if log.exists() else ""
        runner = (self.root / "runner.log").read_text()
        if "error" in state or (state["rc"] < 0 and "skip_reason" not in state):
            raise RuntimeError(f"the farm run failed: {state.get('error')}\n{runner[-4000:]}")
        return state


if __name__ == "__main__":
    raise SystemExit(run(Path(sys.argv[1]), int(sys.argv[2])))
