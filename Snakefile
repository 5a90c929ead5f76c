"""tracklstm: GlueX charged-track LSTM, from the raw track CSV to an evaluated TorchScript model.

snakemake --cores 2                  # the default (simulated `demo`) dataset
snakemake --profile slurm            # on a Slurm farm
snakemake --config build='{datasets: [mlchallenge2]}' --cores 8
"""

import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("9.0")

# The workflow runs the package in its own src/ folder, whatever else is installed.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
from tracklstm import settings as tl_settings  # noqa: E402
from tracklstm.farm import preflight as farm  # noqa: E402


configfile: "config.yaml"


# Every job runs the package from this workflow's src/ folder, whatever else is installed, with
# the Python that runs Snakemake (its venv's bin first on PATH, activated or not), unless a rule's
# conda env is in use (--sdm conda), which brings its own.
USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON_BIN = (
    ""
    if USES_CONDA
    else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
)
shell.prefix(
    f"set -euo pipefail; {PYTHON_BIN}"
    f"export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


report: "workflow/report/workflow.rst"


try:
    # The schema (its defaults filled in), finite numbers, every dataset's and model variant's
    # merged settings, names and the rules between keys: an error names the key, before any job.
    tl_settings.prepare(config)
except tl_settings.ConfigError as err:
    raise WorkflowError(str(err)) from None


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    part=r"tracks|shard\d{3}",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"


# Light jobs run inside the snakemake process, never as cluster jobs (with --profile slurm: on
# the submit host, which can also reach the network for the download).
localrules:
    all,
    download,
    use_local,
    quality_table,
    models_table,
    simulator_vs_real,


rule all:
    default_target: True
    input:
        all_targets(),


# Under the Slurm profile: a request that no node of its partition can satisfy stops the run
# before any job is submitted, one line per problem; while the run goes on, jobs that wait for a
# reason that never clears are named (tracklstm.farm.preflight; docs/farm.md).
if farm.wanted():
    FARM_PROBLEMS = farm.preflight(workflow, rules_to_submit())
    if FARM_PROBLEMS:
        raise WorkflowError(
            "Slurm can never start these jobs (TRACKLSTM_SLURM_PREFLIGHT=0 skips this check):\n"
            + "\n".join(FARM_PROBLEMS)
        )


onstart:
    if farm.in_use():
        farm.PendingWatch(farm.snakemake_log, farm.pending_minutes()).start()
