"""Several machines, for real: a PostgreSQL study, an `mlflow server` backed by PostgreSQL, worker processes
that each have their own kdtrain home (as separate machines would), SIGKILL in mid-trial.

PostgreSQL comes from $KDTRAIN_TEST_POSTGRES (a URL whose role may create databases; `.ci/postgres` starts
Debian's server and prints one). Without it these tests skip, unless $KDTRAIN_REQUIRE_INTEGRATION=1 (CI),
where a missing server is a failure.
"""

import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import optuna
import pytest
from support import MlflowServer, run_cli, spawn_cli
from support.integration import server_runs, sweep_file

from kdtrain.study import search

# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def pg_url():
    url = os.environ.get("KDTRAIN_TEST_POSTGRES")
    if not url:
        if os.environ.get("KDTRAIN_REQUIRE_INTEGRATION") == "1":
            pytest.fail("KDTRAIN_TEST_POSTGRES is not set: start PostgreSQL with .ci/postgres")
        pytest.skip("no PostgreSQL: set KDTRAIN_TEST_POSTGRES (see .ci/postgres)")
    return url


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def new_database(pg_url):
    """A factory of fresh databases on the test server (dropped afterwards)."""
    made = []

    def make() -> str:
        name = f"kdtest_{uuid.uuid4().hex[:10]}"
        _admin(pg_url, f"create database {name}")
        made.append(name)
        return pg_url.rsplit("/", 1)[0] + "/" + name

    yield make
    for name in made:
        _admin(pg_url, f"drop database if exists {name} with (force)")


