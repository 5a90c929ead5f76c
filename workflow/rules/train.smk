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
    conda:
        "../envs/tracklstm.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        run_dir=subpath(output.summary, parent=True),
        # Not an output: Snakemake leaves it when the job fails, and the rerun resumes it.
        checkpoint=lambda w: f"results/{w.dataset}/{w.model}/checkpoint.pt",
        settings=stage_settings("train"),
        launcher=train_launcher,
        threads=train_threads,
    shell:
        "python {params.launcher} tracklstm.train --windows {input.windows}"
        " --out {params.run_dir} --checkpoint {params.checkpoint}"
        " --settings {params.settings:q} --threads {params.threads} 2>> {log}"
