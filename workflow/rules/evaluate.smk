import shlex

# Evaluation: every model on its own dataset's test tracks and on the datasets listed in its
# `evaluation.also_on`; exported model files (`evaluation.external_models`) without training;
# the data-quality tables; comparisons (`compare:`). Every output a person looks at is marked
# for `snakemake --report report.html`, with a caption from workflow/report/. Which evaluations
# run: src/tracklstm/evaluation_plan.py.

EXTERNAL_MODELS = tl_settings.external_models(config)


wildcard_constraints:
    data=tl_plan.name_pattern(DATASETS),
    ext=tl_plan.name_pattern(EXTERNAL_MODELS),
    comparison=tl_plan.name_pattern(tl_settings.comparisons(config)),


EVALUATION = "results/{dataset}/{model}/evaluation/{data}"
EXTERNAL = "results/external/{ext}/evaluation/{data}"
# The outputs of the two evaluation rules, marked for the report.
EVALUATION_OUTPUTS = {
    key: report(
        f"{EVALUATION}/{file}",
        caption=f"../report/{caption}",
        category="Evaluation",
        subcategory="{dataset}/{model} on {data}",
        labels={"run": "{dataset}/{model} on {data}", "figure": figure},
    )
    for key, (file, caption, figure) in tl_plan.EVALUATION_FILES.items()
}
EXTERNAL_OUTPUTS = {
    key: report(
        f"{EXTERNAL}/{file}",
        caption=f"../report/{caption}",
        category="Evaluation",
        subcategory="external/{ext} on {data}",
        labels={"run": "external/{ext} on {data}", "figure": figure},
    )
    for key, (file, caption, figure) in tl_plan.EVALUATION_FILES.items()
    if key != "loss_curves"
}


rule evaluate:
    """A trained model on the test tracks of dataset {data}: residuals, baselines, walking,
    challenge score, loss curves."""
    input:
        model="results/{dataset}/{model}/model.ts",
        windows="results/{data}/windows.h5",
        metrics="results/{dataset}/{model}/metrics.csv",
        challenge_inputs="results/{data}/challenge/test_inputs.csv",
        challenge_answers="results/{data}/challenge/test_answers.csv",
        predictions=f"{EVALUATION}/challenge_predictions.csv",
        code=code("evaluate"),
    output:
        **EVALUATION_OUTPUTS,
        metrics=f"{EVALUATION}/metrics.json",
    log:
        "results/{dataset}/logs/evaluate/{model}/{data}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate/{model}/{data}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        out_dir=subpath(output.metrics, parent=True),
        settings=stage_settings("evaluate"),
    shell:
        "python -m tracklstm.evaluate --model {input.model} --windows {input.windows}"
        " --out {params.out_dir} --metrics-csv {input.metrics}"
        " --challenge-inputs {input.challenge_inputs}"
        " --challenge-answers {input.challenge_answers}"
        " --challenge-predictions {input.predictions}"
        " --model-name {wildcards.dataset}/{wildcards.model} --data-name {wildcards.data}"
        " --settings {params.settings:q} --threads {threads} 2> {log}"


rule calibration_plot:
    """The covariance a model predicts, judged on the test tracks of dataset {data}: pulls,
    coverage of the predicted regions, pull widths per |p| quartile and the chi2/ndf of the
    covariance carried along the walk."""
    input:
        model="results/{dataset}/{model}/model.ts",
        windows="results/{data}/windows.h5",
        metrics=f"{EVALUATION}/metrics.json",
        code=code("evaluate.calibration_plot"),
    output:
        report(
            f"{EVALUATION}/{tl_plan.CALIBRATION_PLOT}",
            caption="../report/calibration.rst",
            category="Evaluation",
            subcategory="{dataset}/{model} on {data}",
            labels={
                "run": "{dataset}/{model} on {data}",
                "figure": "covariance calibration",
            },
        ),
    log:
        "results/{dataset}/logs/calibration_plot/{model}/{data}.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=10,
    shell:
        "python -m tracklstm.evaluate.calibration_plot --model {input.model}"
        " --windows {input.windows} --metrics {input.metrics} --out {output}"
        " --threads {threads} 2> {log}"


