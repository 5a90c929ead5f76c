rule simulate:
    """Simulated tracks in the training-file format, one shard per job."""
    input:
        code=code("simulate"),
    output:
        "results/{dataset}/raw/shard{shard}.csv",
    params:
        tracks=lambda w: config["datasets"][w.dataset]["simulate"]["tracks_per_shard"],
        seed=lambda w: config["datasets"][w.dataset]["simulate"]["seed"],
    log:
        "results/{dataset}/logs/simulate/shard{shard}.log",
    benchmark:
        "results/{dataset}/benchmarks/simulate/shard{shard}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m tracklstm.simulate --n-tracks {params.tracks} --seed {params.seed}"
        " --shard {wildcards.shard} --out {output} 2> {log}"


rule download:
    """The real training file, downloaded with retries, resume and an optional checksum."""
    input:
        code=code("download"),
    output:
        "results/{dataset}/raw/tracks.csv",
    params:
        url=lambda w: config["datasets"][w.dataset]["url"],
        sha256=lambda w: config["datasets"][w.dataset].get("sha256") or "",
    log:
        "results/{dataset}/logs/download.log",
    benchmark:
        "results/{dataset}/benchmarks/download.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=60,
    shell:
        "python -m tracklstm.download --url {params.url:q} --sha256 {params.sha256:q}"
        " --out {output} 2> {log}"


rule use_local:
    """A training file already on disk, used without being modified."""
    input:
        csv=lambda w: config["datasets"][w.dataset]["path"],
        code=code("download"),
    output:
        "results/{dataset}/raw/tracks.csv",
    params:
        mode=lambda w: config["datasets"][w.dataset].get("mode", "copy"),
        sha256=lambda w: config["datasets"][w.dataset].get("sha256") or "",
    log:
        "results/{dataset}/logs/use_local.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    shell:
        "python -m tracklstm.download --path {input.csv:q} --mode {params.mode}"
        " --sha256 {params.sha256:q} --out {output} 2> {log}"


ruleorder: use_local > download


rule to_parquet:
    """Track CSV -> Parquet (float32), streamed, with a data-quality summary."""
    input:
        csv="results/{dataset}/raw/{part}.csv",
        code=code("to_parquet"),
    output:
        parquet="results/{dataset}/tracks.parquet/{part}.parquet",
        quality="results/{dataset}/quality/{part}.json",
    params:
        bad_rows=lambda w: section("conversion", w.dataset)["bad_rows"],
    log:
        "results/{dataset}/logs/to_parquet/{part}.log",
    benchmark:
        "results/{dataset}/benchmarks/to_parquet/{part}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m tracklstm.to_parquet --csv {input.csv} --out {output.parquet}"
        " --quality {output.quality} --bad-rows {params.bad_rows} 2> {log}"


rule windows:
    """Parquet -> windows.h5: windows split by track, normalization from the training split."""
    input:
        parquet=parquet_parts,
        code=code("windows"),
    output:
        "results/{dataset}/windows.h5",
    params:
        length=lambda w: section("windows", w.dataset)["length"],
        stride=lambda w: section("windows", w.dataset)["stride"],
        last=lambda w: section("windows", w.dataset)["last_target_plane"],
        split=lambda w: ",".join(
            str(section("windows", w.dataset)["split"][s])
            for s in ("train", "validation", "test")
        ),
        seed=lambda w: section("windows", w.dataset)["seed"],
    log:
        "results/{dataset}/logs/windows.log",
    benchmark:
        "results/{dataset}/benchmarks/windows.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m tracklstm.windows --parquet {input.parquet} --out {output}"
        " --length {params.length} --stride {params.stride} --last-target-plane {params.last}"
        " --split {params.split} --seed {params.seed} 2> {log}"
