import re
import shlex

# Evaluation: every model on its own dataset's test tracks and on the datasets listed in its
# `evaluation.also_on`; exported model files (`evaluation.external_models`) without training;
# the data-quality tables; comparisons (`compare:`). Every output a person looks at is marked
# for `snakemake --report report.html`, with a caption from workflow/report/.

EXTERNAL_MODELS = dict((config.get("evaluation") or {}).get("external_models") or {})
COMPARE = dict(config.get("compare") or {})


def _choice(names):
    """A wildcard constraint matching exactly one of ``names`` (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    data=_choice(DATASETS),
    ext=_choice(EXTERNAL_MODELS),
    comparison=_choice(COMPARE),


def evaluated_on(dataset, model):
    """The datasets a model trained on ``dataset`` is evaluated on: its own, then also_on."""
    extra = section("evaluation", dataset, model).get("also_on") or []
    return [dataset] + [d for d in extra if d != dataset]


def external_data():
    """The datasets the external models are evaluated on."""
    extra = (config.get("evaluation") or {}).get("also_on") or []
    return list(dict.fromkeys([*config["build"]["datasets"], *extra]))


def compare_runs(name):
    """(evaluation folder, label) of each run of comparison ``name``."""
    runs = []
    for r in COMPARE[name]:
        if "external" in r:
            folder = f"results/external/{r['external']}/evaluation/{r['data']}"
            label = f"external/{r['external']} on {r['data']}"
        else:
            data = r.get("data", r["dataset"])
            folder = f"results/{r['dataset']}/{r['model']}/evaluation/{data}"
            label = f"{r['dataset']}/{r['model']} on {data}"
        runs.append((folder, r.get("label") or label))
    return runs


def _check_evaluation_config():
    """Names in `also_on`, `compare` and the reserved result folders, checked before any job."""
    for reserved in ("external", "compare"):
        if reserved in DATASETS:
            raise WorkflowError(
                f"datasets: {reserved!r} is a reserved name (results/{reserved}/ holds "
                "evaluations of external models and comparisons)"
            )
    for ds in DATASETS:
        for model in MODELS:
            for data in section("evaluation", ds, model).get("also_on") or []:
                if data not in DATASETS:
                    raise WorkflowError(
                        f"evaluation.also_on (dataset {ds}, model {model}): {data!r} is not a "
                        f"dataset (known: {', '.join(DATASETS)})"
                    )
    for name, runs in COMPARE.items():
        for i, r in enumerate(runs):
            where = f"compare.{name}[{i}]"
            for key, known in (
                ("dataset", DATASETS),
                ("data", DATASETS),
                ("model", MODELS),
                ("external", list(EXTERNAL_MODELS)),
            ):
                if key in r and r[key] not in known:
                    raise WorkflowError(
                        f"{where}.{key}: {r[key]!r} is not one of: {', '.join(known) or '(none)'}"
                    )


_check_evaluation_config()

# Every file of one evaluation folder: output name -> (file, caption, figure label).
EVALUATION_FILES = {
    "summary": ("summary.html", "summary.rst", "metrics table"),
    "residuals": ("residuals.png", "residuals.rst", "residuals"),
    "truth_vs_prediction": (
        "truth_vs_prediction.png",
        "truth_vs_prediction.rst",
        "truth vs prediction",
    ),
    "per_plane": ("resolution_per_plane.png", "resolution_per_plane.rst", "per plane"),
    "vs_momentum": (
        "resolution_vs_momentum.png",
        "resolution_vs_momentum.rst",
        "vs |p|",
    ),
    "vs_pt": ("resolution_vs_pt.png", "resolution_vs_momentum.rst", "vs pt"),
    "walk": ("walk.png", "walk.rst", "walking a track"),
    "loss_curves": ("loss_curves.png", "loss_curves.rst", "loss curves"),
}


def evaluation_outputs(folder, run, loss_curves=True):
    """The outputs of an evaluation rule, marked for the report (``run`` names it there)."""
    out = {"metrics": f"{folder}/metrics.json"}
    for key, (file, caption, figure) in EVALUATION_FILES.items():
        if key == "loss_curves" and not loss_curves:
            continue
        out[key] = report(
            f"{folder}/{file}",
            caption=f"../report/{caption}",
            category="Evaluation",
            subcategory=run,
            labels={"run": run, "figure": figure},
        )
    return out


def evaluation_files(folder, loss_curves=True):
    files = [f"{folder}/metrics.json"]
    for key, (file, _, _) in EVALUATION_FILES.items():
        if key != "loss_curves" or loss_curves:
            files.append(f"{folder}/{file}")
    return files


COMPARE_FILES = ("metrics.html", "metrics.csv", "metrics.md", "loss_curves.png", "residual_widths.png")


def evaluation_targets():
    """What rule `all` builds of this file: evaluations, quality tables, comparisons."""
    targets, datasets = [], []
    for ds in config["build"]["datasets"]:
        for model in config["build"]["models"]:
            for data in evaluated_on(ds, model):
                targets += evaluation_files(f"results/{ds}/{model}/evaluation/{data}")
                datasets.append(data)
    for ext in EXTERNAL_MODELS:
        for data in external_data():
            targets += evaluation_files(f"results/external/{ext}/evaluation/{data}", False)
            datasets.append(data)
    for ds in dict.fromkeys([*config["build"]["datasets"], *datasets]):
        targets.append(f"results/{ds}/quality/summary.html")
    for name in COMPARE:
        targets += [f"results/compare/{name}/{f}" for f in COMPARE_FILES]
    return targets


def evaluation_args(wildcards, model=None):
    """The evaluation settings of the evaluated dataset (and model variant) as CLI options."""
    ev = section("evaluation", wildcards.data, model)
    return (
        f"--bins {ev['bins']} --momentum-bins {ev['momentum_bins']}"
        f" --helix-field {shlex.quote(as_json(ev['helix_field']))}"
    )


rule evaluate:
    """A trained model on the test tracks of dataset {data}: residuals, baselines, walking,
    challenge score, loss curves."""
    input:
        model="results/{dataset}/{model}/model.ts",
        windows="results/{data}/windows.h5",
        metrics="results/{dataset}/{model}/metrics.csv",
        challenge_inputs="results/{data}/challenge/test_inputs.csv",
        challenge_answers="results/{data}/challenge/test_answers.csv",
        predictions="results/{dataset}/{model}/evaluation/{data}/challenge_predictions.csv",
        code=code("evaluate"),
    output:
        **evaluation_outputs(
            "results/{dataset}/{model}/evaluation/{data}", "{dataset}/{model} on {data}"
        ),
    log:
        "results/{dataset}/logs/evaluate/{model}/{data}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate/{model}/{data}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        out_dir=subpath(output.metrics, parent=True),
        settings=lambda w: evaluation_args(w, w.model),
    shell:
        "{PYTHON} -m tracklstm.evaluate --model {input.model} --windows {input.windows}"
        " --out {params.out_dir} --metrics-csv {input.metrics}"
        " --challenge-inputs {input.challenge_inputs}"
        " --challenge-answers {input.challenge_answers}"
        " --challenge-predictions {input.predictions}"
        " --model-name {wildcards.dataset}/{wildcards.model} --data-name {wildcards.data}"
        " {params.settings} --threads {threads} 2> {log}"


rule predict_external:
    """Answers of an exported model file (evaluation.external_models) to the challenge-format
    test inputs of dataset {data}."""
    input:
        model=lambda w: EXTERNAL_MODELS[w.ext],
        inputs="results/{data}/challenge/test_inputs.csv",
        code=code("predict"),
    output:
        "results/external/{ext}/evaluation/{data}/challenge_predictions.csv",
    log:
        "results/external/logs/predict/{ext}/{data}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PYTHON} -m tracklstm.predict --model {input.model:q} --inputs {input.inputs}"
        " --out {output} --threads {threads} 2> {log}"


rule evaluate_external:
    """An exported model file, never trained here, on the test tracks of dataset {data}."""
    input:
        model=lambda w: EXTERNAL_MODELS[w.ext],
        windows="results/{data}/windows.h5",
        challenge_inputs="results/{data}/challenge/test_inputs.csv",
        challenge_answers="results/{data}/challenge/test_answers.csv",
        predictions="results/external/{ext}/evaluation/{data}/challenge_predictions.csv",
        code=code("evaluate"),
    output:
        **evaluation_outputs(
            "results/external/{ext}/evaluation/{data}",
            "external/{ext} on {data}",
            loss_curves=False,
        ),
    log:
        "results/external/logs/evaluate/{ext}/{data}.log",
    benchmark:
        "results/external/benchmarks/evaluate/{ext}/{data}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        out_dir=subpath(output.metrics, parent=True),
        settings=lambda w: evaluation_args(w),
    shell:
        "{PYTHON} -m tracklstm.evaluate --model {input.model:q} --windows {input.windows}"
        " --out {params.out_dir}"
        " --challenge-inputs {input.challenge_inputs}"
        " --challenge-answers {input.challenge_answers}"
        " --challenge-predictions {input.predictions}"
        " --model-name external/{wildcards.ext} --data-name {wildcards.data}"
        " {params.settings} --threads {threads} 2> {log}"


rule quality_table:
    """The data-quality summaries of a dataset's CSV parts as one table."""
    input:
        quality=lambda w: expand(
            "results/{dataset}/quality/{part}.json",
            dataset=w.dataset,
            part=tl_settings.raw_parts(config, w.dataset),
        ),
        code=code("evaluate"),
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
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    shell:
        "{PYTHON} -m tracklstm.evaluate quality --out {output} --dataset {wildcards.dataset}"
        " {input.quality} 2> {log}"


rule compare:
    """Several evaluated models side by side (config `compare:`): one table, overlaid loss
    curves and residual widths."""
    input:
        metrics=lambda w: [f"{folder}/metrics.json" for folder, _ in compare_runs(w.comparison)],
        code=code("compare"),
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
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out_dir=subpath(output.csv, parent=True),
        runs=lambda w: " ".join(shlex.quote(f) for f, _ in compare_runs(w.comparison)),
        labels=lambda w: " ".join(shlex.quote(lab) for _, lab in compare_runs(w.comparison)),
    shell:
        "{PYTHON} -m tracklstm.compare {params.runs} --out {params.out_dir}"
        " --labels {params.labels} 2> {log}"
