"""The numbers of an evaluation: test set, residual statistics, scores, walks, ratios, verdicts.

Everything here works on arrays and returns plain numbers, lists and dicts (what goes into
``metrics.json``); nothing draws or writes a page. The model is loaded and run through
``tracklstm.export.loading``, the challenge score is ``tracklstm.data.challenge``'s.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, FEATURES, N_PLANES, PLANE_Z, UNITS
from tracklstm.data.challenge import challenge_score, read_challenge_answers, read_challenge_inputs
from tracklstm.data.checksums import verify_checksums
from tracklstm.data.windows import make_windows
from tracklstm.evaluate.methods import LABELS, METHODS, EvaluationInputError
from tracklstm.export import loading
from tracklstm.export.loading import Model, ModelFileError, predict_windows
from tracklstm.physics.helix import Propagator

log = logging.getLogger(__name__)

#: Windows per model call: the evaluation runs the model batch after batch (one worker).
EVAL_BATCH = 16384


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class TestSet:
    """The test split of a windows file, in physical units."""

    inputs: np.ndarray  # (N, L, 6) float32
    targets: np.ndarray  # (N, 6) float32
    target_plane: np.ndarray  # (N,) int
    track: np.ndarray  # (N,) track row in the dataset
    tracks: np.ndarray  # (T, 25, 6) float32, the test tracks' states, NaN where unknown
    track_ids: np.ndarray  # (T,) track row of each entry of ``tracks``
    attrs: dict[str, Any]


def reconstruct_tracks(
    inputs: np.ndarray, targets: np.ndarray, track: np.ndarray, target_plane: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The states of each track that its windows hold: ``(track_ids, tracks (T, 25, 6))``."""
    ids, inv = np.unique(track, return_inverse=True)
    tracks = np.full((len(ids), N_PLANES, inputs.shape[-1]), np.nan, dtype=np.float32)
    length = inputs.shape[1]
    plane = target_plane.astype(np.int64)
    for j in range(length):
        tracks[inv, plane - length + j] = inputs[:, j]
    tracks[inv, plane] = targets
    return ids, tracks


def load_test_set(windows: str | Path, length: int | None = None) -> TestSet:
    """Read the test split of ``windows``; with ``length`` (the model's window length) different
    from the file's, the test windows are rebuilt from the test tracks with that length."""
    windows = Path(windows)
    if not windows.is_file():
        raise EvaluationInputError(f"{windows}: no such file")
    try:
        with h5py.File(windows, "r") as h5:
            if "test" not in h5:
                raise EvaluationInputError(f"{windows}: no test split")
            g = h5["test"]
            test = {f"test/{n}": g[n][...] for n in ("inputs", "targets", "track", "target_plane")}
            verify_checksums(windows, h5, list(test), loaded=test)
            inputs, targets, track = test["test/inputs"], test["test/targets"], test["test/track"]
            target_plane = test["test/target_plane"].astype(np.int64)
            attrs = {k: h5.attrs[k] for k in h5.attrs}
    except (OSError, KeyError) as err:
        raise EvaluationInputError(f"{windows}: not a readable windows file ({err})") from err
    except ValueError as err:
        raise EvaluationInputError(str(err)) from None
    if len(inputs) == 0:
        raise EvaluationInputError(f"{windows}: the test split is empty")
    if not (np.isfinite(inputs).all() and np.isfinite(targets).all()):
        raise EvaluationInputError(f"{windows}: the test split holds NaN or infinite values")
    ids, tracks = reconstruct_tracks(inputs, targets, track, target_plane)
    if length is not None and length != inputs.shape[1]:
        last = int(attrs.get("last_target_plane", N_PLANES - 1))
        log.info("rebuilding test windows of length %d (the file has %d)", length, inputs.shape[1])
        try:
            inputs, targets, idx, target_plane = make_windows(tracks, length, 1, last)
        except ValueError as err:
            raise EvaluationInputError(f"{windows}: {err}") from err
        if len(inputs) == 0:
            raise EvaluationInputError(f"{windows}: no test window of length {length}")
        track, target_plane = ids[idx], target_plane.astype(np.int64)
    return TestSet(inputs, targets, target_plane, track, tracks, ids, attrs)


def load_model(path: str | Path) -> tuple[Model, dict[str, Any]]:
    """``loading.load_model`` for an evaluation: the metadata may be missing (then empty), and
    a file that is not a model raises EvaluationInputError naming it."""
    try:
        return loading.load_model(path, require_metadata=False)
    except ModelFileError as err:
        raise EvaluationInputError(str(err)) from err


# --------------------------------------------------------------------------------------------
# Residuals and scores


def residual_stats(residuals: np.ndarray) -> dict[str, dict[str, float]]:
    """Per feature: mean, RMS, MAE and the central 68% interval of truth - prediction."""
    stats = {}
    for i, f in enumerate(FEATURES):
        r = residuals[:, i].astype(np.float64)
        q16, q84 = np.percentile(r, [16, 84]) if len(r) else (np.nan, np.nan)
        stats[f] = {
            "mean": float(r.mean()) if len(r) else float("nan"),
            "rms": float(np.sqrt(np.mean(r**2))) if len(r) else float("nan"),
            "mae": float(np.mean(np.abs(r))) if len(r) else float("nan"),
            "q16": float(q16),
            "q84": float(q84),
            "width68": float(q84 - q16),
            "unit": UNITS[f],
        }
    return stats


