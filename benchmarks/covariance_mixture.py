"""What the tails need: a scale mixture of the predicted covariance, fitted and judged.

A model's covariance C describes the second moment of its errors, and the errors have far
heavier tails than a Gaussian (a hard collision takes a thousand times the median loss in one
step): inside C's 68.3 % region lie 88 % of the windows, not 68.3 %. A Gaussian-sum filter would
describe each step's noise as a few Gaussians of the same shape, s_k C with weights w_k. This
benchmark measures how many such components the errors need (the fitting is
``tracklstm.models.scale_mixture``'s):

- the chi2 = e^T C^-1 e of the validation windows (windows the head never learned on) under the
  model's C; for K = 1, 2, 3 components, the weights w_k and scales s_k of chi2 ~ sum_k w_k s_k
  chi2(5 dof), fitted by expectation-maximization;
- on the test windows: the share inside each fitted model's 68.3 %, 95 % and 99 % regions (for a
  mixture of one shape, the region of content q is chi2 below the q-quantile of the mixture),
  the mean log-likelihood of chi2 per window (higher is better), and the deciles of the
  probability integral transform (0.1, 0.2, ... if calibrated);
- the fit the Bayesian information criterion chooses (``models.scale_mixture.fit_scale_mixture``,
  what the training stage stores in a model: ``chosen_by_bic``), and the model's own stored one
  (``stored_in_model``, from the file's metadata), judged the same way.

    PYTHONPATH=src python benchmarks/covariance_mixture.py \\
        [--model results/demo/residual_markov/model.ts] [--windows results/demo/windows.h5]

With ``bench_residual_full.py --keep DIR``: ``--model DIR/results/full/residual_markov/model.ts
--windows DIR/results/full/windows.h5``. Results: ``benchmarks/results/covariance_mixture.json``
(one entry per dataset, named by the windows file's folder: ``demo``, ``full``; with the machine).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import add_model_and_windows, record_per_dataset  # noqa: E402

from tracklstm.evaluate.calibration import errors_and_covariances  # noqa: E402
from tracklstm.evaluate.gaussian import chi2_of  # noqa: E402
from tracklstm.evaluate.metrics import load_model, load_test_set  # noqa: E402
from tracklstm.models.scale_mixture import (  # noqa: E402
    NDF,
    fit_components,
    fit_scale_mixture,
    mixture_cdf,
    mixture_loglik,
)

log = logging.getLogger("covariance_mixture")
RESULTS = ROOT / "benchmarks" / "results" / "covariance_mixture.json"
LEVELS = (0.683, 0.95, 0.99)


def judge(x: np.ndarray, w: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """Coverage, mean log-likelihood and PIT deciles of ``x`` under the mixture."""
    pit = mixture_cdf(x, w, s)
    return {
        "coverage": {str(q): round(float(np.mean(pit < q)), 4) for q in LEVELS},
        "mean_loglik": round(float(mixture_loglik(x, w, s).mean()), 4),
        "pit_deciles": [round(float(v), 3) for v in np.quantile(pit, np.linspace(0.1, 0.9, 9))],
    }


def chi2_values(model: Any, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    errors, covs, _ = errors_and_covariances(model, inputs, targets)
    chi2, positive = chi2_of(errors, covs)
    if not positive.all():
        log.warning("%d covariances not positive definite, left out", int((~positive).sum()))
    return chi2


def measure(model_path: Path, windows: Path, components: int) -> dict[str, Any]:
    model, meta = load_model(model_path)
    with h5py.File(windows, "r") as h5:
        val_in, val_out = h5["validation/inputs"][...], h5["validation/targets"][...]
    test = load_test_set(windows, int(meta["window_length"]))
    fit_x = chi2_values(model, val_in, val_out)
    test_x = chi2_values(model, test.inputs, test.targets)
    log.info("%d validation and %d test windows", len(fit_x), len(test_x))
    out: dict[str, Any] = {
        "model": str(model_path),
        "windows": str(windows),
        "validation_windows": len(fit_x),
        "test_windows": len(test_x),
        "test_chi2_ndf_mean": round(float(test_x.mean() / NDF), 4),
        "as_predicted": judge(test_x, np.ones(1), np.ones(1)),
        "chosen_by_bic": None,
        "mixtures": [],
    }
    for k in range(1, components + 1):
        w, s, _ = fit_components(fit_x, k)
        entry = {
            "components": k,
            "weights": [round(float(v), 5) for v in w],
            "scales": [round(float(v), 4) for v in s],
            "second_moment": round(float((w * s).sum()), 4),
            "test": judge(test_x, w, s),
        }
        out["mixtures"].append(entry)
    w, s = fit_scale_mixture(fit_x, components)
    out["chosen_by_bic"] = {"components": len(w), "test": judge(test_x, w, s)}
    stored = meta.get("covariance_mixture")
    if stored:  # what the training stored in the model: the same fit, on the same windows
        out["stored_in_model"] = {
            **stored,
            "test": judge(test_x, np.asarray(stored["weights"]), np.asarray(stored["scales"])),
        }
        log.info("K=%d weights %s scales %s: test %s", k, entry["weights"], entry["scales"],
                 entry["test"]["coverage"])  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_windows(parser)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    result = measure(args.model, args.windows, args.components)
    record_per_dataset(args.out, args.windows, result, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
