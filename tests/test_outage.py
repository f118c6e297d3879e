"""Stores that go away mid-sweep and come back (issue 22, items 12 and 13): a real PostgreSQL of the test's own,
stopped and started under a running sweep, and a real `mlflow server` stopped and restarted on the same store.

The PostgreSQL is a private cluster (initdb into a temporary folder, its own port), so that stopping it does
not touch the server the other integration tests share; it needs Debian's PostgreSQL binaries, which
`.ci/postgres` installs."""

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import stop_group

from kdtrain.study import search

pytestmark = pytest.mark.postgres

SWEEP = """
study: {{name: {name}, trials: {trials}, heartbeat_interval: 1, grace_period: 3, storage_patience: {patience},
         baseline_seeds: 1,
         objectives: {objectives}, pruner: {pruner}, seed: 0}}
data: {{name: synthetic, size: 6000, val_fraction: 0.2, seed: 1}}
teachers:
  - {{name: big, arch: mlp, width: 32, epochs: 4}}
student: {{arch: mlp, width: 8}}
train: {{epochs: {epochs}, batch_size: 32, lr: 0.01, threads: 1}}
kd: {{temperature: 4.0, alpha: 0.7, teachers: [big]}}
search:
  kd.temperature: {{type: float, low: 1, high: 20, log: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone: initdb, start, stop (fast: clients cut off), start again."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            if os.environ.get("KDTRAIN_REQUIRE_INTEGRATION") == "1":
                pytest.fail("no PostgreSQL binaries under /usr/lib/postgresql: run .ci/postgres")
            pytest.skip("no PostgreSQL binaries (Debian's postgresql package; see .ci/postgres)")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="kdtrain-pg-"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "kd", "--no-sync")
        self.url = f"postgresql+psycopg://kd@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres():
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.remove()


QUICKSTART = {"objectives": "{val_accuracy: maximize, params: minimize}", "pruner": "pareto"}
"""sweeps/quickstart.yaml's objectives and pruner: its pruning check reads the trials every epoch (issue 29 item 1)."""


def sweep_file(
    tmp_path: Path,
    name: str,
    trials: int,
    patience: str,
    epochs: int,
    objectives: str = "{val_accuracy: maximize}",
    pruner: str = "none",
) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        textwrap.dedent(
            SWEEP.format(
                name=name, trials=trials, patience=patience, epochs=epochs, objectives=objectives, pruner=pruner
            )
        )
    )
    return p


