"""The study's storage waiting out a lost database (kdtrain.study.storage.PatientStorage), on a real SQLite store: the
parts that need no PostgreSQL restarted under them (integration/postgres/test_database_outage.py does that)."""

import json
import sqlite3
import textwrap
import time

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc as sa

from kdtrain.study import search
from kdtrain.study import storage as storage_module


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
    from kdtrain.study import recovery

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


# --------------------------------------------------------------------------- issue 29 items 1 and 2

QUICKSTART_OBJECTIVES = ["maximize", "minimize"]  # sweeps/quickstart.yaml: val_accuracy, params


class Database:
    """What a test does to one real SQLite database file through SQLAlchemy events on `target` (an engine, or the
    Engine class for the engines a sweep opens itself): every SQL statement refused with OperationalError while a
    window is open (down()), and the replies of the next `lose` trial state changes lost right after their COMMIT
    landed (a trial taken, finished: not one created). `outside`: statements run outside any waiting storage call."""

    def __init__(self, path, target=sqlalchemy.engine.Engine):
        self.path, self.target, self.until, self.lose, self.lost = str(path), target, 0.0, 0, []
        self.windows, self.refused, self.outside, self.changing = 0, 0, [], False
        self.hooks = [
            ("before_cursor_execute", self.before),
            ("after_cursor_execute", self.after),
            ("commit", self.commit),
        ]
        for name, hook in self.hooks:
            sqlalchemy.event.listen(target, name, hook)

    def close(self):
        for name, hook in self.hooks:
            sqlalchemy.event.remove(self.target, name, hook)

    def down(self, seconds: float):
        self.until, self.windows = time.time() + seconds, self.windows + 1

    def ours(self, conn) -> bool:
        return conn.engine.url.database == self.path

    @staticmethod
    def gone(statement: str):
        return sa.OperationalError(statement, {}, sqlite3.OperationalError("server closed the connection unexpectedly"))

    def before(self, conn, cursor, statement, *args):
        if not self.ours(conn):
            return
        if not getattr(storage_module._local, "depth", 0):
            self.outside.append(statement)
        if time.time() < self.until:
            self.refused += 1
            raise self.gone(statement)

    def after(self, conn, cursor, statement, *args):
        if self.ours(conn) and self.lose and statement.startswith("UPDATE trials SET state=?, datetime_"):
            self.changing = True

    def commit(self, conn):
        if self.ours(conn) and self.changing:
            self.changing, self.lose = False, self.lose - 1
            conn.connection.dbapi_connection.commit()  # the commit lands; its reply does not
            self.lost.append(time.time())
            raise self.gone("COMMIT")


@pytest.fixture
def patient(tmp_path):
    """A quickstart-shaped study (two objectives) on a real SQLite file whose storage waits up to 60 s, and the
    Database that takes it away; the storage's lines (outage and back) in `said`."""
    path = tmp_path / "optuna.db"
    storage = search.open_storage(f"sqlite:///{path}")
    said = []
    storage.patience, storage.log = 60.0, said.append
    study = optuna.create_study(study_name="qs", storage=storage, directions=QUICKSTART_OBJECTIVES)
    study.set_user_attr(search.A_CONFIG, json.dumps({"study": {"storage_patience": "45s"}}))
    db = Database(path)
    yield study, db, said
    db.close()


