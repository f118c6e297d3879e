"""Gains over the seeded baseline: each trial records its gain over the mean of the baseline run's seeds (and the
gain in units of their spread, floored at one validation sample); the baseline's curve is the seeds' mean."""

import json
import statistics

import pytest
from support import mlflow_runs
from support.sweep8 import TRIALS

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.sweep import baselines
from kdtrain.tracking import params
from kdtrain.tracking.client import Tracker


def test_each_trial_records_its_gain_over_the_baseline_runs_seed_mean(sweep8):
    home, _, _, p = sweep8
    cfg = config.load(p)
    seeds = [cfg.train.seed + i for i in range(cfg.study.baseline_seeds)]
    assert seeds == [0, 1]
    n_val = len(datasets.load(cfg.data).y_val)
    df = mlflow_runs(home, "tiny")
    base = df[df["tags.kdtrain.role"] == "baseline"].set_index("params.student.width")
    assert base.index.is_unique and (base["params.seeds"] == "0,1").all()
    students = df[df["tags.kdtrain.role"] == "student"]
    assert len(students) == TRIALS and set(students["params.student.width"]) == set(base.index)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    for _, t in students.iterrows():
        b = base.loc[t["params.student.width"]]
        # the baseline run's accuracies are the mean and sample std of its seeds' trainings (the per-seed cache)
        key = baselines.student_key(params.trial_config(tracker, t.run_id))
        runs = json.loads((home / "cache" / "baselines" / f"{key}.json").read_text())["runs"]
        assert sorted(runs) == ["0", "1"]
        for m in ("val_accuracy", "test_accuracy"):
            per_seed = [runs[str(s)][m] for s in seeds]
            assert b[f"metrics.{m}"] == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
            assert b[f"metrics.{m}_std"] == pytest.approx(statistics.stdev(per_seed), abs=1e-12)
            # ... and the trial carries exactly those numbers
            assert t[f"metrics.baseline_{m}"] == pytest.approx(b[f"metrics.{m}"], abs=1e-12)
            assert t[f"metrics.baseline_{m}_std"] == pytest.approx(b[f"metrics.{m}_std"], abs=1e-12)
        gain = t["metrics.val_accuracy"] - b["metrics.val_accuracy"]
        assert t["metrics.kd_gain"] == pytest.approx(gain, abs=1e-12)
        assert t["metrics.kd_gain_test"] == pytest.approx(
            t["metrics.test_accuracy"] - b["metrics.test_accuracy"], abs=1e-12
        )
        assert t["metrics.kd_gain_sigma"] == pytest.approx(
            gain / max(b["metrics.val_accuracy_std"], 1 / n_val), rel=1e-9, abs=1e-12
        )


def test_gain_sigma_is_floored_at_one_validation_sample():
    trial = {"val_accuracy": 0.90, "test_accuracy": 0.80}
    same_seeds = {"val_accuracy": 0.85, "val_accuracy_std": 0.0, "test_accuracy": 0.82, "test_accuracy_std": 0.0}
    g = baselines.gains(trial, same_seeds, 80)
    assert g["kd_gain"] == pytest.approx(0.05) and g["kd_gain_test"] == pytest.approx(-0.02)
    assert g["kd_gain_sigma"] == pytest.approx(0.05 * 80)  # std 0: divided by 1/80, not by zero
    spread = {**same_seeds, "val_accuracy_std": 0.02}  # wider than one sample (1/80 = 0.0125): the std itself
    assert baselines.gains(trial, spread, 80)["kd_gain_sigma"] == pytest.approx(0.05 / 0.02)
    narrow = {**same_seeds, "val_accuracy_std": 0.01}  # narrower than one sample: the floor
    assert baselines.gains(trial, narrow, 80)["kd_gain_sigma"] == pytest.approx(0.05 * 80)


def test_baseline_per_epoch_curve_is_the_seeds_mean(sweep8):
    home, _, _, _ = sweep8
    df = mlflow_runs(home, "tiny")
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    compared = 0
    for _, t in df[df["tags.kdtrain.role"] == "student"].iterrows():
        key = baselines.student_key(params.trial_config(tracker, t.run_id))
        runs = json.loads((home / "cache" / "baselines" / f"{key}.json").read_text())["runs"]
        first, second = ([h["val_accuracy"] for h in runs[s]["history"]] for s in ("0", "1"))
        if first == second:
            continue  # the seeds agree at every epoch: nothing to tell apart
        mean = [(a + b) / 2 for a, b in zip(first, second, strict=False)]
        [b] = tracker.find(t.experiment_id, {"kdtrain.baseline_key": key})
        curve = sorted((m.step, m.value) for m in tracker.client.get_metric_history(b, "val_accuracy") if m.step > 0)
        assert [v for _, v in curve] == pytest.approx(mean, abs=1e-9)
        compared += 1
    assert compared > 0