def start_sweep(sweep: Path, storage: str, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = open(tmp_path / f"sweep-{time.time_ns()}.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdtrain.cli", "sweep", str(sweep), "--storage", storage, "--workers", "1", *extra],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    proc.log = out
    return proc


@contextlib.contextmanager
def sweeping(sweep: Path, storage: str, tmp_path: Path, *extra: str):
    """A running `kdtrain sweep`, killed with its group if the test fails before it ends."""
    proc = start_sweep(sweep, storage, tmp_path, *extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def one_outage_line(out: str) -> str:
    """The one line that says a store is unreachable (not one per heartbeat or write), and no traceback."""
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "is unreachable since" in line]
    assert len(lines) == 1, out
    return lines[0]


def output(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def wait_for_running(url: str, name: str, proc, timeout: float = 240) -> int:
    """The number of a trial past trial 0 once it is RUNNING (the sweep is training it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)
        try:
            study = optuna.load_study(study_name=name, storage=search.open_storage(url))
            running = [
                t.number
                for t in study.get_trials(deepcopy=False)
                if t.state.name == "RUNNING" and t.number and t.params
            ]  # its settings drawn: it trains
            if running:
                return running[0]
        except (KeyError, Exception):  # noqa: BLE001 - the study not yet created
            pass
        time.sleep(0.3)
    raise AssertionError(f"no trial started within {timeout} s:\n{output(proc)}")


def states(url: str, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=search.open_storage(url))
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def test_a_database_outage_inside_the_patience_window_costs_a_warning_not_the_sweep(postgres, tmp_path):
    sweep = sweep_file(tmp_path, "pg-blip", trials=2, patience="2m", epochs=60, **QUICKSTART)
    with sweeping(sweep, postgres.url, tmp_path) as proc:
        wait_for_running(postgres.url, "pg-blip", proc)
        time.sleep(1.5)  # a heartbeat or two recorded, the trial training
        postgres.stop()
        time.sleep(6)
        postgres.start()
        assert proc.wait(timeout=300) == 0, output(proc)
    out = output(proc)
    one_outage_line(out)
    assert "answers again" in out, out
    # nothing failed, nothing re-queued: the epochs whose pruning check met the database away went unchecked
    assert set(states(postgres.url, "pg-blip").values()) <= {"COMPLETE", "PRUNED"}, out
    assert len(states(postgres.url, "pg-blip")) == 2, out


def test_a_database_outage_past_the_patience_window_stops_with_one_line_and_the_next_run_recovers(postgres, tmp_path):
    sweep = sweep_file(tmp_path, "pg-gone", trials=2, patience="4s", epochs=60)
    with sweeping(sweep, postgres.url, tmp_path) as proc:
        victim = wait_for_running(postgres.url, "pg-gone", proc)
        postgres.stop()
        rc = proc.wait(timeout=300)
    out = output(proc)
    assert rc != 0, out
    one_outage_line(out)
    errors = [line for line in out.splitlines() if line.startswith("kdtrain: error:")]
    assert len(errors) == 1 and "storage_patience" in errors[0], out
    postgres.start()
    assert states(postgres.url, "pg-gone")[victim] == "RUNNING"  # left for recovery, as a killed worker's
    time.sleep(4)  # past study.grace_period (3 s) without a heartbeat
    with sweeping(sweep, postgres.url, tmp_path) as again:
        assert again.wait(timeout=300) == 0, output(again)
    final = optuna.load_study(study_name="pg-gone", storage=postgres.url).get_trials(deepcopy=False)
    failed = [t for t in final if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [victim], output(again)
    assert "no heartbeat" in failed[0].user_attrs["fail_reason"]
    assert sum(t.state.name == "COMPLETE" for t in final) == 2
    assert any(t.user_attrs.get("kdtrain.requeued_from") == victim for t in final)  # its settings ran again


# --------------------------------------------------------------------------- the tracking server (item 12)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a SQLite file and an artifacts folder, stopped and started again
    on the same port and store."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=2).status == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, (self.root / "server.log").read_text()[-3000:]
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    # MLflow's own retries (minutes by default) shortened: the outage is what is tested, not their length
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    yield server
    server.stop()


WRITER = """
import sys, torch
from kdtrain.tracking.client import Tracker
from kdtrain.distill.train import EpochStats
t = Tracker(sys.argv[1])
exp = t.experiment("kept")
run = t.start(exp, "trial-0", "student", params={"kd.alpha": 0.5})
print(run, flush=True)
sys.stdin.readline()  # the test stops the server here
t.labels = {"study": "kept", "trial": 0}
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
history = [EpochStats(epoch=e, epochs=2, train_loss=1.0 / e, kd_loss=0.5, ce_loss=0.5, val_accuracy=0.4 + e / 10,
                      seconds=0.1, lr=0.01) for e in (1, 2)]
t.log_metrics(run, {"params": 68}, history)
mid = t.log_model(run, exp, "trial-0", model, torch.zeros(2, 1, 16))
assert mid.startswith("outbox:"), mid
t.log_metrics(run, {"val_accuracy": 0.6}, model_id=mid)
t.log_state_dict(run, model.state_dict())
t.set_tags(run, {"optuna.state": "COMPLETE"})
t.end(run)
print("kept", len(t.outbox.entries()), flush=True)
"""


def test_writes_a_stopped_tracking_server_missed_are_kept_and_sent_in_order_once_by_the_next_run(
    mlflow_server, tmp_path
):
    """A worker that exits while holding unsent writes: the next kdtrain run on this machine sends them."""
    from mlflow.tracking import MlflowClient

    from kdtrain.tracking import client

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, mlflow_server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = writer.stdout.readline().strip()
    mlflow_server.stop()
    out, err = writer.communicate("go\n", timeout=300)
    assert writer.returncode == 0, err
    assert out.strip() == "kept 6", out + err  # metrics, model, metrics, state dict, tags, end
    assert len([line for line in err.splitlines() if "is unreachable since" in line]) == 1, err
    assert "Traceback" not in err
    assert client.kept_trials(mlflow_server.url, "kept") == [0]

    mlflow_server.start()
    t = client.Tracker(mlflow_server.url)  # the next run: its first flush sends them
    assert t.flush() and t.outbox.entries() == []
    assert client.kept_trials(mlflow_server.url, "kept") == []
    mlflow_client = MlflowClient(mlflow_server.url)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    assert run.data.metrics["val_accuracy"] == pytest.approx(0.6) and run.data.metrics["params"] == 68
    assert sorted(m.step for m in mlflow_client.get_metric_history(run_id, "val_accuracy")) == [0, 1, 2]  # each once
    model_id = run.data.tags[client.MODEL_TAG]
    assert mlflow_client.get_logged_model(model_id).status.name == "READY"
    linked = {m.key: m.value for m in mlflow_client.get_logged_model(model_id).metrics or []}
    assert linked.get("val_accuracy") == 0.6  # the placeholder became the real id
    assert "model.pt" in [f.path for f in mlflow_client.list_artifacts(run_id)]
    assert client.Tracker(mlflow_server.url).flush()  # nothing left, nothing sent twice:
    assert len(mlflow_client.search_runs([run.info.experiment_id])) == 1
    assert len(mlflow_client.get_metric_history(run_id, "params")) == 1


def test_a_sweep_survives_its_tracking_server_stopped_and_restarted_mid_trial(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = sweep_file(tmp_path, "ml-blip", trials=2, patience="5m", epochs=60)
    storage = str(tmp_path / "optuna.journal")
    with sweeping(sweep, storage, tmp_path, "--tracking-uri", mlflow_server.url) as proc:
        wait_for_running(storage, "ml-blip", proc)
        mlflow_server.stop()
        deadline = time.time() + 300
        while "is unreachable since" not in output(proc):
            assert proc.poll() is None and time.time() < deadline, output(proc)
            time.sleep(0.5)
        time.sleep(3)
        mlflow_server.start()
        assert proc.wait(timeout=300) == 0, output(proc)
    out = output(proc)
    one_outage_line(out)
    assert re.search(r"answers again .*sent \d+ kept write", out), out
    assert set(states(storage, "ml-blip").values()) == {"COMPLETE"}, out
    mlflow_client = MlflowClient(mlflow_server.url)
    exp = mlflow_client.get_experiment_by_name("ml-blip")
    runs = mlflow_client.search_runs([exp.experiment_id], "tags.`kdtrain.role` = 'student'")
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"], out
    for r in runs:
        assert r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics, (r.info.run_name, out)
        assert "model.pt" in [f.path for f in mlflow_client.list_artifacts(r.info.run_id)], r.info.run_name
