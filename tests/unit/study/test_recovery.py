"""Recovery of trials whose worker died (kdtrain.study.recovery): heartbeats, re-queues with a limit, and runs
closed on recovery."""

from kdtrain.study import recovery
from kdtrain.study.storage import rdb_of


def test_an_interrupted_setting_is_requeued_at_most_max_requeues_times():
    """Before, every interruption queued the settings again and none counted toward the failure cap: a setting
    that kills its worker looped forever under a restarting scheduler."""
    import json

    import optuna

    from kdtrain.study import search

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(search.A_CONFIG, json.dumps({"study": {"max_requeues": 2}}))
    study.enqueue_trial({"x": 0.25})
    for _ in range(3):  # the setting kills its worker every time
        trial = study.ask()
        assert trial.suggest_float("x", 0, 1) == 0.25
        assert recovery.fail_trial(study, trial, "interrupted: its worker died")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL"] * 3  # the third interruption queued nothing
    assert [t.user_attrs.get(search.T_REQUEUES, 0) for t in study.trials] == [0, 1, 2]
    last = study.trials[-1].user_attrs
    assert (
        "not re-queued: its settings were interrupted 3 times and study.max_requeues is 2" in last[search.T_FAIL_REASON]
    )
    assert last[search.T_INTERRUPTED] is False  # counts toward the failure cap


def test_a_heartbeat_that_fails_is_one_warning_line_not_silence(tmp_path, monkeypatch, capsys):
    """Heartbeat errors were swallowed: a dying database was invisible until its trials were failed."""
    import time

    import optuna

    from kdtrain.study import search

    storage = search.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    rdb_of(storage).heartbeat_interval = 1  # what apply_heartbeat sets from study.heartbeat_interval
    study = optuna.create_study(storage=storage, study_name="beats")
    trial = study.ask()

    def unreachable(trial_id):  # the database went away: the real storage's call fails as it would
        raise ConnectionError("could not connect to server: Connection refused")

    monkeypatch.setattr(storage, "record_heartbeat", unreachable)
    with recovery.heartbeat(study, trial):
        time.sleep(2.6)  # two beats, both failing
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert f"trial {trial.number}: its heartbeat could not be recorded" in err and "Connection refused" in err


def test_a_recovered_trial_whose_mlflow_run_cannot_be_closed_says_so(capsys):
    import optuna

    from kdtrain.study import search

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr(search.T_RUN, "abc123")

    def tracking_down(run_id, reason):
        raise ConnectionError("tracking server unreachable")

    assert recovery.fail_trial(study, trial, "interrupted: its worker died", tracking_down)
    err = capsys.readouterr().err
    assert "its MLflow run abc123 could not be closed (ConnectionError: tracking server unreachable)" in err
