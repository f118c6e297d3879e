"""What a sweep does before its front moves: teachers trained when a trial first needs them, baselines, latency and
logged models after the trials (study.follow_up), against the same real journal, MLflow store and subprocesses
as the other sweep tests."""

import datetime
import signal
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from support import TINY_SEARCH, run_cli, spawn_cli, write_sweep

from kdtrain.config import sweepfile
from kdtrain.study import first_trials, search
from kdtrain.sweep import followup, session


def _runs(home: Path):
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], max_results=500)


def _when(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000)


@pytest.fixture(scope="module")
def four_trials(tmp_path_factory):
    """A 4-trial sweep of the tiny file (teachers big and conv, kd.teachers searched, base [big])."""
    root = tmp_path_factory.mktemp("follow-up")
    env = {"KDTRAIN_HOME": str(root / "home"), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(root, TINY_SEARCH, **{"trials: 3": "trials: 4"})
    r = run_cli("sweep", p, "--report-dir", root / "reports", "--workers", "1", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny", storage=search.open_storage(str(root / "home" / "optuna.journal")))
    return root / "home", study, r


def test_trials_report_before_any_baseline_is_trained_and_every_trial_is_followed_up(four_trials):
    home, study, r = four_trials
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    _client, runs = _runs(home)
    last_trial = max(t.datetime_complete for t in done)
    baselines = [x for x in runs if x.data.tags.get("kdtrain.role") == "baseline"]
    assert {int(b.data.params["student.width"]) for b in baselines} == {t.params["student.width"] for t in done}
    # study.follow_up: after (the default): no trial waited for a baseline; every baseline came after the trials
    assert all(_when(b.info.start_time) > last_trial for b in baselines)
    by_trial = {int(x.data.tags["optuna.trial"]): x for x in runs if x.data.tags.get("kdtrain.role") == "student"}
    for t in done:
        m = by_trial[t.number].data.metrics
        assert {
            "kd_gain",
            "kd_gain_test",
            "kd_gain_sigma",
            "baseline_test_accuracy",
            "latency_ms_p50",
            "throughput",
        } <= set(m), (t.number, sorted(m))
        assert m["kd_gain_test"] == pytest.approx(t.user_attrs["test_accuracy"] - m["baseline_test_accuracy"])
        assert by_trial[t.number].data.tags.get("kdtrain.model_id"), f"trial {t.number} has no logged model"
        assert study.user_attrs.get(f"{followup.A_DONE}{t.number}") is True
    assert "follow-up of width" in r.stdout
    # the report reads the gains the follow-up logged
    assert "Distillation" in (home.parent / "reports" / "tiny" / "summary.md").read_text()


def test_a_teacher_the_first_trials_do_not_need_trains_when_a_trial_first_does(four_trials):
    home, study, r = four_trials
    assert "teacher conv: trained when a trial first needs it" in r.stdout
    trials = sorted(study.trials, key=lambda t: t.number)
    # trials // 2 = 2 trials drawn among the ready teachers, then the subsets they could not draw, one trial each
    assert [t.params["kd.teachers"] for t in trials] == ["big", "big", "conv", "big+conv"]
    assert trials[1].user_attrs[search.T_REFERENCE] == first_trials.STEERED
    _client, runs = _runs(home)
    teacher = {x.data.tags["mlflow.runName"]: x for x in runs if x.data.tags.get("kdtrain.role") == "teacher"}
    assert set(teacher) == {"teacher-big", "teacher-conv"}
    assert _when(teacher["teacher-conv"].info.start_time) > trials[1].datetime_complete
    for run in teacher.values():  # their latency and logged model came with the follow-up
        assert "latency_ms_p50" in run.data.metrics and run.data.tags.get("kdtrain.model_id")


def test_a_rerun_of_a_finished_study_follows_up_nothing_again(four_trials, tmp_path):
    home, _study, _ = four_trials
    _client, before = _runs(home)
    r = run_cli(
        "sweep",
        home.parent / "tiny.yaml",
        "--no-report",
        "--workers",
        "1",
        env={"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(home.parent / "data")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "follow-up of width" not in r.stdout and "training without a teacher" not in r.stdout
    _, after = _runs(home)
    assert len(after) == len(before)


def test_per_trial_follow_up_logs_each_gain_before_the_next_trial(tmp_path):
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 2, follow_up: per_trial"})
    r = run_cli("sweep", p, "--no-report", "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    home = tmp_path / "home"
    study = optuna.load_study(study_name="tiny", storage=search.open_storage(str(home / "optuna.journal")))
    first = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    _, runs = _runs(home)
    widths = {x.data.params["student.width"]: x for x in runs if x.data.tags.get("kdtrain.role") == "baseline"}
    assert _when(widths[str(first.params["student.width"])].info.start_time) < first.datetime_complete


def test_follow_up_is_checked_and_timed_metrics_are_known_to_be_needed(tmp_path):
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 3, follow_up: later"})
    r = run_cli("sweep", p)
    assert r.returncode == 2 and "study.follow_up" in r.stderr and "per_trial" in r.stderr
    assert "Traceback" not in r.stderr
    cfg = sweepfile.load(write_sweep(tmp_path, TINY_SEARCH, name="a.yaml"))
    assert not followup.timing_needed(cfg)
    assert followup.timing_needed(sweepfile.replace(cfg, {"study.constraints": {"max_latency_ms": 1.0}}))
    assert followup.timing_needed(
        sweepfile.replace(cfg, {"study.objectives": {"val_accuracy": "maximize", "latency_ms_p50": "minimize"}})
    )


def test_first_teachers_are_the_base_trials_and_the_loaded_ones(tmp_path):
    cfg = sweepfile.load(write_sweep(tmp_path, TINY_SEARCH))
    assert session.first_teachers(cfg) == ["big"]
    # a base subset the search cannot draw: the sampler picks the first trial's teachers, so all are needed
    odd = sweepfile.load(write_sweep(tmp_path, TINY_SEARCH, name="odd.yaml", **{"of: [big, conv]": "of: [conv]"}))
    assert session.first_teachers(odd) == ["big", "conv"]


def test_a_sweep_stopped_before_its_follow_up_says_which_widths_wait_and_the_rerun_finishes_it(tmp_path):
    # 12 trials of 12 epochs: ten still to run when trial 1 completes, so that the Ctrl-C lands before the follow-up
    # (the rerun then runs those ten, where 58 once made this the suite's slowest test)
    p = write_sweep(
        tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 12", "epochs: 4, batch_size": "epochs: 12, batch_size"}
    )
    proc = spawn_cli("sweep", p, "--workers", "1", "--no-report", log=tmp_path / "first.log")
    try:
        deadline = time.time() + 240
        while "\ntrial 1 complete" not in "\n" + proc.output():  # Ctrl-C once two trials are in: no follow-up yet
            assert proc.poll() is None and time.time() < deadline, proc.output()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.output()
    assert proc.returncode == 130, out
    r = run_cli("report", "tiny", "--out", tmp_path / "reports")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    assert "no-teacher baseline: the sweep stopped before its follow-up" in summary, summary
    r = run_cli("sweep", p, "--workers", "1", "--report-dir", tmp_path / "reports")  # the same command
    assert r.returncode == 0, r.stdout + r.stderr
    assert "follow-up of width" in r.stdout
    assert "stopped before its follow-up" not in (tmp_path / "reports" / "tiny" / "summary.md").read_text()
