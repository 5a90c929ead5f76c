rule export:
    """TorchScript model in physical units, checked against the eager model."""
    input:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        summary="results/{dataset}/{model}/training.json",
        code=code("export"),
    output:
        "results/{dataset}/{model}/model.ts",
    params:
        run_dir=subpath(input.summary, parent=True),
        weights=lambda w: section("export", w.dataset, w.model)["weights"],
    log:
        "results/{dataset}/logs/export/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/export/{model}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m tracklstm.export --run {params.run_dir} --weights {params.weights}"
        " --out {output} 2> {log}"