@pytest.fixture(scope="module")
def mlflow_server(new_database, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, its runs in PostgreSQL, its artifacts proxied to a folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(root, backend_store_uri=new_database()) as server:
        yield server.url, root


# --------------------------------------------------------------------------- the kill test


def test_two_workers_on_postgres_and_a_killed_worker_is_retried_by_heartbeat(tmp_path, new_database, mlflow_server):
    """Two `kdtrain worker` processes (each with its own home, like two machines) share one PostgreSQL study
    and one MLflow server; one is SIGKILLed in mid-trial; the other fails that trial by heartbeat, runs its
    re-queued copy and completes the study. Nothing is lost or doubled."""
    trials = 6
    storage, (server, _) = new_database(), mlflow_server
    p = sweep_file(tmp_path, trials, size=3000, epochs=30)
    hb = ["--set", "study.heartbeat_interval=1", "--set", "study.grace_period=4"]
    env = {"KDTRAIN_HOME": str(tmp_path / "launcher"), "KDTRAIN_DATA": str(tmp_path / "data")}
    r = run_cli("sweep", p, *hb, "--storage", storage, "--tracking-uri", server, "--workers", "0", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is ready" in r.stdout and "KDTRAIN_STORAGE='postgresql://kdtrain:***@" in r.stdout
    assert "kdtrain worker --study tiny" in r.stdout and "MLFLOW_TRACKING_URI" not in r.stdout

    def worker(name: str, **extra):
        wenv = {
            "KDTRAIN_HOME": str(tmp_path / name),
            "KDTRAIN_DATA": str(tmp_path / "data"),
            "KDTRAIN_STORAGE": storage,
            **extra,
        }
        return spawn_cli("worker", "--study", "tiny", "--threads", "1", log=tmp_path / f"{name}.log", env=wenv)

    # b is given nothing but the study name and the storage: the MLflow server is recorded in the study
    a, b = worker("machine-a", MLFLOW_TRACKING_URI=server), worker("machine-b")
    study = optuna.load_study(study_name="tiny", storage=search.open_storage(storage))
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and a.poll() is None:
        time.sleep(0.2)
        # count the finished trials first, then look for a's running one: read the other way round, a trial
        # finishing between the two reads was both the victim (running) and the one done (seen in CI)
        done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        running = [
            t
            for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get("kdtrain.pid") == a.pid and "mlflow_run_id" in t.user_attrs
        ]
        if running and done >= 1:  # both workers have been sharing the study for a while
            victim = running[0]
    assert victim is not None, (tmp_path / "machine-a.log").read_text()[-3000:]
    a.send_signal(signal.SIGKILL)
    a.wait()
    try:
        assert b.wait(timeout=300) == 0, (tmp_path / "machine-b.log").read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    b_text = (tmp_path / "machine-b.log").read_text()
    assert f"mlflow: {server})" in b_text
    assert f"trial {victim.number}: its worker is gone; failed and re-queued" in b_text
    for name in ("machine-a", "machine-b"):  # the launcher's teachers, fetched from MLflow: none trained again
        text = (tmp_path / f"{name}.log").read_text()
        assert "teacher big: fetched from MLflow run" in text and "teacher conv: fetched" in text, text
        assert "training mlp" not in text and "training cnn1d" not in text

    study = optuna.load_study(study_name="tiny", storage=search.open_storage(storage))
    trials_now = study.get_trials()
    complete = [t for t in trials_now if t.state.name == "COMPLETE"]
    assert len(complete) == trials  # exact: the killed trial did not count, nothing ran twice
    failed = study.trials[victim.number]
    assert failed.state.name == "FAIL" and "no heartbeat" in failed.user_attrs["fail_reason"]
    assert f"pid {a.pid}" in failed.user_attrs["fail_reason"]
    retry = [t for t in trials_now if t.user_attrs.get("kdtrain.requeued_from") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == victim.params
    assert retry[0].user_attrs["kdtrain.pid"] == b.pid
    assert {t.user_attrs["kdtrain.pid"] for t in complete} <= {a.pid, b.pid}
    assert all(t.user_attrs["kdtrain.host"] == socket.gethostname() for t in trials_now if t.params)
    assert [t.state.name for t in trials_now].count("RUNNING") == 0

    df = server_runs(server, "tiny")
    assert not (df["status"] == "RUNNING").any(), df[["tags.mlflow.runName", "status"]]
    students = df[df["tags.kdtrain.role"] == "student"]
    for t in complete:  # every complete trial has exactly one finished run
        mine = students[students["tags.optuna.trial"] == str(t.number)]
        assert len(mine) == 1 and mine["status"].iloc[0] == "FINISHED", t.number
        assert mine["run_id"].iloc[0] == t.user_attrs["mlflow_run_id"]
        assert mine["tags.kdtrain.pid"].iloc[0] == str(t.user_attrs["kdtrain.pid"])
    killed = students.set_index("run_id").loc[victim.user_attrs["mlflow_run_id"]]
    assert killed["status"] == "KILLED" and killed["tags.optuna.state"] == "FAIL"
    assert len(students) == trials + 1
    # two "machines" each trained the teachers, but the study logged each teacher and baseline once
    assert sorted(df[df["tags.kdtrain.role"] == "teacher"]["tags.mlflow.runName"]) == ["teacher-big", "teacher-conv"]
    baselines = df[df["tags.kdtrain.role"] == "baseline"]
    whole = baselines[baselines["status"] == "FINISHED"]
    assert whole["tags.kdtrain.baseline_key"].is_unique and set(whole["tags.kdtrain.baseline_key"]) == set(
        baselines["tags.kdtrain.baseline_key"]
    ), baselines[["tags.kdtrain.baseline_key", "status"]]
    # a (killed) may die while it logs a baseline under the study lock: b closes that half-written run as KILLED,
    # saying why, and logs the baseline again (seen under a loaded run of the suite)
    partial = baselines[baselines["status"] != "FINISHED"]
    assert len(partial) <= 1, partial[["tags.kdtrain.baseline_key", "status"]]
    for _, run in partial.iterrows():
        assert run["status"] == "KILLED" and run["tags.fail_reason"] == "its worker died while logging it; logged again"
    parent = df[df["tags.kdtrain.role"] == "sweep"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"


# --------------------------------------------------------------------------- secrets


def test_passwords_never_leave_the_url(tmp_path, new_database, mlflow_server):
    """A sweep on PostgreSQL with a password, through the tracking server, two local workers, then status and
    report: the password is in no output, no log, no MLflow param/tag/artifact, no report and not in the study."""
    storage, (server, artifacts) = new_database(), mlflow_server
    password = storage.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert len(password) >= 6
    tracking = server.replace("http://", f"http://someone:{password}@")  # credentials in the tracking URI too
    p = sweep_file(tmp_path, 3)
    env = {"KDTRAIN_HOME": str(tmp_path / "home"), "KDTRAIN_DATA": str(tmp_path / "data")}
    outputs = []
    for args in (
        [
            "sweep",
            p,
            "--study",
            "secret",
            "--storage",
            storage,
            "--tracking-uri",
            tracking,
            "--workers",
            "2",
            "--report-dir",
            tmp_path / "reports",
        ],
        ["status", "--storage", storage],
        ["report", "secret", "--storage", storage, "--tracking-uri", tracking, "--out", tmp_path / "r2"],
    ):
        r = run_cli(*args, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        outputs.append(r.stdout + r.stderr)
    assert "***@127.0.0.1" in outputs[0]  # the storage is shown, redacted
    for text in outputs:
        assert password not in text

    def leaks(folder: Path) -> list[str]:
        return [str(f) for f in folder.rglob("*") if f.is_file() and password.encode() in f.read_bytes()]

    files = list((tmp_path / "reports").rglob("*")) + list((tmp_path / "home" / "logs").rglob("*.log"))
    assert any(f.name == "index.html" for f in files) and any(f.suffix == ".log" for f in files)
    assert leaks(tmp_path / "reports") == [] and leaks(tmp_path / "r2") == [] and leaks(tmp_path / "home") == []
    assert leaks(artifacts / "artifacts") == []  # every artifact the server holds (reports, configs, models)

    df = server_runs(server, "secret")
    assert len(df) >= 3 and password not in df.to_csv()  # params, tags and metrics of every run
    import mlflow

    exp = mlflow.MlflowClient(server).get_experiment_by_name("secret")
    assert password not in json.dumps(dict(exp.tags)) + str(exp.artifact_location)

    # every row of every table of the Optuna database: study and trial attributes, params, heartbeats
    import psycopg

    with psycopg.connect(storage) as conn:
        tables = [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")]
        stored = "\n".join(str(row) for t in tables for row in conn.execute(f'select t::text from "{t}" t'))
    assert "kdtrain.config" in stored and "trial_heartbeats" in tables and password not in stored


def test_wrong_database_password_is_one_clear_error(tmp_path, pg_url):
    wrong = pg_url.split("://", 1)[0] + "://kdtrain:Wrong-Pw-4242@" + pg_url.split("@", 1)[1]
    p = sweep_file(tmp_path, 2)
    r = run_cli("sweep", p, "--storage", wrong, env={"KDTRAIN_HOME": str(tmp_path / "home")})
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.count("kdtrain: error:") == 1
    assert "password authentication failed" in r.stderr and "kdtrain:***@" in r.stderr
    assert "Wrong-Pw-4242" not in r.stdout + r.stderr
    assert not (tmp_path / "home").exists()
