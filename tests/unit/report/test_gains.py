"""Distillation gains against seed noise: seeded baselines, per-trial gains, the report's verdict, confirm."""

import re

import pandas as pd
import pytest
from support import load_study, mlflow_runs, run_cli

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.distill.student import distill_student
from kdtrain.report import build, gains


@pytest.fixture(scope="module")
def gain_sweep(tiny_study):
    """conftest's finished 3-trial tiny sweep, then kdtrain confirm of its first trial with 2 seeds."""
    root, p, env, _ = tiny_study
    c = run_cli("confirm", "tiny", "--trial", "0", "--seeds", "2", "--out", root / "reports", env=env)
    assert c.returncode == 0, c.stdout + c.stderr
    return root, p, env, c


def test_baselines_carry_their_seeds_mean_and_spread(gain_sweep):
    root, p, _env, _ = gain_sweep
    df = mlflow_runs(root / "home", "tiny")
    base = df[df["tags.kdtrain.role"] == "baseline"]
    assert len(base) >= 1 and (base["params.seeds"] == "0,1,2").all()  # study.baseline_seeds = 3 by default
    row = base.iloc[0]
    width = int(row["params.student.width"])
    # the same three trainings done here, independently: the run's numbers are their mean and sample std
    cfg = config.replace(config.load(p), {"student.width": width, "kd.alpha": 0.0})
    ds = datasets.load(cfg.data)
    runs = [distill_student(config.replace(cfg, {"train.seed": s}), ds, {}) for s in (0, 1, 2)]
    val = pd.Series([r.val_accuracy for r in runs])
    test = pd.Series([r.test_accuracy for r in runs])
    assert row["metrics.val_accuracy"] == pytest.approx(val.mean(), abs=1e-9)
    assert row["metrics.val_accuracy_std"] == pytest.approx(val.std(), abs=1e-9)
    assert row["metrics.test_accuracy"] == pytest.approx(test.mean(), abs=1e-9)
    assert row["metrics.test_accuracy_std"] == pytest.approx(test.std(), abs=1e-9)


def test_every_trial_records_its_gain_over_the_baseline_mean(gain_sweep):
    root, _, _, _ = gain_sweep
    df = mlflow_runs(root / "home", "tiny")
    base = df[df["tags.kdtrain.role"] == "baseline"].set_index("params.student.width")
    students = df[df["tags.kdtrain.role"] == "student"]
    n_val = 80  # synthetic, size 400, val_fraction 0.2
    for _, t in students.iterrows():
        b = base.loc[t["params.student.width"]]
        assert t["metrics.kd_gain"] == pytest.approx(t["metrics.val_accuracy"] - b["metrics.val_accuracy"])
        assert t["metrics.kd_gain_test"] == pytest.approx(t["metrics.test_accuracy"] - b["metrics.test_accuracy"])
        spread = max(b["metrics.val_accuracy_std"], 1 / n_val)
        assert t["metrics.kd_gain_sigma"] == pytest.approx(t["metrics.kd_gain"] / spread)
        assert t["metrics.baseline_test_accuracy_std"] == pytest.approx(b["metrics.test_accuracy_std"])


def test_confirm_retrains_with_new_seeds_paired_with_baselines(gain_sweep):
    root, _, env, out = gain_sweep
    df = mlflow_runs(root / "home", "tiny")
    confirms = df[df["tags.kdtrain.role"] == "confirm"]
    assert sorted(confirms["tags.kdtrain.seed"]) == ["1", "2"] and set(confirms["tags.optuna.trial"]) == {"0"}
    parent = df[df["tags.kdtrain.role"] == "sweep"].run_id.iloc[0]
    assert (confirms["tags.mlflow.parentRunId"] == parent).all() and (confirms["status"] == "FINISHED").all()
    trial0 = load_study(root / "home").trials[0]
    assert (confirms["params.kd.temperature"].astype(float) == trial0.params["kd.temperature"]).all()
    for _, c in confirms.iterrows():  # paired: the baseline trained with the same seed
        assert c["metrics.kd_gain_test"] == pytest.approx(
            c["metrics.test_accuracy"] - c["metrics.baseline_test_accuracy"]
        )
    gains = 100 * confirms["metrics.kd_gain_test"]
    assert f"{gains.mean():.2f} ± {gains.std():.2f}" in out.stdout
    page = (root / "reports" / "tiny" / "index.html").read_text()
    assert 'id="confirms"' in page
    again = run_cli("confirm", "tiny", "--trial", "0", "--seeds", "2", "--no-report", env=env)
    assert again.returncode == 0 and "confirm trial 0: seed" not in again.stdout  # reused, not retrained
    assert len(mlflow_runs(root / "home", "tiny").query("`tags.kdtrain.role` == 'confirm'")) == 2


