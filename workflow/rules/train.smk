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


rule train:
    """Train the model on the training windows.

    A failed or killed job (Slurm's time limit sends SIGTERM: the step is finished, the state
    saved, the exit code is 143) leaves checkpoint.pt in the run folder; the retry resumes it.
    The log keeps every attempt (appended).
    """
    input:
        windows="results/{dataset}/windows.h5",
        init=train_init_inputs,
        code=code("train"),
    output:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        metrics="results/{dataset}/{model}/metrics.csv",
        summary="results/{dataset}/{model}/training.json",
    log:
        "results/{dataset}/logs/train/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/train/{model}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        run_dir=subpath(output.summary, parent=True),
        # Not an output: Snakemake leaves it when the job fails, and the rerun resumes it.
        checkpoint=lambda w: f"results/{w.dataset}/{w.model}/checkpoint.pt",
        settings=lambda w: as_json(train_settings(w)),
        launcher=train_launcher,
        threads=train_threads,
    shell:
        "{PYTHON} {params.launcher} tracklstm.train --windows {input.windows}"
        " --out {params.run_dir} --checkpoint {params.checkpoint}"
        " --settings {params.settings:q} --threads {params.threads} 2>> {log}"