def residual_histograms(residuals: np.ndarray, bins: int = 100) -> dict[str, dict[str, Any]]:
    """Histogram of each variable's residuals over its central 99% (padded by 10%), with the
    windows outside that range counted as underflow and overflow."""
    out = {}
    for i, f in enumerate(FEATURES):
        r = residuals[:, i]
        lo, hi = np.percentile(r, [0.5, 99.5])
        pad = 0.1 * (hi - lo) if hi > lo else max(abs(lo), 1e-6)
        counts, edges = np.histogram(r, bins=bins, range=(lo - pad, hi + pad))
        out[f] = {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "underflow": int((r < edges[0]).sum()),
            "overflow": int((r > edges[-1]).sum()),
            "unit": UNITS[f],
        }
    return out


def window_score(truth6: np.ndarray, pred6: np.ndarray) -> float:
    """The challenge score of full (n, 6) states (z dropped)."""
    return challenge_score(truth6[:, ANSWER_INDEX], pred6[:, ANSWER_INDEX])


def grouped_stats(
    residuals: np.ndarray, groups: np.ndarray, order: Sequence[Any]
) -> dict[str, Any]:
    """RMS, 68% interval and count of the residuals of each group, as lists in ``order``."""
    out: dict[str, Any] = {"n": []}
    per = {f: {"rms": [], "q16": [], "q84": [], "width68": []} for f in FEATURES}
    for g in order:
        stats = residual_stats(residuals[groups == g])
        out["n"].append(int((groups == g).sum()))
        for f in FEATURES:
            for k in per[f]:
                per[f][k].append(stats[f][k])
    out.update(per)
    return out


def momentum_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges holding about equal numbers of values (fewer bins when values repeat)."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([values.min(), values.max() + 1e-9])
    return edges


def binned_by(
    residuals: Mapping[str, np.ndarray], values: np.ndarray, n_bins: int
) -> dict[str, Any]:
    """Residual statistics of every method in equal-population bins of ``values``."""
    edges = momentum_bins(values, n_bins)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    centers = [
        float(np.median(values[idx == b])) if (idx == b).any() else float("nan")
        for b in range(len(edges) - 1)
    ]
    out: dict[str, Any] = {"edges": edges.tolist(), "centers": centers}
    for method, r in residuals.items():
        out[method] = grouped_stats(r, idx, range(len(edges) - 1))
    return out


# --------------------------------------------------------------------------------------------
# Walking tracks plane by plane


def complete_tracks(tracks: np.ndarray, last_plane: int) -> np.ndarray:
    """The tracks whose states at planes 0..last_plane are all known."""
    return tracks[np.isfinite(tracks[:, : last_plane + 1]).all(axis=(1, 2))]


def walk_network(
    model: Model,
    tracks: np.ndarray,
    length: int,
    last_plane: int = N_PLANES - 1,
    batch: int = EVAL_BATCH,
) -> np.ndarray:
    """Propagate each track from its first ``length`` states to ``last_plane`` on the model's
    own predictions: the prediction for plane k joins the window for plane k + 1.

    Returns (n, last_plane + 1, 6): the true first ``length`` states, then the predictions.
    """
    states = np.array(tracks[:, : last_plane + 1], dtype=np.float32)
    for plane in range(length, last_plane + 1):
        window = states[:, plane - length : plane]
        states[:, plane] = predict_windows(model, window, batch, workers=1)
    return states


def walk_baseline(
    propagate: Propagator, tracks: np.ndarray, start: int, last_plane: int = N_PLANES - 1
) -> np.ndarray:
    """Step a baseline from plane ``start - 1`` to ``last_plane`` one plane at a time, each step
    from the previous prediction to the true z of the next plane."""
    states = np.array(tracks[:, : last_plane + 1], dtype=np.float64)
    for plane in range(start, last_plane + 1):
        states[:, plane] = propagate(states[:, plane - 1], tracks[:, plane, 2])
    return states


def walk_stats(
    walks: Mapping[str, np.ndarray], tracks: np.ndarray, start: int, last_plane: int
) -> dict[str, Any]:
    """RMS and 68% width per variable and the challenge score at every step of each walk."""
    planes = list(range(start, last_plane + 1))
    out: dict[str, Any] = {
        "n_tracks": len(tracks),
        "start_planes": [0, start - 1],
        "planes": planes,
        "z": [float(PLANE_Z[p]) for p in planes],
    }
    for method, states in walks.items():
        per: dict[str, Any] = {f: {"rms": [], "width68": []} for f in FEATURES}
        scores = []
        for p in planes:
            r = tracks[:, p].astype(np.float64) - states[:, p].astype(np.float64)
            stats = residual_stats(r)
            for f in FEATURES:
                per[f]["rms"].append(stats[f]["rms"])
                per[f]["width68"].append(stats[f]["width68"])
            scores.append(window_score(tracks[:, p], states[:, p]))
        per["score"] = scores
        out[method] = per
    return out


