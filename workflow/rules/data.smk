rule simulate:
    """Simulated tracks in the training-file format, one shard per job."""
    input:
        code=code("data.simulate"),
    output:
        "results/{dataset}/raw/shard{shard}.csv",
    log:
        "results/{dataset}/logs/simulate/shard{shard}.log",
    benchmark:
        "results/{dataset}/benchmarks/simulate/shard{shard}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        tracks=lambda w: config["datasets"][w.dataset]["simulate"]["tracks_per_shard"],
        seed=lambda w: config["datasets"][w.dataset]["simulate"]["seed"],
    shell:
        "python -m tracklstm.data.simulate --n-tracks {params.tracks} --seed {params.seed}"
        " --shard {wildcards.shard} --out {output} 2> {log}"


rule download:
    """The real training file, downloaded with retries, resume and an optional checksum."""
    input:
        code=code("data.download"),
    output:
        "results/{dataset}/raw/tracks.csv",
    log:
        "results/{dataset}/logs/download.log",
    benchmark:
        "results/{dataset}/benchmarks/download.tsv"
    wildcard_constraints:
        dataset=datasets_from("url"),
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=60,
    params:
        url=lambda w: config["datasets"][w.dataset]["url"],
        sha256=sha256_option,
    shell:
        "python -m tracklstm.data.download --url {params.url:q} {params.sha256}"
        " --out {output} 2> {log}"


rule use_local:
    """A training file already on disk, used without being modified."""
    input:
        csv=lambda w: config["datasets"][w.dataset]["path"],
        code=code("data.download"),
    output:
        "results/{dataset}/raw/tracks.csv",
    log:
        "results/{dataset}/logs/use_local.log",
    wildcard_constraints:
        dataset=datasets_from("path"),
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    params:
        mode=lambda w: config["datasets"][w.dataset].get("mode", "copy"),
        sha256=sha256_option,
    shell:
        "python -m tracklstm.data.download --path {input.csv:q} --mode {params.mode}"
        " {params.sha256} --out {output} 2> {log}"


ruleorder: use_local > download


rule to_parquet:
    """Track CSV -> Parquet (float32), streamed, with a data-quality summary."""
    input:
        csv="results/{dataset}/raw/{part}.csv",
        code=code("data.to_parquet"),
    output:
        parquet="results/{dataset}/tracks.parquet/{part}.parquet",
        quality="results/{dataset}/quality/{part}.json",
    log:
        "results/{dataset}/logs/to_parquet/{part}.log",
    benchmark:
        "results/{dataset}/benchmarks/to_parquet/{part}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        settings=stage_settings("to_parquet"),
    shell:
        "python -m tracklstm.data.to_parquet --csv {input.csv} --out {output.parquet}"
        " --quality {output.quality} --settings {params.settings:q} --threads {threads}"
        " 2> {log}"


rule windows:
    """Parquet -> windows.h5: windows split by track, normalization from the training split."""
    input:
        parquet=parquet_parts,
        code=code("data.windows"),
    output:
        "results/{dataset}/windows.h5",
    log:
        "results/{dataset}/logs/windows.log",
    benchmark:
        "results/{dataset}/benchmarks/windows.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        settings=stage_settings("windows"),
    shell:
        "python -m tracklstm.data.windows --parquet {input.parquet} --out {output}"
        " --settings {params.settings:q} 2> {log}"


rule challenge:
    """Challenge-format test inputs and answers from the test split's tracks (no header)."""
    input:
        parquet=parquet_parts,
        windows="results/{dataset}/windows.h5",
        code=code("data.challenge"),
    output:
        inputs="results/{dataset}/challenge/test_inputs.csv",
        answers="results/{dataset}/challenge/test_answers.csv",
    log:
        "results/{dataset}/logs/challenge.log",
    benchmark:
        "results/{dataset}/benchmarks/challenge.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=stage_settings("challenge"),
    shell:
        "python -m tracklstm.data.challenge --parquet {input.parquet} --windows {input.windows}"
        " --inputs-out {output.inputs} --answers-out {output.answers}"
        " --settings {params.settings:q} 2> {log}"
