import json
import math
import os
import statistics
import subprocess
import sys

from support import ROOT

ROWS = ["baseline", "kd", "kd + standardize", "dkd", "dist"]


def test_kd_quality_quick_mode_writes_a_consistent_table(tmp_path):
    """Keeps benchmarks/kd_quality.py working and checks that its table is what its JSON says: cells are the
    seeds' mean and sample std, each loss's T and alpha are the grid's best on val, the baseline has none."""
    out = tmp_path / "q.json"
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "KDTRAIN_HOME": str(tmp_path / "home"),
        "KDTRAIN_DATA": str(tmp_path / "data"),
    }
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kd_quality.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())

    assert res["rows"] == ROWS
    assert {c["dataset"] for c in res["columns"]} == {"mnist1d", "digits"}
    keys = [c["key"] for c in res["columns"]]
    grid = [(t, a) for t in res["grid"]["temperature"] for a in res["grid"]["alpha"]]
    assert len(grid) >= 2  # so that the choice below is a real choice
    n_seeds = len(res["seeds"])
    assert n_seeds >= 2
    assert res["trainings"] == len(keys) * n_seeds * (1 + (len(ROWS) - 1) * len(grid))
    for k in ("date", "machine", "epochs", "wall_s"):
        assert k in res, k
    assert {"platform", "cores", "torch"} <= set(res["machine"])
    assert set(res["epochs"]) == {"mnist1d", "digits"}
    assert (tmp_path / "home" / "cache" / "teachers").is_dir()  # teachers went through kdtrain's cached pool

    for row in ROWS:
        assert set(res["cells"][row]) == set(keys), row
        for key in keys:
            cell = res["cells"][row][key]
            test, val = cell["test_accuracy"], cell["val_accuracy"]
            assert len(test) == len(val) == n_seeds
            assert all(0.0 <= v <= 1.0 for v in test + val)
            assert math.isclose(cell["mean"], statistics.fmean(test), abs_tol=1e-12)
            assert math.isclose(cell["std"], statistics.stdev(test), abs_tol=1e-12)
            assert math.isclose(cell["val_mean"], statistics.fmean(val), abs_tol=1e-12)
            if row == "baseline":
                assert cell["temperature"] is None and cell["alpha"] is None and not cell["grid"]
                continue
            points = cell["grid"]
            assert [(p["temperature"], p["alpha"]) for p in points] == grid  # every grid point recorded
            for p in points:
                assert len(p["val_accuracy"]) == n_seeds
                assert math.isclose(p["val_mean"], statistics.fmean(p["val_accuracy"]), abs_tol=1e-12)
                assert "test_accuracy" not in p  # only the chosen point's test accuracy is kept
            best = max(points, key=lambda p: p["val_mean"])  # first of equals, as the script breaks ties
            assert (cell["temperature"], cell["alpha"]) == (best["temperature"], best["alpha"])
            assert cell["val_accuracy"] == best["val_accuracy"]  # the reported seeds are the chosen point's
            base = res["cells"]["baseline"][key]
            assert math.isclose(cell["gain"], cell["mean"] - base["mean"], abs_tol=1e-12)

    # the Markdown table names every row and column, with mean ± std cells, and the run's size and time
    for row in ROWS:
        assert f"| {row} |" in r.stdout
    for c in res["columns"]:
        assert f"{c['dataset']} {c['arch']} w{c['width']}" in r.stdout
    cell = res["cells"]["kd"][keys[0]]
    assert f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}" in r.stdout
    assert f"{res['trainings']} trainings" in r.stdout
    assert "T=" in r.stderr and "[" in r.stderr  # progress lines go to stderr
