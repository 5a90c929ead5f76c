rule export:
    """TorchScript, ONNX and torch.export files in physical units, each reloaded and checked
    against the eager model; a failed check fails the rule and leaves none of the files.
    """
    input:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        summary="results/{dataset}/{model}/training.json",
        code=code("export"),
    output:
        torchscript="results/{dataset}/{model}/model.ts",
        onnx="results/{dataset}/{model}/model.onnx",
        program="results/{dataset}/{model}/model.pt2",
        report="results/{dataset}/{model}/export_checks.json",
    log:
        "results/{dataset}/logs/export/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/export/{model}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        run_dir=subpath(input.summary, parent=True),
        settings=stage_settings("export"),
    shell:
        "python -m tracklstm.export --run {params.run_dir} --out {output.torchscript}"
        " --onnx {output.onnx} --program {output.program} --report {output.report}"
        " --settings {params.settings:q} --threads {threads} 2> {log}"


rule export_plain:
    """The residual model as model.weights.txt for the plain C++ propagator (no libtorch),
    compiled and checked in C++ against model.ts before it is kept (config: export.plain).
    """
    input:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        summary="results/{dataset}/{model}/training.json",
        torchscript="results/{dataset}/{model}/model.ts",
        code=code("export.plain"),
        cpp=CPP_SOURCES,
    output:
        weights="results/{dataset}/{model}/model.weights.txt",
        report="results/{dataset}/{model}/plain_checks.json",
    log:
        "results/{dataset}/logs/export_plain/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_plain/{model}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        run_dir=subpath(input.summary, parent=True),
        cpp_dir=lambda w, input: os.path.dirname(input.cpp[0]),
        settings=stage_settings("export"),
    shell:
        "python -m tracklstm.export.plain --run {params.run_dir} --torchscript {input.torchscript}"
        " --out {output.weights} --report {output.report} --cpp {params.cpp_dir}"
        " --settings {params.settings:q} 2> {log}"


rule export_aoti:
    """An AOTInductor package (torch.export + AOTInductor, for C++ hosts without TorchScript),
    checked against the eager model before it is kept (config: export.aoti)."""
    input:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        summary="results/{dataset}/{model}/training.json",
        code=code("export.aoti"),
    output:
        package="results/{dataset}/{model}/model.aoti.pt2",
        report="results/{dataset}/{model}/aoti_checks.json",
    log:
        "results/{dataset}/logs/export_aoti/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_aoti/{model}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        run_dir=subpath(input.summary, parent=True),
        settings=stage_settings("export"),
    shell:
        "python -m tracklstm.export.aoti --run {params.run_dir} --out {output.package}"
        " --report {output.report} --settings {params.settings:q} --threads {threads}"
        " 2> {log}"


rule predict:
    """Answers (x,y,px,py,pz per line) to the challenge-format test inputs of dataset {data}."""
    input:
        model="results/{dataset}/{model}/model.ts",
        inputs="results/{data}/challenge/test_inputs.csv",
        code=code("evaluate.predict"),
    output:
        "results/{dataset}/{model}/evaluation/{data}/challenge_predictions.csv",
    log:
        "results/{dataset}/logs/predict/{model}/{data}.log",
    benchmark:
        "results/{dataset}/benchmarks/predict/{model}/{data}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=stage_settings("predict"),
    shell:
        "python -m tracklstm.evaluate.predict --model {input.model} --inputs {input.inputs}"
        " --out {output} --settings {params.settings:q} --threads {threads} 2> {log}"


rule export_aoti_cuda:
    """The same package compiled for CUDA GPUs (config: export.aoti_cuda): its job needs a GPU
    and a CUDA build of torch, and fails at once, saying so, without them."""
    input:
        best="results/{dataset}/{model}/weights_best.pt",
        last="results/{dataset}/{model}/weights_last.pt",
        summary="results/{dataset}/{model}/training.json",
        code=code("export.aoti"),
    output:
        package="results/{dataset}/{model}/model.cuda.aoti.pt2",
        report="results/{dataset}/{model}/aoti_cuda_checks.json",
    log:
        "results/{dataset}/logs/export_aoti_cuda/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_aoti_cuda/{model}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        run_dir=subpath(input.summary, parent=True),
        settings=stage_settings("export"),
    shell:
        "python -m tracklstm.export.aoti --run {params.run_dir} --out {output.package} --device cuda"
        " --report {output.report} --settings {params.settings:q} --threads {threads}"
        " 2> {log}"
