import json
import re

DATASETS = list(config["datasets"])
MODELS = list(config["models"])


# The package modules each stage runs (a package: all its files). They are declared as inputs,
# so that editing a module re-runs the rules that use it and everything downstream.
STAGE_MODULES = {
    "simulate": ["simulate", "constants", "io"],
    "download": ["download", "io"],
    "to_parquet": ["to_parquet", "constants", "io"],
    "windows": ["windows", "to_parquet", "constants", "io"],
    "challenge": ["challenge", "windows", "to_parquet", "constants", "io"],
    "train": ["train", "model", "io"],
    "export": ["export", "artifacts", "model", "constants", "io"],
    "predict": ["predict", "artifacts", "constants", "io"],
    "evaluate": [
        "evaluate",
        "artifacts",
        "baselines",
        "challenge",
        "windows",
        "to_parquet",
        "constants",
        "io",
    ],
    "compare": ["compare", "evaluate", "baselines", "constants", "io"],
}


def code(stage):
    """The source files of a stage's modules (absolute: the workflow's own src/ folder)."""
    files = []
    for m in STAGE_MODULES[stage]:
        package = SRC / "tracklstm" / m
        if package.is_dir():
            files += sorted(str(f) for f in package.glob("*.py"))
        else:
            files.append(str(SRC / "tracklstm" / f"{m}.py"))
    return files


def section(name, dataset, model=None):
    """A config section as it applies to one dataset (and model variant)."""
    return tl_settings.resolve_section(config, name, dataset, model)


def as_json(value):
    """Settings for the command line: compact JSON, quoted with `:q` in shell commands."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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
    # Evaluations, data-quality tables and comparisons (workflow/rules/evaluate.smk).
    targets += tl_plan.targets(config)
    return targets


def train_settings(wildcards):
    """The model and training sections of one run, and the window length it expects."""
    return {
        "model": section("model", wildcards.dataset, wildcards.model),
        "training": section("training", wildcards.dataset, wildcards.model),
        "window_length": section("windows", wildcards.dataset)["length"],
    }


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
    names = [n for n, d in config["datasets"].items() if d["source"] == source]
    return "|".join(re.escape(n) for n in names) or "(?!)"


def sha256_option(wildcards):
    """`--sha256 HEX` when the dataset names a checksum, else nothing."""
    digest = config["datasets"][wildcards.dataset].get("sha256")
    return f"--sha256 {digest}" if digest else ""