def test_confirm_refuses_a_trial_that_does_not_exist(gain_sweep):
    _, _, env, _ = gain_sweep
    r = run_cli("confirm", "tiny", "--trial", "99", env=env)
    assert r.returncode == 1 and "no such trial in 'tiny': 99" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("confirm", "tiny", "--trial", "0", "--seeds", "0", env=env)
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_confirm_checks_the_study_and_its_trials_before_loading_any_teacher(gain_sweep, tmp_path):
    from pathlib import Path

    from kdtrain.cli.args import build_parser

    _, _, env, _ = gain_sweep
    home = Path(env["KDTRAIN_HOME"])
    cold = {"KDTRAIN_HOME": str(tmp_path / "cold"), "KDTRAIN_DATA": env["KDTRAIN_DATA"]}  # another machine's caches
    stores = ["--storage", str(home / "optuna.journal"), "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}"]
    r = run_cli("confirm", "tiny", "--trial", "99", *stores, env=cold)
    assert r.returncode == 1 and "no such trial in 'tiny': 99" in r.stderr, r.stdout + r.stderr
    assert "teacher" not in r.stdout and not (tmp_path / "cold" / "cache").exists()
    r = run_cli("confirm", "nosuch", "--trial", "0", *stores, env=cold)
    assert r.returncode == 1 and "nosuch" in r.stderr and "--wait" not in r.stderr, r.stderr
    assert build_parser().parse_args(["confirm", "tiny", "--trial", "3", "--trial", "7"]).trial == [3, 7]


def _study(gains_test: list[float], spreads: list[float]) -> build.StudyData:
    widths = [2, 4, 8][: len(gains_test)]
    students = pd.DataFrame(
        {
            "student.width": widths,
            "trial": range(len(widths)),
            "val_accuracy": [0.8] * len(widths),
            "test_accuracy": [0.8 + g for g in gains_test],
            "baseline_test_accuracy": [0.8] * len(widths),
            "baseline_test_accuracy_std": spreads,
            "kd_gain": gains_test,
            "kd_gain_test": gains_test,
            "kd_gain_sigma": [1.0] * len(widths),
        }
    )
    baselines = pd.DataFrame({"student.width": widths, "seeds": ["0,1,2"] * len(widths)})
    return build.StudyData(
        "s", {"val_accuracy": "maximize"}, students, pd.DataFrame(), baselines, {}, 0.0, {}, pd.DataFrame(), "", None
    )


def test_verdict_says_beyond_noise_only_past_twice_the_spread():
    yes = gains.gain_verdict(_study([0.05, 0.001], [0.01, 0.01]))  # +5 points, spread 1: beyond
    assert yes.startswith("Distillation beat training alone beyond seed noise at width 2:")
    assert "+5.0 points on test" in yes and "over 3 seeds" in yes and "kdtrain confirm s --trial 0" in yes
    no = gains.gain_verdict(_study([0.015, -0.02], [0.01, 0.01]))  # +1.5 points, spread 1: within 2x
    assert no.startswith("Distillation did not beat training alone beyond seed noise")
    assert "+1.5 points (width 2)" in no
    g = gains.gain_per_width(_study([0.05, 0.015, 0.03], [0.01, 0.01, 0.02]))
    assert list(g["beyond_noise"]) == [True, False, False]  # width 8: 3 points, but the spread is 2


def test_with_one_baseline_seed_a_gain_is_unmeasured_not_beyond_noise():
    one = _study([0.05, 0.017], [0.0, 0.0])  # one seed: the sample spread is 0 (or missing), any gain would "beat" it
    one.baselines["seeds"] = "0"
    g = gains.gain_per_width(one)
    assert not g["beyond_noise"].any()
    v = gains.gain_verdict(one)
    assert v.startswith("Distillation's gain is unmeasured against seed noise: the baselines have one seed")
    assert "+5.0 points (width 2, trial 0)" in v and "kdtrain confirm s --trial 0" in v
    assert "beyond seed noise at" not in v


