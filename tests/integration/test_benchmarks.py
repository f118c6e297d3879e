import json
import subprocess
import sys

import pytest
from support import ROOT

KEYS = (
    "b1_speedup_batch64",
    "b1_speedup_batch256",
    "b1_ablation",
    "b2_kd_over_scratch",
    "b3_speedup_2_workers",
    "b3_speedup_2_workers_wall",
    "b4_overhead_s_per_trial",
    "b4_overhead_s_per_trial_wall",
    "startup_s",
    "b5_peak_rss_mb",
    "b5_total_rss_mb",
    "b6_compute_ratio",
    "b6_final_hv_ratio",
    "b6_front_trials_lost",
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
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


def test_b7_hypervolume_and_time_to_target_follow_their_definitions():
    """B7's measure, on points whose area is known: (test accuracy, params) against log10 params up to 10,000."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from b7 import hypervolume, time_to

    assert hypervolume([]) == 0.0
    assert hypervolume([(0.5, 100)]) == pytest.approx(0.5 * (4 - 2))
    # a dominated point adds nothing; a cheaper, worse one adds its own strip; one past the reference nothing
    two = hypervolume([(0.5, 100), (0.4, 1000), (0.9, 10), (0.99, 20_000)])
    assert two == pytest.approx(0.9 * (4 - 1))
    assert hypervolume([(0.5, 100), (0.9, 1000)]) == pytest.approx(0.5 * 1 + 0.9 * 1)
    line = [(10.0, 1.0, 0), (20.0, 1.5, 1), (30.0, 1.9, 2)]
    assert time_to(line, 1.5) == 20.0 and time_to(line, 2.0) is None


def test_b7_like_for_like_sweep_searches_what_the_hand_written_study_searches():
    from kdtrain import config

    cfg = config.load(ROOT / "benchmarks" / "b7_same_space.yaml")
    assert set(cfg.search) == {"kd.temperature", "kd.alpha", "student.width"}
    text = (ROOT / "benchmarks" / "handwritten.py").read_text()
    for key, spec in cfg.search.items():  # the same names, bounds and scales on both sides
        low, high = spec["low"], spec["high"]
        kind = "float" if spec["type"] == "float" else "int"
        log = ", log=True" if spec.get("log") else ""
        assert f'suggest_{kind}("{key}", {low:g}, {high:g}{log})' in text, key
    quick = config.load(ROOT / "sweeps" / "quickstart.yaml")
    assert (cfg.train, cfg.data, cfg.student) == (quick.train, quick.data, quick.student)
    assert cfg.teachers[0] == quick.teacher("cnn_wide")
