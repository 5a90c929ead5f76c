"""Which evaluations the workflow runs and where their files go.

Used by ``workflow/rules/evaluate.smk`` (and rule ``all``); light on imports so that Snakemake
parses the workflow quickly. A trained model ``<dataset>/<model>`` is evaluated on its own
dataset and on every dataset in its ``evaluation.also_on``, into
``results/<dataset>/<model>/evaluation/<data>/``; an exported model file listed under the
top-level ``evaluation.external_models`` is evaluated on every dataset of ``build.datasets`` and
the top-level ``evaluation.also_on``, into ``results/external/<name>/evaluation/<data>/``; a
comparison under ``compare:`` goes to ``results/compare/<name>/``.
"""

from __future__ import annotations

import re
from typing import Any

from tracklstm.settings import comparisons, external_models, raw_parts, resolve_section

#: Files of one evaluation folder (besides metrics.json): output name -> (file, caption file in
#: workflow/report/, label of the figure in the report).
EVALUATION_FILES: dict[str, tuple[str, str, str]] = {
    "summary": ("summary.html", "summary.rst", "metrics table"),
    "residuals": ("residuals.png", "residuals.rst", "residuals"),
    "truth_vs_prediction": (
        "truth_vs_prediction.png",
        "truth_vs_prediction.rst",
        "truth vs prediction",
    ),
    "per_plane": ("resolution_per_plane.png", "resolution_per_plane.rst", "per plane"),
    "vs_momentum": ("resolution_vs_momentum.png", "resolution_vs_momentum.rst", "vs |p|"),
    "vs_pt": ("resolution_vs_pt.png", "resolution_vs_momentum.rst", "vs pt"),
    "walk": ("walk.png", "walk.rst", "walking a track"),
    "loss_curves": ("loss_curves.png", "loss_curves.rst", "loss curves"),
}
#: The calibration plot of a model with a covariance head, beside its evaluation's files.
CALIBRATION_PLOT: str = "calibration.png"
#: Files of a comparison folder.
COMPARE_FILES: tuple[str, ...] = (
    "metrics.html",
    "metrics.csv",
    "metrics.md",
    "loss_curves.png",
    "residual_widths.png",
)


def name_pattern(names: Any) -> str:
    """A wildcard constraint matching exactly one of ``names`` (nothing when there are none)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def evaluated_on(config: dict[str, Any], dataset: str, model: str) -> list[str]:
    """The datasets a model trained on ``dataset`` is evaluated on: its own, then also_on."""
    extra = resolve_section(config, "evaluation", dataset, model).get("also_on") or []
    return [dataset] + [d for d in extra if d != dataset]


def external_data(config: dict[str, Any]) -> list[str]:
    """The datasets the external model files are evaluated on."""
    extra = (config.get("evaluation") or {}).get("also_on") or []
    return list(dict.fromkeys([*config["build"]["datasets"], *extra]))


def compare_runs(config: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """(evaluation folder, label) of each run of comparison ``name``."""
    runs = []
    for r in comparisons(config)[name]:
        if "external" in r:
            folder = f"results/external/{r['external']}/evaluation/{r['data']}"
            label = f"external/{r['external']} on {r['data']}"
        else:
            data = r.get("data", r["dataset"])
            folder = f"results/{r['dataset']}/{r['model']}/evaluation/{data}"
            label = f"{r['dataset']}/{r['model']} on {data}"
        runs.append((folder, r.get("label") or label))
    return runs


def evaluation_files(folder: str, loss_curves: bool = True) -> list[str]:
    """Every file of an evaluation folder."""
    files = [f"{folder}/metrics.json"]
    for key, (file, _, _) in EVALUATION_FILES.items():
        if key != "loss_curves" or loss_curves:
            files.append(f"{folder}/{file}")
    return files


def is_simulated(config: dict[str, Any], dataset: str) -> bool:
    """Whether the dataset's tracks come from the simulator (not a real file)."""
    return config["datasets"][dataset]["source"] == "simulate"


def has_plain_form(settings: dict[str, Any]) -> bool:
    """Whether a model (its resolved ``model`` settings) has a plain C++ form
    (``tracklstm.export.plain``, rule ``export_plain``): the residual kind with an MLP body."""
    return settings.get("kind") == "residual" and settings.get("body") == "mlp"


def has_covariance_head(settings: dict[str, Any]) -> bool:
    """Whether a model (its resolved ``model`` settings) predicts its covariance (the residual
    kind with ``model.covariance``): its evaluations get the calibration plot (rule
    ``calibration_plot``)."""
    return settings.get("kind") == "residual" and bool(settings.get("covariance"))


def track_fit_models(config: dict[str, Any], dataset: str) -> list[str]:
    """The models of the build whose track fit (rule ``track_fit``) runs on ``dataset``: a
    simulated dataset, one-state models (``history: 0``) with a covariance head."""
    if not is_simulated(config, dataset):
        return []
    out = []
    for model in config["build"]["models"]:
        settings = resolve_section(config, "model", dataset, model)
        # one-state: models.build.one_state (not imported: the Snakefile's parse needs no torch)
        one_state = settings.get("history") == 0
        if has_plain_form(settings) and has_covariance_head(settings) and one_state:
            out.append(model)
    return out


def quality_jsons(config: dict[str, Any], dataset: str) -> list[str]:
    """The data-quality summaries of a dataset's CSV parts."""
    return [f"results/{dataset}/quality/{part}.json" for part in raw_parts(config, dataset)]


def targets(config: dict[str, Any]) -> list[str]:
    """What rule `all` builds of the evaluation: evaluations, quality tables, comparisons."""
    out: list[str] = []
    evaluated: list[str] = []
    for ds in config["build"]["datasets"]:
        for model in config["build"]["models"]:
            for data in evaluated_on(config, ds, model):
                folder = f"results/{ds}/{model}/evaluation/{data}"
                out += evaluation_files(folder)
                if has_covariance_head(resolve_section(config, "model", ds, model)):
                    out.append(f"{folder}/{CALIBRATION_PLOT}")
                evaluated.append(data)
    for ext in external_models(config):
        for data in external_data(config):
            out += evaluation_files(f"results/external/{ext}/evaluation/{data}", False)
            evaluated.append(data)
    for ds in dict.fromkeys([*config["build"]["datasets"], *evaluated]):
        out.append(f"results/{ds}/quality/summary.html")
    for ds in config["build"]["datasets"]:
        out.append(f"results/{ds}/summary/models.html")
        out += [f"results/{ds}/simulator/vs_real.{ext}" for ext in ("png", "json")]
        for model in track_fit_models(config, ds):
            out += [f"results/{ds}/{model}/track_fit/fit.{ext}" for ext in ("png", "json")]
    for name in comparisons(config):
        out += [f"results/compare/{name}/{f}" for f in COMPARE_FILES]
    return out
