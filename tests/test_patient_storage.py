"""The study's storage waiting out a lost database (kdtrain.storage.PatientStorage), on a real SQLite store: the
parts that need no PostgreSQL restarted under them (test_outage does that)."""

import sqlalchemy.exc as sa

from kdtrain import search


def test_an_outage_that_ends_on_another_thread_mid_retry_does_not_break_the_retry(tmp_path):
    """Issue 29 item 4: the heartbeat thread's _back() ran between the main thread's _failed() and its arithmetic on
    down_since (then None): TypeError. Here that interleaving is made certain by running _back() right after."""
    storage = search.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    storage.patience, storage.log = 30.0, lambda line: None
    failed = type(storage)._failed

    def failed_then_back(self, e):
        since = failed(self, e)
        self._back()  # the heartbeat thread's call got through meanwhile: the outage is over
        return since

    storage._failed = failed_then_back.__get__(storage)
    calls = []

    def call():
        calls.append(1)
        if len(calls) == 1:
            raise sa.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return 42

    assert storage._patient(call) == 42 and len(calls) == 2
    assert storage.down_since is None


def test_an_interrupted_trial_whose_requeue_was_lost_is_queued_again_once(tmp_path):
    """Issue 29 item 3: fail_trial marks the trial FAIL, then queues its settings; a kill or an outage between the two
    lost the settings for good. A later recovery queues the missing copy, once."""
    import optuna
    import pytest

    from kdtrain import recovery

    study = optuna.create_study(study_name="s", storage=search.open_storage(str(tmp_path / "j.journal")))
    trial = study.ask()
    trial.suggest_float("kd.alpha", 0, 1)
    real = study.enqueue_trial

    def killed(*a, **k):
        raise RuntimeError("the worker was killed here")

    study.enqueue_trial = killed
    with pytest.raises(RuntimeError):
        recovery.fail_trial(study, trial, "interrupted: stopped by SIGTERM")
    study.enqueue_trial = real
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert recovery.requeue_missing(study) == []  # failed a moment ago: its worker may still be queueing the copy
    assert recovery.requeue_missing(study, min_age_s=0) == [0]
    assert recovery.requeue_missing(study, min_age_s=0) == []  # once
    copy = study.trials[1]
    assert copy.state.name == "WAITING" and copy.system_attrs["fixed_params"] == study.trials[0].params
    assert copy.user_attrs[search.T_REQUEUED_FROM] == 0
