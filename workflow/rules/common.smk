import json
import os

from tracklstm import code_inputs as tl_code
from tracklstm import evaluation_plan as tl_plan

DATASETS = list(config["datasets"])
MODELS = list(config["models"])


def code(module):
    """The code inputs of ``python -m tracklstm.<module>`` (what counts, and why:
    src/tracklstm/code_inputs.py), relative to the working directory: editing one re-runs the
    jobs that use it, and a project copied or moved elsewhere stays up to date."""
    return tl_code.stage_inputs(f"tracklstm.{module}")


# The C++ sources that rule export_plain compiles (editing one re-runs its check), relative to
# the working directory like the code inputs: the .cpp program first, then the headers.
CPP_DIR = Path(workflow.basedir) / "cpp"
CPP_SOURCES = [
    os.path.relpath(p, os.getcwd())
    for p in [
        CPP_DIR / "tracklstm_propagate.cpp",
        *sorted(CPP_DIR.glob("include/*/*.hpp")),
    ]
]


def section(name, dataset, model=None):
    """A config section as it applies to one dataset (and model variant)."""
    return tl_settings.resolve_section(config, name, dataset, model)


def stage_settings(stage):
    """The params function giving a stage its merged settings as compact JSON; every rule hands
    them to its command the same way: ``--settings {params.settings:q}``."""

    def settings(wildcards):
        # evaluate and predict read the data's settings (the dataset they are evaluated on)
        data = getattr(wildcards, "data", None)
        dataset = data or wildcards.dataset
        model = getattr(wildcards, "model", None)
        value = tl_settings.stage_settings(config, stage, dataset, model)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return settings


def raw_csvs(wildcards):
    return expand(
        "results/{dataset}/raw/{part}.csv",
        dataset=wildcards.dataset,
        part=tl_settings.raw_parts(config, wildcards.dataset),
    )


def parquet_parts(wildcards):
    return expand(
        "results/{dataset}/tracks.parquet/{part}.parquet",
        dataset=wildcards.dataset,
        part=tl_settings.raw_parts(config, wildcards.dataset),
    )


def all_targets():
    targets = []
    for ds in config["build"]["datasets"]:
        targets += [
            f"results/{ds}/challenge/test_inputs.csv",
            f"results/{ds}/challenge/test_answers.csv",
        ]
        for model in config["build"]["models"]:
            run = f"results/{ds}/{model}"
            targets += [
                f"{run}/model.ts",
            ]
            if section("export", ds, model)["plain"] and tl_plan.has_plain_form(
                section("model", ds, model)
            ):
                targets.append(f"{run}/model.weights.txt")
            if section("export", ds, model)["aoti"]:
                targets.append(f"{run}/model.aoti.pt2")
            if section("export", ds, model)["aoti_cuda"]:
                targets.append(f"{run}/model.cuda.aoti.pt2")
    # Evaluations, data-quality tables and comparisons (workflow/rules/evaluate.smk).
    targets += tl_plan.targets(config)
    return targets


# Rules that run only when a target of the build asks for them (an option, external models);
# every other rule runs for any build. The Slurm preflight checks the requests of the rules a
# run may submit: these only when the build asks for their outputs.
OPTIONAL_RULES = {
    "export_plain",
    "export_aoti",
    "export_aoti_cuda",
    "predict_external",
    "evaluate_external",
}


def rules_to_submit():
    """The names of the rules the build may submit (not local, not an unused option)."""
    targets = all_targets()
    return [
        each.name
        for each in workflow.rules
        if each.name not in OPTIONAL_RULES or any(each.is_producer(t) for t in targets)
    ]


def train_init_inputs(wildcards):
    """Fine-tuning: the weights (and normalization) the run starts from, built first if needed."""
    init = section("training", wildcards.dataset, wildcards.model).get("init_from")
    if not init:
        return []
    path = Path(init)
    if path.suffix == ".pt":
        extra = (
            [path.parent / "training.json"] if path.name.startswith("weights_") else []
        )
        return [str(path), *map(str, extra)]
    return [str(path / "weights_best.pt"), str(path / "training.json")]


def train_gpus(resources):
    return int(resources.get("gpu", 0) or resources.get("gpus", 0) or 0)


def train_launcher(wildcards, resources):
    """One process by default; with several GPUs (resource `gpu` > 1) torchrun, one per GPU."""
    gpus = train_gpus(resources)
    if gpus > 1:
        return f"-m torch.distributed.run --standalone --nproc_per_node={gpus} -m"
    return "-m"


def train_threads(wildcards, threads, resources):
    """CPU threads of each training process."""
    return max(1, threads // max(1, train_gpus(resources)))


def datasets_from(source):
    """A wildcard pattern matching the datasets of one source kind (none: matches nothing)."""
    return tl_plan.name_pattern(
        n for n, d in config["datasets"].items() if d["source"] == source
    )


def sha256_option(wildcards):
    """`--sha256 HEX` when the dataset names a checksum, else nothing."""
    digest = config["datasets"][wildcards.dataset].get("sha256")
    return f"--sha256 {digest}" if digest else ""
