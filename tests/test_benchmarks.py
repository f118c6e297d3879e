import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.xdist_group("benchmarks")  # one xdist worker runs the module: its module fixtures run once

KEYS = ("b1_speedup_batch64", "b1_speedup_batch256", "b1_ablation", "b2_kd_over_scratch", "b3_speedup_2_workers",
        "b3_speedup_2_workers_wall", "b4_overhead_s_per_trial", "b4_overhead_s_per_trial_wall", "startup_s",
        "b5_peak_rss_mb", "b5_total_rss_mb", "b6_compute_ratio", "b6_final_hv_ratio", "b6_front_trials_lost")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text()), r.stdout


def test_benchmark_quick_mode_writes_every_key_and_prints_the_table(quick):
    """Keeps benchmarks/run.py working (its quick numbers mean nothing; speed goals live in benchmarks/)."""
    res, stdout = quick
    assert [k for k in KEYS if k not in res] == []
    for k in ("b1_speedup_batch64", "b3_speedup_2_workers", "b6_compute_ratio"):
        assert k in stdout


def test_benchmark_numbers_follow_their_definitions(quick):
    res, _ = quick
    rows = res["b1_ablation"]
    names = ["classic loop", "+ cached teacher logits", "+ device-resident batches", "+ fused Adam", "kdtrain trainer"]
    assert [(r["batch_size"], r["row"]) for r in rows] == [(b, n) for b in (64, 256) for n in names]
    assert all(r["seconds"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows)
    for bs in (64, 256):
        by = {r["row"]: r["seconds"] for r in rows if r["batch_size"] == bs}
        assert res[f"b1_speedup_batch{bs}"] == pytest.approx(by["classic loop"] / by["kdtrain trainer"])
    one, two = res["sweeps"]["1_worker"], res["sweeps"]["2_workers"]
    assert one["trials"] == 2 and two["trials"] == 2
    assert res["b3_speedup_2_workers_wall"] == pytest.approx(one["wall_s"] / two["wall_s"])
    assert res["b4_overhead_s_per_trial_wall"] == pytest.approx((one["wall_s"] - one["train_s"]) / 2)
    # start-up is part of the wall time and not of the steady state
    assert 0 < one["startup_s"] < one["wall_s"] and one["trial_phase_s"] < one["wall_s"]
    assert res["b4_overhead_s_per_trial_wall"] > res["b4_overhead_s_per_trial"]
    # the sweep and its 2 workers together hold more than its largest process alone
    assert two["total_rss_mb"] > two["peak_rss_mb"] > 100
    seed = res["b6_per_seed"][0]
    hv = [h for _, h in res["b6_runs"][0]["hv"]]
    assert hv == sorted(hv) and len(hv) == res["b6_trials"]
    assert res["b6_final_hv_ratio"] == pytest.approx(seed["final_hv_pruned"] / seed["final_hv_unpruned"])
    assert res["b6_front_trials_lost"] == seed["replay_front_lost"] <= seed["replay_would_prune"]
