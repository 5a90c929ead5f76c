"""The simulator against real tracks (``tracklstm evaluate sim-vs-real``): does a real state at
plane 24 look like one the simulator would make?

For each real track of a file of (origin state at z = 65, state at plane 24) pairs, the
simulator propagates the real origin ``draws`` times with its material (energy loss, multiple
scattering) to the plane-24 z; the draws give its predicted mean and covariance of (x, y, px,
py, pz) there. The real outcome is then judged against them:

- chi2/ndf of the real state (5 dimensions), mean and median over the tracks;
- the share of real tracks inside the simulator's 95 % region (chi2 below its 95 % quantile),
  and the share of the simulator's own draws inside it: its tails (Landau losses, the
  scattering tail) leave some of them outside too, so this share, not 0.95, is what a real
  detector exactly like the simulator would give;
- pulls per feature (real - mean) / sigma: their width (standard deviation) and mean; a
  simulator that matches the real detector gives widths near 1 and means near 0;
- |p| lost between the origin and plane 24: 10th / 50th / 90th percentiles, real and simulated;
- the momentum at the origin (5th / 50th / 95th percentiles), real and of the tracks the
  simulator keeps (``data.simulate``), and how many real tracks lie outside the simulated range;
- ``bootstrap_68``: the 68 % interval of the median chi2/ndf, the share inside the 95 % region
  and each pull's width and mean over resamplings of the real tracks: with 31 tracks a pull
  width is known to about +-0.13, so a target like "at least 0.8" can be missed by chance.

The real pairs come from a CSV (by default the 31 real training tracks shipped with the
package, ``data/mlchallenge2_origin_plane24.csv``) or from a dataset's own tracks (its Parquet
parts: the origin and plane 24 of its first complete tracks). The workflow writes this page for
every built dataset (``results/<dataset>/simulator/``): a simulated one is judged on the
shipped pairs, a real one on its own tracks. ``benchmarks/sim_vs_real.py`` runs it on demand.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import ANSWER_FEATURES, ANSWER_INDEX, CHI2_5DOF_95
from tracklstm.data.simulate import simulate_tracks
from tracklstm.evaluate.gaussian import chi2_of
from tracklstm.files import check_outputs, write_json
from tracklstm.physics.material import DETECTOR_MATERIAL
from tracklstm.physics.solenoid import propagate

log = logging.getLogger(__name__)

#: The real pairs shipped with the package.
REAL_PAIRS_FILE: Path = Path(__file__).parents[1] / "data" / "mlchallenge2_origin_plane24.csv"
#: The compared features at plane 24 (z is the plane's), and their columns in a state.
COMPARED: tuple[str, ...] = ANSWER_FEATURES
INDEX: list[int] = list(ANSWER_INDEX)
#: Resamplings of the real tracks for the statistics' 68 % intervals (``bootstrap``).
BOOTSTRAP_ROUNDS: int = 2000
#: Simulated tracks (kept by the detector's acceptance) whose origin momenta give the spectrum.
SPECTRUM_TRACKS: int = 20_000
_NEED = ("x", "y", "z", "px", "py", "pz", "x24", "y24", "z24", "px24", "py24", "pz24")


def read_pairs(path: str | Path = REAL_PAIRS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(origins (n, 6), plane-24 states (n, 6)) from the CSV (``#`` lines are comments);
    ValueError names the file and the missing column or bad line."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(Path(path).read_text().splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise ValueError(f"{path}: no header and no rows")
    cols = {name: i for i, name in enumerate(lines[0][1].split(","))}
    missing = [n for n in _NEED if n not in cols]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing")
    rows = []
    for number, line in lines[1:]:
        cells = line.split(",")
        try:
            rows.append([float(cells[cols[n]]) for n in _NEED])
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}, line {number}: not a pair of states ({err})") from None
    data = np.array(rows, dtype=np.float64).reshape(-1, len(_NEED))
    if len(data) < 2 or not np.isfinite(data).all():
        raise ValueError(f"{path}: need at least 2 rows of finite values, got {len(data)}")
    return data[:, :6], data[:, 6:]


def pairs_from_parquet(parts: list[str], max_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """(origins, plane-24 states) of the first ``max_tracks`` complete tracks of the parts."""
    from tracklstm.data.windows import iter_tracks, parquet_parts

    chunks, kept = [], 0
    for _, tracks in iter_tracks(parquet_parts(parts)):
        complete = tracks[np.isfinite(tracks[:, [0, -1]]).all(axis=(1, 2))]
        chunks.append(complete[: max_tracks - kept].astype(np.float64))
        kept += len(chunks[-1])
        if kept >= max_tracks:
            break
    if kept < 2:
        raise ValueError(f"{parts[0]}: fewer than 2 tracks with an origin and a plane 24")
    tracks = np.concatenate(chunks)
    return tracks[:, 0], tracks[:, -1]


def predicted(origin: np.ndarray, z24: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, 6) simulated states at ``z24`` from one real origin, with material."""
    starts = np.repeat(origin[None, :], draws, axis=0)
    return propagate(starts, [z24], material=DETECTOR_MATERIAL, rng=rng)[:, 0]


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, qs)]