def test_every_storage_call_of_a_two_objective_study_waits_out_a_database_that_is_gone(patient, capsys):
    """Issue 29 item 1: Optuna's cached storage calls RDBStorage's private methods (_create_new_trial,
    _set_trial_param, _get_trials, ...), which did not wait: ask, suggest and reading the trials failed at once
    with StorageInternalError. Here every SQL statement fails for a window before each call."""
    study, db, said = patient
    study.enqueue_trial({"kd.alpha": 0.5})

    db.down(1.0)
    trial = search.ask(study)  # takes the queued trial (_get_trials, set_trial_state_values, heartbeat, attrs)
    db.down(1.0)
    assert trial.suggest_float("kd.alpha", 0.3, 1) == 0.5 and trial.suggest_int("student.width", 2, 32) >= 2
    db.down(1.0)
    assert [t.state.name for t in search.trials(study, "RUNNING")] == ["RUNNING"]
    db.down(1.0)
    # an epoch's pruning check: skipped, not waited for, not a failure
    with pytest.raises(storage_module.StorageDown), storage_module.no_wait():
        search.trials(study, "COMPLETE")
    search.tell(study, trial, "COMPLETE", [0.9, 120.0])  # the same outage, still under way: waited out
    db.down(1.0)
    second = search.ask(study)  # a new trial (_create_new_trial)
    second.suggest_float("kd.alpha", 0.3, 1)
    search.tell(study, second, "PRUNED")
    db.down(1.0)
    assert [t.number for t in study.best_trials] == [0] and search.counts(study)["DONE"] == 2
    db.down(1.0)
    assert search.study_names(study._storage) == ["qs"]

    # kdtrain status, report, confirm: the study's storage_patience once the study is loaded
    opening = len(db.outside)
    status = search.open_storage(f"sqlite:///{db.path}")
    del db.outside[opening:]  # creating the storage (its tables checked): not a storage call
    status.log = said.append
    again = search.load("qs", storage=status)
    assert storage_module.rdb_of(again._storage).patience == 45.0
    db.down(1.0)
    assert search.counts(again)["COMPLETE"] == 1

    assert db.refused >= db.windows == 8, "every window refused statements"
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Caught an error from sqlalchemy" not in err, err
    warnings = [line for line in err.splitlines() if "is unreachable since" in line]
    assert len(warnings) == 8 and all("retrying for up to" in w for w in warnings), err  # one per outage
    assert len([s for s in said if "answers again" in s]) == 8, said
    assert db.outside == [], "a storage call that does not wait: " + "; ".join(db.outside[:3])


def test_taking_a_queued_trial_whose_acknowledgement_was_lost_takes_that_trial(patient, capsys):
    """Issue 29 item 2: WAITING -> RUNNING committed, its reply lost; the retry found the trial RUNNING and Optuna
    took (or made) another one, leaving the queued one RUNNING with no parameters."""
    study, db, _said = patient
    study.enqueue_trial({"kd.alpha": 0.5}, user_attrs={search.T_REFERENCE: "base settings"})
    db.lose = 1
    trial = search.ask(study)
    assert len(db.lost) == 1
    assert trial.number == 0 and trial.suggest_float("kd.alpha", 0.3, 1) == 0.5
    assert [t.number for t in study.get_trials(deepcopy=False)] == [0]  # no second trial taken or made
    assert "Traceback" not in capsys.readouterr().err


def test_a_tell_whose_first_commit_landed_is_a_success(patient):
    """Issue 29 item 2: the retry of a COMPLETE whose commit landed met a finished trial (UpdateFinishedTrialError,
    TrialTakenOver): the worker dropped the result and closed its MLflow run as KILLED."""
    study, db, _said = patient
    trial = search.ask(study)
    trial.suggest_float("kd.alpha", 0.3, 1)
    db.lose = 1
    search.tell(study, trial, "COMPLETE", [0.9, 120.0])  # no TrialTakenOver: the result is in
    assert len(db.lost) == 1
    done = study.trials[0]
    assert done.state.name == "COMPLETE" and done.values == [0.9, 120.0]


def test_a_fail_whose_first_commit_landed_is_a_success_and_the_trial_is_queued_again(patient):
    """Issue 29 item 2: fail_trial's FAIL committed, its reply lost; the retry met a finished trial, fail_trial
    returned False and the interrupted trial's settings were never queued again."""
    from kdtrain.study import recovery

    study, db, _said = patient
    trial = search.ask(study)
    trial.suggest_float("kd.alpha", 0.3, 1)
    db.lose = 1
    assert recovery.fail_trial(study, trial, "interrupted: stopped by SIGTERM")
    assert len(db.lost) == 1
    final = study.get_trials(deepcopy=False)
    assert [t.state.name for t in final] == ["FAIL", "WAITING"]
    assert final[1].user_attrs[search.T_REQUEUED_FROM] == 0 and final[1].system_attrs["fixed_params"] == trial.params
    assert recovery.fail_trial(study, trial, "interrupted: again") is False  # a second stop changes nothing
    assert len(study.get_trials(deepcopy=False)) == 2


def test_a_taken_queued_trial_left_without_its_settings_is_failed_and_queued_again(patient):
    """Issue 29 item 2: a queued trial taken (RUNNING) whose worker stopped before it drew its settings holds them
    only as Optuna's fixed_params; recovery failed it without a re-queue (its params empty), losing them."""
    from kdtrain.study import recovery

    study, _db, _said = patient
    b = storage_module.rdb_of(study._storage)
    b.heartbeat_interval, b.grace_period = 1, 0
    study.enqueue_trial({"kd.alpha": 0.5}, user_attrs={search.T_REFERENCE: "base settings"})
    orphan = study.ask()  # taken, and nothing more: no heartbeat, no pid, no parameters
    assert orphan.params == {}
    time.sleep(0.05)  # older than the grace period (0 s)
    assert recovery.recover(study) == [0]
    failed, copy = study.get_trials(deepcopy=False)
    assert failed.state.name == "FAIL" and failed.user_attrs[search.T_INTERRUPTED] is True
    assert copy.state.name == "WAITING" and copy.system_attrs["fixed_params"] == {"kd.alpha": 0.5}
    assert copy.user_attrs[search.T_REQUEUED_FROM] == 0 and copy.user_attrs[search.T_REQUEUES] == 1


