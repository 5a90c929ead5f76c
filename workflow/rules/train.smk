rule train:
    """Train the model on the training windows; resumes from its checkpoint when restarted."""
    input:
        windows="results/{dataset}/windows.h5",
        code=code("train"),
    output:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        metrics="results/{dataset}/{model}/metrics.csv",
        summary="results/{dataset}/{model}/training.json",
    params:
        run_dir=subpath(output.summary, parent=True),
        settings=lambda w: as_json(
            {
                "model": section("model", w.dataset, w.model),
                "training": section("training", w.dataset, w.model),
            }
        ),
    log:
        "results/{dataset}/logs/train/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/train/{model}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m tracklstm.train --windows {input.windows} --out {params.run_dir}"
        " --settings {params.settings:q} --threads {threads} 2> {log}"
