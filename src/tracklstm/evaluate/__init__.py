"""Stage 6: evaluate an exported model on held-out test tracks: numbers, plots and baselines.

The model is loaded the way its users load it (``tracklstm.artifacts.load_model``: the
TorchScript file, or another exported format) and fed physical units, so any exported model file
can be evaluated on any dataset's ``windows.h5``; only the test split (tracks never used for
training or model selection) is read. Besides the network's one-step residuals it computes the
same numbers for two propagations without a network (``tracklstm.baselines``), walks test tracks
plane by plane on the model's own predictions, scores the challenge-format test file and writes
everything to ``metrics.json``, a table (``summary.html``) and PNG plots.

The package's modules:

- ``metrics``: the numbers (test set, residual statistics, scores, walks, ratios, verdicts);
- ``plots``: every figure (``feature_grid``: the 2x3 grid, one panel per state variable);
- ``report``: the HTML pieces and ``summary.html`` (shared with ``tracklstm.compare``);
- ``quality``: the data-quality table of a dataset (``tracklstm evaluate quality``);
- ``run``: ``evaluate``, one evaluation step by step;
- ``cli``: the ``tracklstm evaluate`` command (``python -m tracklstm.evaluate``).
"""

from tracklstm.evaluate.cli import main
from tracklstm.evaluate.metrics import (
    LABELS,
    METHODS,
    EvaluationInputError,
    TestSet,
    binned_by,
    complete_tracks,
    grouped_stats,
    load_model,
    load_test_set,
    read_metrics_csv,
    reconstruct_tracks,
    residual_histograms,
    residual_stats,
    score_challenge_file,
    verdicts,
    walk_baseline,
    walk_network,
    walk_stats,
    window_score,
)
from tracklstm.evaluate.plots import feature_grid, log_axis, plane_axis, save_figure
from tracklstm.evaluate.quality import quality_main, quality_table
from tracklstm.evaluate.report import format_value, html_page, html_table, summary_html
from tracklstm.evaluate.run import evaluate

__all__ = [
    "LABELS",
    "METHODS",
    "EvaluationInputError",
    "TestSet",
    "binned_by",
    "complete_tracks",
    "evaluate",
    "feature_grid",
    "format_value",
    "grouped_stats",
    "html_page",
    "html_table",
    "load_model",
    "load_test_set",
    "log_axis",
    "main",
    "plane_axis",
    "quality_main",
    "quality_table",
    "read_metrics_csv",
    "reconstruct_tracks",
    "residual_histograms",
    "residual_stats",
    "save_figure",
    "score_challenge_file",
    "summary_html",
    "verdicts",
    "walk_baseline",
    "walk_network",
    "walk_stats",
    "window_score",
]