QUICKSTART_SHAPED = """
study: {name: qs-outage, objectives: {val_accuracy: maximize, params: minimize}, pruner: pareto,
        prune_warmup_epochs: 1, trials: 3, heartbeat_interval: 1, grace_period: 5, storage_patience: 2m,
        baseline_seeds: 1, spread: false, seed: 0}
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers:
  - {name: big, arch: mlp, width: 32, epochs: 4}
student: {arch: mlp, width: 8}
train: {epochs: 8, batch_size: 64, lr: 0.01, threads: 1}
kd: {temperature: 4.0, alpha: 0.7, teachers: [big]}
search:
  kd.temperature: {type: float, low: 1, high: 8, log: true}
  student.width: {type: int, low: 2, high: 16, log: true}
"""


def test_a_quickstart_shaped_sweep_whose_database_vanishes_mid_training_completes_every_trial(
    tmp_path, monkeypatch, capsys
):
    """Issue 29 items 1 and 2 end to end: a real sweep (two objectives, the pareto pruner) on a SQLite file whose
    every SQL statement fails for 3 s from the third epoch of its second trial (the pruning checks of those epochs
    skipped, the heartbeat and the trial's writes waiting) and for 2 s as it asks for its third; the first take
    of a queued trial and the first tell lose their reply after their commit. Before, the pruning check failed the
    trial (StorageInternalError from _get_trials) and next_trial stopped the sweep."""
    from mlflow.tracking import MlflowClient

    from kdtrain.cli.commands import main
    from kdtrain.study import recovery
    from kdtrain.sweep import trial as worker_trial
    from kdtrain.tracking import client

    path = tmp_path / "optuna.db"
    sweep = tmp_path / "qs.yaml"
    sweep.write_text(textwrap.dedent(QUICKSTART_SHAPED))
    db = Database(path)
    db.lose = 2  # trial 0 taken from the queue (the base settings), trial 0 told
    trained, asked = [], []

    def distill(cfg, ds, pool, on_epoch, **kw):
        trained.append(1)

        def epoch(s):
            if len(trained) == 2 and s.epoch == 3:
                db.down(3.0)
            on_epoch(s)

        return real_distill(cfg, ds, pool, on_epoch=epoch, **kw)

    def next_trial(*a, **kw):
        asked.append(1)
        if len(asked) == 3:
            db.down(2.0)
        return real_next(*a, **kw)

    real_distill, real_next = worker_trial.distill_student, recovery.next_trial
    monkeypatch.setattr(worker_trial, "distill_student", distill)
    monkeypatch.setattr(recovery, "next_trial", next_trial)
    try:
        rc = main(["sweep", str(sweep), "--storage", f"sqlite:///{path}", "--workers", "1", "--no-report"])
    finally:
        db.close()
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert db.windows == 2 and db.refused and len(db.lost) == 2, out + err
    assert "Traceback" not in out + err and "result dropped" not in out + err, out + err
    starts = [line for line in err.splitlines() if "study's storage" in line and "is unreachable since" in line]
    ends = [line for line in out.splitlines() if "study's storage answers again" in line]
    assert len(starts) == len(ends) == 4, out + err  # the two windows and the two lost replies, each said once

    study = optuna.load_study(study_name="qs-outage", storage=search.open_storage(f"sqlite:///{path}"))
    final = study.get_trials(deepcopy=False)
    assert len(final) == 3 and {t.state.name for t in final} <= {"COMPLETE", "PRUNED"}, [t.state for t in final]
    assert final[0].user_attrs[search.T_REFERENCE] == "base settings"  # the queued trial, taken and run
    mlflow_client = MlflowClient(client.default_uri())
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("qs-outage").experiment_id],
        "tags.`kdtrain.role` = 'student' and tags.`optuna.trial` != ''",
    )
    trial_runs = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert sorted(r.info.run_name for r in trial_runs) == ["trial-0", "trial-1", "trial-2"], out
    assert {r.info.status for r in trial_runs} == {"FINISHED"}, out
