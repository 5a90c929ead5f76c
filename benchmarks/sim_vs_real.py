"""The simulator against real tracks: does the real state at plane 24 look like a simulated one?

For each real track of a file of (origin state at z = 65, state at plane 24) pairs, the
simulator propagates the real origin ``--draws`` times with its material (energy loss, multiple
scattering) to the plane-24 z; the draws give its predicted mean and covariance of (x, y, px,
py, pz) there. The real outcome is then judged against them:

- chi2/ndf of the real state (5 dimensions), mean and median over the tracks;
- the share of real tracks inside the simulator's 95 % region (chi2 below its 95 % quantile);
- pulls per feature (real - mean) / sigma: their width (standard deviation) and mean; a
  simulator that matches the real detector gives widths near 1 and means near 0;
- |p| lost between the origin and plane 24: 10th / 50th / 90th percentiles, real and simulated;
- the momentum range at the origin (5th / 50th / 95th percentiles), real and of the simulated
  spectrum (``data.simulate.sample_origins``), and how many real tracks lie outside it.

    python benchmarks/sim_vs_real.py [--tracks tests/data/mlchallenge2_origin_plane24.csv]
        [--draws 400] [--seed 1] [--out benchmarks/results/sim_vs_real.json] [--plot pulls.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import machine  # noqa: E402

from tracklstm.data.simulate import sample_origins  # noqa: E402
from tracklstm.physics.material import DETECTOR_MATERIAL  # noqa: E402
from tracklstm.physics.solenoid import propagate  # noqa: E402

log = logging.getLogger("sim_vs_real")

DEFAULT_TRACKS = ROOT / "tests" / "data" / "mlchallenge2_origin_plane24.csv"
#: The compared features at plane 24 (z is the plane's).
COMPARED = ("x", "y", "px", "py", "pz")
_INDEX = [0, 1, 3, 4, 5]
#: chi2 quantile of 5 degrees of freedom holding 95 % of a Gaussian.
CHI2_95_5DOF = 11.0705


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(origins (n, 6), plane-24 states (n, 6)) from the CSV (``#`` lines are comments)."""
    rows = [
        line.strip().split(",")
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    header, body = rows[0], rows[1:]
    cols = {name: i for i, name in enumerate(header)}
    need = ["x", "y", "z", "px", "py", "pz", "x24", "y24", "z24", "px24", "py24", "pz24"]
    missing = [n for n in need if n not in cols]
    if missing:
        raise SystemExit(f"{path}: columns {missing} are missing")
    data = np.array([[float(r[cols[n]]) for n in need] for r in body], dtype=np.float64)
    return data[:, :6], data[:, 6:]


def predicted(origin: np.ndarray, z24: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, 6) simulated states at ``z24`` from one real origin, with material."""
    starts = np.repeat(origin[None, :], draws, axis=0)
    return propagate(starts, [z24], material=DETECTOR_MATERIAL, rng=rng)[:, 0]


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, qs)]


def compare(origins: np.ndarray, real24: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    chi2, pulls, sim_loss = [], [], []
    for origin, real in zip(origins, real24, strict=True):
        sim = predicted(origin, float(real[2]), draws, rng)
        x = sim[:, _INDEX]
        mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
        d = real[_INDEX] - mean
        chi2.append(float(d @ np.linalg.solve(cov, d)))
        pulls.append(d / np.sqrt(np.diag(cov)))
        sim_loss.append(np.linalg.norm(origin[3:]) - np.linalg.norm(sim[:, 3:], axis=1))
    chi2_ndf = np.array(chi2) / len(_INDEX)
    pull = np.array(pulls)
    real_loss = np.linalg.norm(origins[:, 3:], axis=1) - np.linalg.norm(real24[:, 3:], axis=1)
    sim_losses = np.concatenate(sim_loss)
    p_real = np.linalg.norm(origins[:, 3:], axis=1)
    p_sim = np.linalg.norm(sample_origins(100_000, np.random.default_rng(seed))[:, 3:], axis=1)
    outside = int(np.sum((p_real < p_sim.min()) | (p_real > p_sim.max())))
    return {
        "tracks": len(origins),
        "draws_per_track": draws,
        "chi2_ndf_mean": round(float(chi2_ndf.mean()), 3),
        "chi2_ndf_median": round(float(np.median(chi2_ndf)), 3),
        "inside_95_percent_region": round(float(np.mean(np.array(chi2) < CHI2_95_5DOF)), 3),
        "pull_width": {f: round(float(pull[:, i].std()), 3) for i, f in enumerate(COMPARED)},
        "pull_mean": {f: round(float(pull[:, i].mean()), 3) for i, f in enumerate(COMPARED)},
        "p_loss_mev_p10_p50_p90": {
            "real": percentiles(1000 * real_loss, (10, 50, 90)),
            "simulated": percentiles(1000 * sim_losses, (10, 50, 90)),
        },
        "p_origin_gev_p5_p50_p95": {
            "real": percentiles(p_real, (5, 50, 95)),
            "simulated": percentiles(p_sim, (5, 50, 95)),
        },
        "p_origin_range_gev": {
            "real": [round(float(p_real.min()), 3), round(float(p_real.max()), 3)],
            "simulated": [round(float(p_sim.min()), 3), round(float(p_sim.max()), 3)],
        },
        "real_tracks_outside_simulated_p_range": outside,
        "_pulls": pull,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pull = result["_pulls"]
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(15, 3.2), sharey=True)
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
        f"{100 * result['inside_95_percent_region']:.0f} % inside the 95 % region"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=Path, default=DEFAULT_TRACKS)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sim_vs_real.json")
    parser.add_argument("--plot", type=Path, help="PNG of the pulls (default: beside --out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    origins, real24 = read_pairs(args.tracks)
    t0 = time.perf_counter()
    result = compare(origins, real24, args.draws, args.seed)
    seconds = time.perf_counter() - t0
    plot_path = args.plot or args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, plot_path)
    result.pop("_pulls")
    record = {
        "benchmark": "sim_vs_real",
        "tracks_file": str(
            args.tracks.relative_to(ROOT) if args.tracks.is_relative_to(ROOT) else args.tracks
        ),
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "result": result,
        "plot": str(plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s", json.dumps(result, indent=2))
    log.info("wrote %s and %s (%.0f s)", args.out, plot_path, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