def test_a_one_seed_sweep_reports_its_gain_as_unmeasured(tmp_path):
    from support import write_sweep

    env = {"KDTRAIN_HOME": str(tmp_path / "home"), "KDTRAIN_DATA": str(tmp_path / "data")}
    p = write_sweep(tmp_path, **{"trials: 3": "trials: 2, baseline_seeds: 1"})
    r = run_cli("sweep", p, "--workers", "1", "--report-dir", tmp_path / "reports", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    assert "Distillation's gain is unmeasured against seed noise" in summary
    assert "beyond seed noise at" not in summary


def test_the_verdict_names_the_widths_where_distillation_lost_and_the_front_marks_them():
    d = _study([0.05, -0.243, -0.004], [0.01, 0.02, 0.01])  # width 4: 24.3 points below, beyond 2 x 2 points
    g = gains.gain_per_width(d)
    assert list(g["lost_beyond_noise"]) == [False, True, False]  # width 8: -0.4 is within the spread
    v = gains.gain_verdict(d)
    assert v.startswith("Distillation beat training alone beyond seed noise at width 2:")
    assert "Distillation lost to training alone beyond seed noise at width 4 (best trial -24.3 points on test)" in v
    # the front (two objectives here) carries each student's test gain and marks those below their baseline
    d.objectives = {"val_accuracy": "maximize", "params": "minimize"}
    d.students["params"] = [100, 200, 300]
    d.students["val_accuracy"] = [0.7, 0.8, 0.9]
    front = build.front_table(d)
    assert front["test gain"].round(1).tolist() == [5.0, -24.3, -0.4]
    said = build.below_baseline(d)
    assert said and said[0].startswith("On the front, trials 1 (-24.3), 2 (-0.4) score below the no-teacher baseline")
    d.students = d.students.iloc[[2, 0, 1]]  # as a real study's front comes: sorted by cost, not by row
    assert build.below_baseline(d) == said  # (a boolean-mask assignment once raised a TypeError on this)


def test_after_confirm_the_report_terminal_and_registry_use_the_confirmed_numbers(tiny_sweep, tmp_path, capsys):
    """After `kdtrain confirm` the report still gave the single-seed verdict, asked for the confirm just done, and
    `register --alias` ranked by single-seed val accuracy."""
    from mlflow import MlflowClient

    from kdtrain.cli.commands import main

    # trial 0 (the enqueued base) distils nothing (kd.alpha 0): confirmed, it ties its baselines exactly
    text = tiny_sweep.read_text().replace("study: {name: tiny}", "study: {name: tiny, trials: 3, seed: 1}")
    tiny_sweep.write_text(
        text.replace("alpha: 0.7", "alpha: 0.0") + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n"
    )
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # item 4: no assumed port for a local store; kdtrain ui prints the link for the port it serves
    assert "127.0.0.1:5000" not in last and last.startswith("browse the runs: kdtrain ui tiny ("), last
    assert main(["confirm", "tiny", "--trial", "0", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    # item 5: its size up front (seeds 1 and 2 distilled; their baselines are the sweep's, seeds 0-2), k/N, ETA
    total = int(re.search(r"confirm: 1 trial\(s\) x 2 new seed\(s\): (\d+) training\(s\) to run", out).group(1))
    assert total == 2 and re.findall(r"confirm (\d)/2: trial 0 distilled .*ETA", out) == ["1", "2"], out
    # issue 33 item 10: "ETA ?" through the whole first training; its first epoch now gives the pace and an ETA
    first = re.search(r"confirm 1/2: epoch 1/(\d+), ([\d.]+)s/epoch  ETA ~(\d+m\d\ds)", out)
    assert first and out.index("confirm 1/2: trial 0") < first.start() < out.index("confirm 2/2: trial 0"), out
    assert out.count("report: ") == 1
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    page = (tmp_path / "reports" / "tiny" / "index.html").read_text()
    for where in (out, summary, page):
        assert "--trial 0)" not in where  # no request for the confirm that was done
    assert "127.0.0.1:5000" not in page and "<code>kdtrain ui tiny</code>" in page
    head = summary.split("\n## ", 1)[0]
    assert (
        "the largest test gain of a best trial is +0.0 ± 0.0 points on test, paired with the baseline of each "
        "seed, confirmed over 2 new seeds (width 8, trial 0), within 2 x its own spread over the new seeds"
    ) in head
    verdict = next(line for line in head.splitlines() if "Distillation" in line)
    assert verdict[2:] in out  # the terminal prints the headline the report now has

    capsys.readouterr()
    assert main(["register", "tiny", "--trial", "0", "1", "2", "--name", "tiny-student", "--alias", "champion"]) == 0
    out = capsys.readouterr().out
    assert "alias champion: version 1 (trial 0), the highest mean val accuracy over kdtrain confirm's new seeds" in out
    assert "unconfirmed trial(s) 1, 2 not ranked" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/home/mlflow.db")
    champion = client.get_model_version_by_alias("tiny-student", "champion")
    assert champion.tags["optuna.trial"] == "0" and "confirmed over 2 new seeds" in champion.description
