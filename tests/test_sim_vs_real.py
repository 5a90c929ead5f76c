"""benchmarks/sim_vs_real.py: the test of the simulator against real tracks, itself tested on
tracks the simulator made (where it must find no mismatch) and run on the real file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tracklstm.constants import PLANE_Z
from tracklstm.data.simulate import sample_origins
from tracklstm.physics.material import DETECTOR_MATERIAL
from tracklstm.physics.solenoid import propagate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sim_vs_real  # noqa: E402


def test_tracks_the_simulator_made_match_it() -> None:
    """Pseudo-real pairs drawn from the simulator itself: chi2/ndf near 1, about 95 % inside the
    95 % region, pulls of width near 1 (the statistics are right, not just computed)."""
    rng = np.random.default_rng(5)
    origins = sample_origins(60, rng)
    real24 = propagate(origins, [PLANE_Z[24]], material=DETECTOR_MATERIAL, rng=rng)[:, 0]
    result = sim_vs_real.compare(origins, real24, draws=300, seed=11)
    assert 0.5 < result["chi2_ndf_median"] < 1.4, result
    assert result["inside_95_percent_region"] >= 0.85, result
    # the simulator's tails leave a few of its own draws outside its Gaussian 95 % region
    assert 0.85 < result["simulated_inside_95_percent_region"] < 0.97, result
    widths = result["pull_width"]
    assert all(0.65 < widths[f] < 1.4 for f in ("x", "y", "px", "py")), widths
    # pz's width is the Landau lottery: one large loss among 60 tracks takes it to 1.85
    assert 0.5 < widths["pz"] < 2.5, widths
    assert result["real_tracks_outside_simulated_p_range"] == 0
    # the resampled 68 % intervals hold the statistics (wider than 1/sqrt(2 n): the tails)
    for f in ("x", "y", "px", "py", "pz"):
        lo, hi = result["bootstrap_68"][f"pull_width_{f}"]
        widest = 2.0 if f == "pz" else 1.0  # one large loss in or out of a resampling
        assert lo <= result["pull_width"][f] <= hi and 0.03 < hi - lo < widest, (f, lo, hi)
        lo, hi = result["bootstrap_68"][f"pull_mean_{f}"]
        assert lo <= result["pull_mean"][f] <= hi, (f, lo, hi)


def test_runs_on_the_real_pairs(tmp_path: Path) -> None:
    out = tmp_path / "svr.json"
    assert sim_vs_real.main(["--draws", "60", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    result = record["result"]
    assert result["tracks"] == 31 and set(result["pull_width"]) == {"x", "y", "px", "py", "pz"}
    loss = result["p_loss_mev_p10_p50_p90"]
    assert loss["real"] == sorted(loss["real"]) and 0 < loss["real"][1] < 50
    assert out.with_suffix(".png").stat().st_size > 10_000 and record["plot"].endswith(".png")


def test_bad_pairs_files_are_named(tmp_path: Path) -> None:
    from tracklstm.evaluate import sim_vs_real as svr

    missing = tmp_path / "missing_column.csv"
    missing.write_text("x,y,z,px,py,pz,x24,y24,z24,px24,py24\n1,2,65,0.1,0.1,1,2,3,343,0.1,0.1\n")
    with pytest.raises(ValueError, match=r"missing_column.csv: columns \['pz24'\]"):
        svr.read_pairs(missing)
    bad = tmp_path / "bad_value.csv"
    header = ",".join(svr._NEED)
    bad.write_text(f"# comment\n{header}\n" + ",".join(["1"] * 11) + ",oops\n")
    with pytest.raises(ValueError, match=r"bad_value\.csv, line 3"):
        svr.read_pairs(bad)


def test_the_stage_writes_the_page_files(tmp_path: Path) -> None:
    """The workflow's command: JSON and plot, and a clear exit for a bad option."""
    from tracklstm.evaluate import sim_vs_real as svr

    out, png = tmp_path / "vs_real.json", tmp_path / "vs_real.png"
    assert svr.main(["--draws", "40", "--out-json", str(out), "--out-plot", str(png)]) == 0
    result = json.loads(out.read_text())["result"]
    assert result["tracks"] == 31 and 0 < result["chi2_ndf_median"] < 100
    assert png.stat().st_size > 10_000
    assert svr.main(["--draws", "3", "--out-json", str(out), "--out-plot", str(png)]) == 1