def compare(origins: np.ndarray, real24: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """The statistics of the module notes; ``_pulls`` holds the (n, 5) pulls for the plot."""
    rng = np.random.default_rng(seed)
    errors, covs, sim_loss, sim_inside = [], [], [], []
    for origin, real in zip(origins, real24, strict=True):
        sim = predicted(origin, float(real[2]), draws, rng)
        x = sim[:, INDEX]
        errors.append(real[INDEX] - x.mean(axis=0))
        covs.append(np.cov(x, rowvar=False))
        sim_loss.append(np.linalg.norm(origin[3:]) - np.linalg.norm(sim[:, 3:], axis=1))
        own, _ = chi2_of(x - x.mean(axis=0), np.broadcast_to(covs[-1], (draws, *covs[-1].shape)))
        sim_inside.append(np.mean(own < CHI2_5DOF_95))
    error, cov = np.array(errors), np.array(covs)
    chi2, _ = chi2_of(error, cov)
    chi2_ndf = chi2 / len(INDEX)
    pull = error / np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    real_loss = np.linalg.norm(origins[:, 3:], axis=1) - np.linalg.norm(real24[:, 3:], axis=1)
    p_real = np.linalg.norm(origins[:, 3:], axis=1)
    p_sim = np.linalg.norm(simulate_tracks(SPECTRUM_TRACKS, seed=seed)[:, 0, 3:], axis=1)
    outside = int(np.sum((p_real < p_sim.min()) | (p_real > p_sim.max())))
    return {
        "tracks": len(origins),
        "draws_per_track": draws,
        "chi2_ndf_mean": round(float(chi2_ndf.mean()), 3),
        "chi2_ndf_median": round(float(np.median(chi2_ndf)), 3),
        "inside_95_percent_region": round(float(np.mean(chi2 < CHI2_5DOF_95)), 3),
        "simulated_inside_95_percent_region": round(float(np.mean(sim_inside)), 3),
        "pull_width": {f: round(float(pull[:, i].std()), 3) for i, f in enumerate(COMPARED)},
        "pull_mean": {f: round(float(pull[:, i].mean()), 3) for i, f in enumerate(COMPARED)},
        "p_loss_mev_p10_p50_p90": {
            "real": _percentiles(1000 * real_loss, (10, 50, 90)),
            "simulated": _percentiles(1000 * np.concatenate(sim_loss), (10, 50, 90)),
        },
        "p_origin_gev_p5_p50_p95": {
            "real": _percentiles(p_real, (5, 50, 95)),
            "simulated": _percentiles(p_sim, (5, 50, 95)),
        },
        "p_origin_range_gev": {
            "real": [round(float(p_real.min()), 3), round(float(p_real.max()), 3)],
            "simulated": [round(float(p_sim.min()), 3), round(float(p_sim.max()), 3)],
        },
        "real_tracks_outside_simulated_p_range": outside,
        "bootstrap_68": bootstrap(pull, chi2, seed),
        "_pulls": pull,
    }


def bootstrap(
    pull: np.ndarray, chi2: np.ndarray, seed: int, rounds: int = BOOTSTRAP_ROUNDS
) -> dict:
    """The 16th and 84th percentiles of the statistics over ``rounds`` resamplings of the real
    tracks (with replacement): how much they could move on another set of as many tracks."""
    rng = np.random.default_rng(seed + 1)
    rows = rng.integers(0, len(pull), size=(rounds, len(pull)))
    samples = {
        "chi2_ndf_median": np.median(chi2[rows], axis=1) / len(INDEX),
        "inside_95_percent_region": np.mean(chi2[rows] < CHI2_5DOF_95, axis=1),
        **{f"pull_width_{f}": pull[rows, i].std(axis=1) for i, f in enumerate(COMPARED)},
        **{f"pull_mean_{f}": pull[rows, i].mean(axis=1) for i, f in enumerate(COMPARED)},
    }
    return {key: _percentiles(values, (16, 84)) for key, values in samples.items()}


def plot(result: dict[str, Any], path: str | Path) -> None:
    """The pulls per feature against N(0, 1), with the summary in the title (PNG)."""
    from tracklstm.evaluate.plots import plt, save_figure

    pull = result["_pulls"]
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(15, 3.4), sharey=True)
    grid = np.linspace(-6, 6, 200)
    for i, (ax, name) in enumerate(zip(axes, COMPARED, strict=True)):
        ax.hist(np.clip(pull[:, i], -6, 6), bins=np.linspace(-6, 6, 25), density=True,
                color="tab:blue", alpha=0.7, label="real tracks")  # fmt: skip
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
        width = result["pull_width"][name]
        ax.set_title(f"{name}: width {width:.2f}, mean {result['pull_mean'][name]:+.2f}")
        ax.set_xlabel("pull (clipped to +-6)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Real plane-24 states against the simulator ({result['tracks']} tracks): "
        f"chi2/ndf median {result['chi2_ndf_median']:.2f}, "
        f"{100 * result['inside_95_percent_region']:.0f} % inside the 95 % region "
        f"(the simulator's own draws: {100 * result['simulated_inside_95_percent_region']:.0f} %)"
    )
    fig.tight_layout()
    save_figure(fig, path)


