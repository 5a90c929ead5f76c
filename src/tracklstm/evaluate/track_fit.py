"""A Kalman-filter track fit with three propagators: the field map, the helix, the learned one.

``python -m tracklstm.evaluate.track_fit``, rule ``track_fit`` (simulated datasets, one-state
models with a covariance head: ``history: 0``, ``covariance: true``).

The test tracks of a simulated dataset (their true states at planes 1-24) are measured in x, y
at every plane with a Gaussian resolution (``track_fit.resolution_cm``, 0.02 cm). Each track is
fitted by a forward extended Kalman filter and a Rauch-Tung-Striebel smoother back to plane 1
(``evaluate.kalman``), the same code for the three propagators; only the step (next state, its
Jacobian J, its process noise Q) differs:

- field map: the simulator's Runge-Kutta in its field, minus the mean energy loss of the plane's
  layer and the gas; J by central differences; Q = J diag(0, 0, s^2, s^2, 0) J^T with s the rms
  momentum kick of the plane's layer (Highland with the single-scattering tail): the physics
  reference;
- helix: the nominal 2 T helix with the same mean loss and Q; J exact (autograd);
- learned: the exported model's ``forward_with_covariance`` and ``jacobian``: its state, its J,
  its covariance as Q.

Two passes. The first: an extended filter from a seed (the first measurement, the true momentum
smeared by 5 %, with a prior that keeps it from running away on the first few measurements);
the second: linearized on the trajectory from the first's smoothed plane-1 state, a linear
filter and smoother of the departures from it, with a weak prior (ten times wider) on the seed,
so that the fit is the measurements' alone and the prior is counted once. (The second pass was
an extended filter from the first's result with the seed's prior until 2026-12-07: that counts
the measurements twice and made every fit's momentum pulls 1.2-1.25, the field map's too.)
Reported per propagator: the resolution of x, y, px, py, pz and of |p| at plane 1 (rms of fit -
truth; for |p| also the core's width, since the few tracks with pt below 0.05 GeV/c, whose tiny
circles hardly measure |p|, set the standard deviation), the pulls of the fitted parameters
(their standard deviation, and the core's width from the median absolute deviation), the
chi2/ndf of the fits (43 degrees of freedom) and the time per track; a JSON file and a figure
(``benchmarks/kalman_fit.py`` runs the same on demand).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracklstm import stage_cli
from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX
from tracklstm.evaluate.gaussian import MAD_TO_SIGMA, core_width
from tracklstm.evaluate.jacobian import field_jacobian, helix_jacobian, model_jacobian
from tracklstm.evaluate.kalman import filter_and_smooth, smooth, update
from tracklstm.evaluate.metrics import load_test_set
from tracklstm.export.loading import has_covariance, load_model, predict_with_covariance
from tracklstm.files import atomic_path, check_outputs, write_json
from tracklstm.physics import material as mat
from tracklstm.physics.baselines import field_only
from tracklstm.physics.helix import helix
from tracklstm.settings import defaults

log = logging.getLogger(__name__)

IDX = list(ANSWER_INDEX)
#: Degrees of freedom of a fit: x and y at 24 planes, 5 parameters.
NDF: int = 2 * 24 - 5
#: The settings (config ``track_fit``): tracks fitted, measurement resolution (cm).
DEFAULTS: dict[str, Any] = defaults("track_fit")
#: A step: (states (N, 6), z_next) -> (next states (N, 6), J (N, 5, 5), Q (N, 5, 5)).
Step = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


class TrackFitError(ValueError):
    """A model that cannot propagate one state with its covariance, or bad settings."""


def plane_layer() -> mat.Layer:
    """The material of one detector plane (the simulator's)."""
    return next(ly for ly in mat.DETECTOR_MATERIAL.layers if ly.name.startswith("FDC plane"))


def mean_loss(states: np.ndarray, dz: float) -> np.ndarray:
    """The plane's layer and the gas over dz: the momentum lost on average (GeV/c), scaled
    along the direction (the propagators without material then lose it too)."""
    p = np.linalg.norm(states[:, 3:], axis=1)
    path = p / states[:, 5]
    beta = p / np.sqrt(p * p + mat.PION_MASS**2)
    layer = plane_layer()
    grams = layer.areal_density * path
    gas = mat.DETECTOR_MATERIAL.gas_density * dz * path
    loss = mat.bethe_mean_loss(layer.medium, grams, p)
    loss += mat.bethe_mean_loss(mat.DETECTOR_MATERIAL.gas, gas, p)
    out = states.copy()
    out[:, 3:] *= (1 - loss / beta / p)[:, None]
    return out


def kick_noise(states: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """Q = J diag(0, 0, s^2, s^2, 0) J^T: the plane's layer kicks px, py at the step's start."""
    p = np.linalg.norm(states[:, 3:], axis=1)
    beta2 = p * p / (p * p + mat.PION_MASS**2)
    layer = plane_layer()
    theta = mat.highland(layer.medium, layer.areal_density * p / states[:, 5], p, beta2)
    s2 = (p * theta) ** 2 * (1 - mat.TAIL_WEIGHT + mat.TAIL_WEIGHT * mat.TAIL_WIDTH**2)
    q0 = np.zeros((len(states), 5, 5))
    q0[:, 2, 2] = q0[:, 3, 3] = s2
    return jac @ q0 @ jac.transpose(0, 2, 1)


def field_step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The physics reference: the field map, the mean loss, Highland noise."""
    zt = np.full(len(states), z)
    nxt = mean_loss(field_only(states, zt), z - states[0, 2])
    jac = field_jacobian(states, zt)
    return nxt, jac, kick_noise(states, jac)


def helix_step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nominal helix with the same mean loss and noise."""
    zt = np.full(len(states), z)
    nxt = mean_loss(helix(states, zt), z - states[0, 2])
    jac = helix_jacobian(states, zt)
    return nxt, jac, kick_noise(states, jac)


def learned_step(model: Any, window_length: int) -> Step:
    """The exported one-state model: its next state, Jacobian and covariance."""

    def step(states: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        windows = np.repeat(states[:, None].astype(np.float32), window_length, axis=1)
        jac = model_jacobian(model, windows)
        nxt, q = predict_with_covariance(model, windows)
        nxt[:, 2] = z
        return nxt, jac, q

    return step


#: The seed's prior (x, y, px, py, pz at plane 1; cm, GeV/c): the first pass's, which keeps
#: the extended filter from running away on the first few measurements.
SEED_PRIOR: np.ndarray = np.diag([0.1, 0.1, 1e-4, 1e-4, 1e-2])
#: The second pass's prior on the seed: ten times wider in each spread than ``SEED_PRIOR``
#: (3 cm, 0.1 GeV/c in px and py, 1 GeV/c in pz), so that the fit is the measurements' alone.
WEAK_PRIOR: np.ndarray = 100.0 * SEED_PRIOR


def fit(
    step: Step, measured: np.ndarray, planes_z: np.ndarray, seed: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first pass: an extended filter from ``seed`` (prior ``SEED_PRIOR``), each step
    linearized on its own estimate, and the smoother: (state at the first plane (N, 6), its
    covariance, chi2). Its result is where the second pass linearizes (``refit``)."""
    n, k = measured.shape[:2]
    x, p = seed[:, IDX].copy(), SEED_PRIOR[None].repeat(n, 0)
    full = seed.copy()
    filt, filt_p, pred, pred_p, jacs = [], [], [], [], []
    chi2 = np.zeros(n)
    for i in range(k):
        if i > 0:
            full[:, IDX] = x
            full, jac, q = step(full, float(planes_z[i]))
            x, p = full[:, IDX].copy(), jac @ p @ jac.transpose(0, 2, 1) + q
            jacs.append(jac)
        pred.append(x)
        pred_p.append(p)
        x, p, c2 = update(x, p, measured[:, i] - x[:, :2], sigma)
        chi2 += c2
        filt.append(x)
        filt_p.append(p)
    xs, ps, _ = smooth(filt, filt_p, pred, pred_p, jacs)
    out = seed.copy()
    out[:, IDX] = xs[0]
    return out, ps[0], chi2


def linearize(
    step: Step, around: np.ndarray, planes_z: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The reference trajectory from ``around`` (N, 6) at the first plane, propagated once to
    each later plane of ``planes_z``, and each step's J and Q along it: (states, Js, Qs)."""
    refs, jacs, qs = [around], [], []
    for z in planes_z[1:]:
        nxt, jac, q = step(refs[-1], float(z))
        refs.append(nxt)
        jacs.append(jac)
        qs.append(q)
    return refs, jacs, qs


def refit(
    step: Step,
    measured: np.ndarray,
    planes_z: np.ndarray,
    around: np.ndarray,
    seed: np.ndarray,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The second pass: the trajectory that starts at ``around`` (the first pass's state at
    the first plane) is propagated once, each step's J and Q taken along it (``linearize``), and
    a linear filter and smoother fit the departures from it (``evaluate.kalman``);
    the prior is ``seed`` with ``WEAK_PRIOR``, counted once. (Starting a second extended pass
    from the first's result with the seed's prior would count the measurements twice, through
    that prior, and make the fitted covariance too small: pulls of 1.11-1.15 in the momenta
    with Gaussian noise.) Returns (state at the first plane (N, 6), its covariance, chi2)."""
    refs, jacs, qs = linearize(step, around, planes_z)
    resids = [measured[:, i] - ref[:, :2] for i, ref in enumerate(refs)]
    d0, p0 = (seed - around)[:, IDX], WEAK_PRIOR[None].repeat(len(around), 0)
    ds, ps, _, chi2 = filter_and_smooth(d0, p0, jacs, qs, resids, sigma)
    out = around.copy()
    out[:, IDX] += ds[0]
    return out, ps[0], chi2


def fit_errors(
    fitted: np.ndarray, cov: np.ndarray, truth: np.ndarray, chi2: np.ndarray
) -> dict[str, np.ndarray]:
    """Per track: the error of x, y, px, py, pz, their pulls, the relative |p| error, chi2/ndf."""
    error = fitted[:, IDX] - truth[:, IDX]
    p_fit, p_true = np.linalg.norm(fitted[:, 3:], axis=1), np.linalg.norm(truth[:, 3:], axis=1)
    return {
        "error": error,
        "pulls": error / np.sqrt(np.diagonal(cov, axis1=1, axis2=2)),
        "p_error": (p_fit - p_true) / p_true,
        "chi2_ndf": chi2 / NDF,
    }


def summarize(errors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Resolutions, |p| resolution, pull widths and means, fit chi2/ndf of ``fit_errors``."""
    err, pulls, chi2_ndf = errors["error"], errors["pulls"], errors["chi2_ndf"]
    return {
        "resolution": {
            f: float(np.sqrt(np.mean(err[:, i] ** 2))) for i, f in enumerate(ANSWER_FEATURES)
        },
        "p_resolution_relative": float(np.std(errors["p_error"])),
        # the core's (1.4826 x the median absolute deviation): the standard deviation is set by
        # the few tracks of pt below 0.05 GeV/c, whose tiny circles hardly measure |p|
        "p_resolution_core": float(MAD_TO_SIGMA * np.median(np.abs(errors["p_error"]))),
        "pull_width": {
            f: round(float(pulls[:, i].std()), 3) for i, f in enumerate(ANSWER_FEATURES)
        },
        "pull_mean": {
            f: round(float(pulls[:, i].mean()), 3) for i, f in enumerate(ANSWER_FEATURES)
        },
        # the core's width (1.4826 x the median absolute deviation): a few tracks with a hard
        # scatter or a Landau loss widen the standard deviation, which a Gaussian fit cannot
        # follow
        "pull_width_core": {
            f: round(core_width(pulls[:, i]), 3) for i, f in enumerate(ANSWER_FEATURES)
        },
        "chi2_ndf_mean": round(float(np.mean(chi2_ndf)), 3),
        "chi2_ndf_median": round(float(np.median(chi2_ndf)), 3),
    }


def summary(
    fitted: np.ndarray, cov: np.ndarray, truth: np.ndarray, chi2: np.ndarray
) -> dict[str, Any]:
    """Resolutions, |p| resolution, pull widths and means, fit chi2/ndf of one propagator."""
    return summarize(fit_errors(fitted, cov, truth, chi2))


def run_fits(
    tracks: np.ndarray, model: Any, window_length: int, resolution: float, seed: int = 3
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Fit ``tracks`` (N, 25, 6: origin and planes 1-24) with the three propagators: the summary
    per propagator and, for the figure, each one's relative |p| error, pulls and chi2/ndf."""
    truth = tracks[:, 1:]
    rng = np.random.default_rng(seed)
    measured = truth[:, :, :2] + rng.normal(0, resolution, truth[:, :, :2].shape)
    start = truth[:, 0].copy()
    start[:, :2] = measured[:, 0]
    start[:, 3:] *= 1 + rng.normal(0, 0.05, (len(start), 1))
    steps = {
        "field map": field_step,
        "helix": helix_step,
        "learned": learned_step(model, window_length),
    }
    result: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    planes = truth[0, :, 2]
    for name, step in steps.items():
        t0 = time.perf_counter()
        first, _, _ = fit(step, measured, planes, start, resolution)
        fitted, cov, chi2 = refit(step, measured, planes, first, start, resolution)
        seconds = time.perf_counter() - t0
        arrays[name] = fit_errors(fitted, cov, truth[:, 0], chi2)
        result[name] = summarize(arrays[name])
        result[name]["ms_per_track"] = round(1000 * seconds / len(truth), 2)
        log.info("%s: |p| resolution %.2f %%, fit chi2/ndf %.2f, %.1f ms per track",
                 name, 100 * result[name]["p_resolution_relative"],
                 result[name]["chi2_ndf_mean"], result[name]["ms_per_track"])  # fmt: skip
    ref = result["field map"]
    for name in result:
        res = result[name]
        res["p_resolution_over_field_map"] = round(
            res["p_resolution_relative"] / ref["p_resolution_relative"], 3
        )
        res["p_resolution_core_over_field_map"] = round(
            res["p_resolution_core"] / ref["p_resolution_core"], 3
        )
    return result, arrays


def plot(arrays: dict[str, dict[str, np.ndarray]], result: dict[str, Any], path: Path) -> None:
    """|p| error, pull widths and chi2/ndf of the three fits, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = {"field map": "black", "helix": "tab:orange", "learned": "tab:blue"}
    width = max(float(np.percentile(np.abs(a["p_error"]), 97)) for a in arrays.values())
    bins = np.linspace(-width, width, 50)
    for name, a in arrays.items():
        std, core = (100 * result[name][k] for k in ("p_resolution_relative", "p_resolution_core"))
        axes[0].hist(a["p_error"], bins=bins, histtype="step", color=colors[name], lw=1.5,
                     label=f"{name}: core {core:.2f} %, std {std:.2f} %")  # fmt: skip
    axes[0].set(xlabel="fitted |p| at plane 1: (fit - true) / true", ylabel="tracks",
                title="momentum resolution")  # fmt: skip
    axes[0].legend(fontsize=9)
    x = np.arange(len(ANSWER_FEATURES))
    for k, name in enumerate(arrays):
        widths = [result[name]["pull_width"][f] for f in ANSWER_FEATURES]
        axes[1].bar(x + (k - 1) * 0.27, widths, 0.27, color=colors[name], label=name)
    axes[1].axhspan(0.9, 1.1, color="green", alpha=0.12, label="1.00 +- 0.10")
    axes[1].set(xticks=x, xticklabels=list(ANSWER_FEATURES), ylabel="pull width (std)",
                title="pulls of the fitted state at plane 1")  # fmt: skip
    axes[1].legend(fontsize=9)
    top = max(float(np.percentile(a["chi2_ndf"], 99)) for a in arrays.values())
    for name, a in arrays.items():
        axes[2].hist(a["chi2_ndf"], bins=np.linspace(0, max(top, 2.0), 40), histtype="step",
                     color=colors[name], lw=1.5,
                     label=f"{name}: mean {result[name]['chi2_ndf_mean']:.2f}")  # fmt: skip
    axes[2].axvline(1.0, color="gray", ls=":")
    axes[2].set(xlabel=f"fit chi2 / ndf (ndf {NDF})", ylabel="tracks", title="fit quality")
    axes[2].legend(fontsize=9)
    fig.suptitle("Kalman-filter fit of the test tracks, three propagators, same filter")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def track_fit(
    windows: str | Path,
    model_path: str | Path,
    out_json: str | Path,
    out_plot: str | Path,
    tracks: int = DEFAULTS["tracks"],
    resolution: float = DEFAULTS["resolution_cm"],
) -> dict[str, Any]:
    """Fit the first ``tracks`` complete test tracks of ``windows`` three ways; write both files."""
    model, meta = load_model(model_path)
    if not has_covariance(model) or (meta.get("model") or {}).get("history") != 0:
        raise TrackFitError(
            f"{model_path}: the track fit needs a one-state model with a covariance head "
            "(model.history: 0, model.covariance: true)"
        )
    test = load_test_set(windows, int(meta["window_length"])).tracks.astype(np.float64)
    test = test[np.isfinite(test).all(axis=(1, 2))][:tracks]
    if len(test) < 2:
        raise TrackFitError(f"{windows}: fewer than 2 complete test tracks")
    result, arrays = run_fits(test, model, int(meta["window_length"]), resolution)
    record = {"tracks": len(test), "resolution_cm": resolution, "ndf": NDF, "result": result}
    plot(arrays, result, Path(out_plot))
    write_json(out_json, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("tracklstm track-fit", __doc__)
    parser.add_argument("--windows", required=True, help="windows.h5 of a simulated dataset")
    parser.add_argument("--model", required=True, help="the model's model.ts")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-plot", required=True)
    parser.add_argument("--tracks", type=int, default=DEFAULTS["tracks"])
    parser.add_argument("--resolution", type=float, default=DEFAULTS["resolution_cm"],
                        help="measurement resolution in x and y (cm)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's)")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.tracks < 2 or not args.resolution > 0:
            raise TrackFitError("--tracks must be >= 2 and --resolution > 0")
        check_outputs({"--out-json": args.out_json, "--out-plot": args.out_plot},
                      {"--windows": args.windows, "--model": args.model})  # fmt: skip
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        track_fit(args.windows, args.model, args.out_json, args.out_plot, args.tracks,
                  args.resolution)  # fmt: skip

    return stage_cli.run(body, log, errors=(TrackFitError,))


if __name__ == "__main__":
    raise SystemExit(main())