rule predict_external:
    """Answers of an exported model file (evaluation.external_models) to the challenge-format
    test inputs of dataset {data}."""
    input:
        model=lambda w: EXTERNAL_MODELS[w.ext],
        inputs="results/{data}/challenge/test_inputs.csv",
        code=code("evaluate.predict"),
    output:
        f"{EXTERNAL}/challenge_predictions.csv",
    log:
        "results/external/logs/predict/{ext}/{data}.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=stage_settings("predict"),
    shell:
        "python -m tracklstm.evaluate.predict --model {input.model:q} --inputs {input.inputs}"
        " --out {output} --settings {params.settings:q} --threads {threads} 2> {log}"


rule evaluate_external:
    """An exported model file, never trained here, on the test tracks of dataset {data}."""
    input:
        model=lambda w: EXTERNAL_MODELS[w.ext],
        windows="results/{data}/windows.h5",
        challenge_inputs="results/{data}/challenge/test_inputs.csv",
        challenge_answers="results/{data}/challenge/test_answers.csv",
        predictions=f"{EXTERNAL}/challenge_predictions.csv",
        code=code("evaluate"),
    output:
        **EXTERNAL_OUTPUTS,
        metrics=f"{EXTERNAL}/metrics.json",
    log:
        "results/external/logs/evaluate/{ext}/{data}.log",
    benchmark:
        "results/external/benchmarks/evaluate/{ext}/{data}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        out_dir=subpath(output.metrics, parent=True),
        settings=stage_settings("evaluate"),
    shell:
        "python -m tracklstm.evaluate --model {input.model:q} --windows {input.windows}"
        " --out {params.out_dir}"
        " --challenge-inputs {input.challenge_inputs}"
        " --challenge-answers {input.challenge_answers}"
        " --challenge-predictions {input.predictions}"
        " --model-name external/{wildcards.ext} --data-name {wildcards.data}"
        " --settings {params.settings:q} --threads {threads} 2> {log}"


rule quality_table:
    """The data-quality summaries of a dataset's CSV parts as one table."""
    input:
        quality=lambda w: tl_plan.quality_jsons(config, w.dataset),
        code=code("evaluate.quality"),
    output:
        report(
            "results/{dataset}/quality/summary.html",
            caption="../report/quality.rst",
            category="Data quality",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "data quality"},
        ),
    log:
        "results/{dataset}/logs/quality_table.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    shell:
        "python -m tracklstm.evaluate.quality --out {output} --dataset {wildcards.dataset}"
        " {input.quality} 2> {log}"


rule models_table:
    """Every built model on dataset {dataset} beside the physics baselines (straight line,
    helix, the field map's floor): RMS of x, y, px, py, pz and the challenge score, one row
    each; the report's front page shows it."""
    input:
        metrics=lambda w: [
            f"results/{w.dataset}/{m}/evaluation/{w.dataset}/metrics.json"
            for m in config["build"]["models"]
        ],
        code=code("evaluate.compare"),
    output:
        table=report(
            "results/{dataset}/summary/models.html",
            caption="../report/models.rst",
            category="Summary",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "models against physics"},
        ),
        fragment="results/{dataset}/summary/models_table.html",
        csv="results/{dataset}/summary/models.csv",
        markdown="results/{dataset}/summary/models.md",
    log:
        "results/{dataset}/logs/models_table.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=subpath(output.csv, parent=True),
        runs=lambda w, input: " ".join(
            shlex.quote(str(Path(f).parent)) for f in input.metrics
        ),
        labels=" ".join(config["build"]["models"]),
    shell:
        "python -m tracklstm.evaluate.compare {params.runs} --out {params.out_dir} --models-table"
        " --labels {params.labels} 2> {log}"


