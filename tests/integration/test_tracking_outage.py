"""A real `mlflow server` stopped and restarted under a writer and under a running sweep (issue 22, item 12): the
writes it missed are kept and sent again, in order, once."""

import re
import subprocess
import sys
import time

import pytest
from support.outages import one_outage_line, output, paused, states, sweep_file, sweeping, wait_for_running


@pytest.fixture
def mlflow_server(start_mlflow_server, tmp_path, monkeypatch):
    # MLflow's own retries (minutes by default) shortened: the outage is what is tested, not their length
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return start_mlflow_server(tmp_path / "mlflow-server")


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
    mlflow_server.stop(grace=1)
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


def wait_for_student_run(mlflow_client, study: str, name: str, proc, timeout: float = 240) -> str:
    """The id of the sweep's student run `name` once the tracking server has it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)
        exp = mlflow_client.get_experiment_by_name(study)
        runs = mlflow_client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'") if exp else []
        if runs:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no run {name} within {timeout} s:\n{output(proc)}")


def test_a_sweep_survives_its_tracking_server_stopped_and_restarted_mid_trial(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = sweep_file(tmp_path, "ml-blip", trials=2, patience="5m", epochs=45)
    storage = str(tmp_path / "optuna.journal")
    with sweeping(sweep, storage, tmp_path, "--tracking-uri", mlflow_server.url) as proc:
        wait_for_running(storage, "ml-blip", proc)
        # trial 1's run created and the sweep held still while the server goes: its end writes meet the outage
        # (on a busy machine the trial could otherwise finish before the server is down, or start its run during
        # it, and nothing would be kept)
        running = wait_for_student_run(MlflowClient(mlflow_server.url), "ml-blip", "trial-1", proc)
        with paused(proc):
            assert MlflowClient(mlflow_server.url).get_run(running).info.status == "RUNNING", output(proc)
            mlflow_server.stop(grace=1)  # gone, as a crashed server is
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
