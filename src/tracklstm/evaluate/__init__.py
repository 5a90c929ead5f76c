"""Stage 6: evaluate an exported model on held-out test tracks: numbers, plots and baselines.

The model is loaded the way its users load it (``tracklstm.export.loading.load_model``: the
TorchScript file, or another exported format) and fed physical units, so any exported model file
can be evaluated on any dataset's ``windows.h5``; only the test split (tracks never used for
training or model selection) is read. Besides the network's one-step residuals it computes the
same numbers for the propagations without a network (``tracklstm.physics.baselines``), walks
test tracks plane by plane on the model's own predictions, scores the challenge-format test file
and writes everything to ``metrics.json``, a table (``summary.html``) and PNG plots.

The package's modules:

- ``predict``: challenge-format answers of an exported model (``python -m tracklstm.predict``);
- ``methods``: the network and the baselines every evaluation compares, by name;
- ``metrics``: the numbers (test set, residual statistics, scores, walks, ratios, verdicts);
- ``real_track``: the real track shipped with the package, and a model's score on it;
- ``plots``: every figure (``feature_grid``: the 2x3 grid, one panel per state variable);
- ``report``: the HTML pieces and ``summary.html`` (shared with ``compare``);
- ``run``: ``evaluate``, one evaluation step by step;
- ``cli``: the ``tracklstm evaluate`` command (``python -m tracklstm.evaluate``);
- ``quality``: the data-quality table of a dataset (``python -m tracklstm.evaluate.quality``);
- ``compare``: several evaluations side by side, and every model against physics
  (``python -m tracklstm.compare``).
"""