def run(
    origins: np.ndarray,
    real24: np.ndarray,
    source: str,
    draws: int,
    seed: int,
    out_json: str | Path,
    plot_path: str | Path,
) -> dict[str, Any]:
    """Compare, write the JSON (without the pulls) and the plot; return the result."""
    result = compare(origins, real24, draws, seed)
    plot(result, plot_path)
    result.pop("_pulls")
    record = {"real_tracks_from": source, "seed": seed, "result": result}
    write_json(out_json, record)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m tracklstm.evaluate.sim_vs_real --out-json J --out-plot P [--pairs CSV |
    --tracks-parquet PART ... [--max-tracks N]] [--draws N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="tracklstm evaluate sim-vs-real", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pairs", default=str(REAL_PAIRS_FILE), help="CSV of real pairs")
    parser.add_argument(
        "--tracks-parquet", nargs="+", help="a dataset's Parquet parts (instead of --pairs)"
    )
    parser.add_argument("--max-tracks", type=int, default=500, help="with --tracks-parquet")
    parser.add_argument("--draws", type=int, default=1000, help="propagations per real origin")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-plot", required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        inputs = {"--pairs": args.pairs, "--tracks-parquet": args.tracks_parquet or []}
        check_outputs({"--out-json": args.out_json, "--out-plot": args.out_plot}, inputs)
        if args.draws < 10 or args.max_tracks < 2:
            raise ValueError(
                f"need --draws >= 10 and --max-tracks >= 2, got {args.draws}, {args.max_tracks}"
            )
        if args.tracks_parquet:
            source = ", ".join(args.tracks_parquet)
            origins, real24 = pairs_from_parquet(args.tracks_parquet, args.max_tracks)
        else:
            source = args.pairs
            origins, real24 = read_pairs(args.pairs)
        result = run(origins, real24, source, args.draws, args.seed, args.out_json, args.out_plot)
        log.info("simulator vs %d real tracks: %s", result["tracks"], json.dumps(result))

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
