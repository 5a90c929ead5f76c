rule evaluate:
    """Residuals of the exported model on the held-out test tracks, and the loss curves."""
    input:
        model="results/{dataset}/{model}/model.ts",
        windows="results/{data}/windows.h5",
        metrics="results/{dataset}/{model}/metrics.csv",
        code=code("evaluate"),
    output:
        metrics="results/{dataset}/{model}/evaluation/{data}/metrics.json",
        residuals="results/{dataset}/{model}/evaluation/{data}/residuals.png",
        loss_curves="results/{dataset}/{model}/evaluation/{data}/loss_curves.png",
    params:
        out_dir=subpath(output.metrics, parent=True),
        bins=lambda w: section("evaluation", w.dataset, w.model)["bins"],
    log:
        "results/{dataset}/logs/evaluate/{model}/{data}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate/{model}/{data}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m tracklstm.evaluate --model {input.model} --windows {input.windows}"
        " --out {params.out_dir} --metrics-csv {input.metrics} --bins {params.bins} 2> {log}"