rule compare:
    """Several evaluated models side by side (config `compare:`): one table, overlaid loss
    curves and residual widths."""
    input:
        metrics=lambda w: [
            f"{folder}/metrics.json"
            for folder, _ in tl_plan.compare_runs(config, w.comparison)
        ],
        code=code("evaluate.compare"),
    output:
        table=report(
            "results/compare/{comparison}/metrics.html",
            caption="../report/compare_table.rst",
            category="Comparisons",
            subcategory="{comparison}",
            labels={"comparison": "{comparison}", "figure": "metrics table"},
        ),
        csv="results/compare/{comparison}/metrics.csv",
        markdown="results/compare/{comparison}/metrics.md",
        loss_curves=report(
            "results/compare/{comparison}/loss_curves.png",
            caption="../report/compare_loss_curves.rst",
            category="Comparisons",
            subcategory="{comparison}",
            labels={"comparison": "{comparison}", "figure": "loss curves"},
        ),
        widths=report(
            "results/compare/{comparison}/residual_widths.png",
            caption="../report/compare_widths.rst",
            category="Comparisons",
            subcategory="{comparison}",
            labels={"comparison": "{comparison}", "figure": "residual widths"},
        ),
    log:
        "results/compare/logs/{comparison}.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out_dir=subpath(output.csv, parent=True),
        runs=lambda w: " ".join(
            shlex.quote(f) for f, _ in tl_plan.compare_runs(config, w.comparison)
        ),
        labels=lambda w: " ".join(
            shlex.quote(lab) for _, lab in tl_plan.compare_runs(config, w.comparison)
        ),
    shell:
        "python -m tracklstm.evaluate.compare {params.runs} --out {params.out_dir}"
        " --labels {params.labels} 2> {log}"


rule simulator_vs_real:
    """The simulator against real tracks: each real origin propagated {params.draws} times with
    the simulator's material, the real plane-24 state judged against the draws (chi2, pulls,
    95 % region, momentum loss and spectrum). A simulated dataset is judged on the real tracks
    shipped with the package, a real one on its own first tracks."""
    input:
        tracks=lambda w: (
            [] if tl_plan.is_simulated(config, w.dataset) else parquet_parts(w)
        ),
        code=code("evaluate.sim_vs_real"),
    output:
        json="results/{dataset}/simulator/vs_real.json",
        plot=report(
            "results/{dataset}/simulator/vs_real.png",
            caption="../report/sim_vs_real.rst",
            category="Simulator",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "simulator against real tracks"},
        ),
    log:
        "results/{dataset}/logs/simulator_vs_real.log",
    conda:
        "../envs/tracklstm.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        draws=config["simulator_check"]["draws"],
        real=lambda w, input: (
            f"--tracks-parquet {' '.join(shlex.quote(f) for f in input.tracks)}"
            f" --max-tracks {config['simulator_check']['real_tracks']}"
            if input.tracks
            else ""
        ),
    shell:
        "python -m tracklstm.evaluate.sim_vs_real --out-json {output.json}"
        " --out-plot {output.plot} --draws {params.draws} {params.real} 2> {log}"


rule track_fit:
    """A Kalman-filter fit of the simulated test tracks (x, y measured at planes 1-24) with the
    same filter and three propagators: the field map, the helix and the model's own state,
    Jacobian and covariance; momentum resolution, pulls, fit chi2 and time per track."""
    input:
        windows="results/{dataset}/windows.h5",
        model="results/{dataset}/{model}/model.ts",
        code=code("evaluate.track_fit"),
    output:
        json="results/{dataset}/{model}/track_fit/fit.json",
        plot=report(
            "results/{dataset}/{model}/track_fit/fit.png",
            caption="../report/track_fit.rst",
            category="Track fit",
            subcategory="{dataset}",
            labels={"model": "{model}", "figure": "Kalman-filter track fit"},
        ),
    log:
        "results/{dataset}/logs/track_fit/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/track_fit/{model}.tsv"
    conda:
        "../envs/tracklstm.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        tracks=config["track_fit"]["tracks"],
        resolution=config["track_fit"]["resolution_cm"],
    shell:
        "python -m tracklstm.evaluate.track_fit --windows {input.windows} --model {input.model}"
        " --out-json {output.json} --out-plot {output.plot} --tracks {params.tracks}"
        " --resolution {params.resolution} --threads {threads} 2> {log}"