# --------------------------------------------------------------------------------------------
# The challenge file, the training history, the comparison with the baselines


def score_challenge_file(
    inputs_csv: str | Path,
    answers_csv: str | Path,
    predictions_csv: str | Path,
    propagators: Mapping[str, Propagator],
) -> dict[str, Any]:
    """Challenge score and RMS per variable of the network's predictions and of each baseline
    on the challenge-format test file."""
    states, z_target = read_challenge_inputs(inputs_csv)
    last = np.stack([s[-1] for s in states])
    n_states = np.array([len(s) for s in states])
    truth = read_challenge_answers(answers_csv)
    preds = {"network": read_challenge_answers(predictions_csv)}
    for name, path in (("answers", answers_csv), ("predictions", predictions_csv)):
        rows = len(truth) if name == "answers" else len(preds["network"])
        if rows != len(last):
            raise EvaluationInputError(
                f"{path}: {rows} {name} for {len(last)} tracks in {inputs_csv}"
            )
    for method, propagate in propagators.items():
        preds[method] = propagate(last, z_target)[:, ANSWER_INDEX]
    out: dict[str, Any] = {
        "n_tracks": len(last),
        "n_states": {"min": int(n_states.min()), "max": int(n_states.max())},
    }
    for method, pred in preds.items():
        r = truth - pred
        out[method] = {
            "score": challenge_score(truth, pred),
            "rms": {
                f: float(np.sqrt(np.mean(r[:, i] ** 2))) for i, f in enumerate(ANSWER_FEATURES)
            },
        }
    return out


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """The per-epoch training metrics as columns."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def training_summary(history: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Epochs, final and best validation MAE, and the whole history of a training run."""
    return {
        "epochs": int(history["epoch"][-1]),
        "final_val_mae": float(history["val_mae"][-1]),
        "best_val_mae": float(history["val_mae"].min()),
        "best_epoch": int(history["epoch"][int(np.argmin(history["val_mae"]))]),
        "history": {k: v.tolist() for k, v in history.items()},
    }


def ratio(baseline: float, network: float) -> float:
    """How many times larger the baseline's number is than the network's."""
    return float(baseline / network) if network > 0 else float("inf")


def baseline_over_network(result: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """How much better the network is than each baseline in ``methods``: baseline / network
    of the window score, the RMS of each answer variable, and (where scored) the challenge
    score and the walk's score at the last plane; above 1 the network is better."""
    comp: dict[str, Any] = {}
    net = result["residuals"]
    for m in methods:
        base = result["baselines"][m]
        c: dict[str, Any] = {
            "score_windows": ratio(base["score_windows"], result["score_windows"]),
            "rms": {f: ratio(base["residuals"][f]["rms"], net[f]["rms"]) for f in ANSWER_FEATURES},
        }
        if result.get("challenge"):
            ch = result["challenge"]
            c["challenge_score"] = ratio(ch[m]["score"], ch["network"]["score"])
        if result["walk"].get("n_tracks"):
            c["walk_score_last_plane"] = ratio(
                result["walk"][m]["score"][-1], result["walk"]["network"]["score"][-1]
            )
        comp[m] = c
    return comp


def network_over_baselines(result: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """The network's numbers divided by each baseline's: the RMS of each answer variable, the
    window score, the challenge score (where scored) and the real track's score; below 1 the
    network is better. Against ``field_only`` on simulated tracks, 1 is the noise floor."""
    out: dict[str, Any] = {}
    net = result["residuals"]
    for m in methods:
        base = result["baselines"][m]
        c: dict[str, Any] = {
            "rms": {f: ratio(net[f]["rms"], base["residuals"][f]["rms"]) for f in ANSWER_FEATURES},
            "score_windows": ratio(result["score_windows"], base["score_windows"]),
        }
        if result.get("challenge"):
            ch = result["challenge"]
            c["challenge_score"] = ratio(ch["network"]["score"], ch[m]["score"])
        if result.get("real_track", {}).get("n_windows"):
            c["real_track_score"] = ratio(result["real_track"]["network"], result["real_track"][m])
        out[m] = c
    return out


def verdicts(result: dict[str, Any]) -> list[str]:
    """One sentence per baseline: how many times better or worse the network scores.

    Uses the challenge test file when it was scored, else the one-step test windows.
    """
    ch = result.get("challenge")
    where = "on the challenge test file" if ch else "on the one-step test windows"
    net = ch["network"]["score"] if ch else result["score_windows"]
    out = []
    for m in METHODS[1:]:
        if m not in result["baselines"]:
            continue
        base = ch[m]["score"] if ch else result["baselines"][m]["score_windows"]
        if net <= 0 or base <= 0:
            continue
        if base >= net:
            how = f"{base / net:.3g} times lower (better) than"
        else:
            how = f"{net / base:.3g} times higher (worse) than"
        out.append(
            f"{where[0].upper()}{where[1:]}, the network's challenge score ({net:.4g}) is {how} "
            f"the {LABELS[m]} baseline's ({base:.4g})."
        )
    return out
