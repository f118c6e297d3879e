"""Students as MLflow models (issue 15): every finished student, baseline and teacher is an MLflow logged model
linked to its run and its final metrics; a logged student loads with mlflow.pyfunc where kdtrain cannot be
imported and predicts what the trial's model.pt predicts; `kdtrain register` puts chosen students in the Model
Registry (local store and a real `mlflow server`); each run logs its data as MLflow dataset inputs; the MLflow UI
lists the logged models in headless Chromium; `kdtrain dashboard` serves the study and stops cleanly.
Real stores only: SQLite and an Optuna journal in a temp folder, a real server on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from support import QUICK_PROFILE, TINY_SEARCH, TINY_SWEEP, chromium_driver, free_port, in_home, wait_for_http

from kdtrain.cli.commands import main
from kdtrain.study import search
from kdtrain.tracking import params
from kdtrain.tracking.client import MODEL_TAG, MODELS_VIEW, Tracker

SWEEP = textwrap.dedent(TINY_SWEEP).replace(
    "study: {name: tiny}",
    "study: {name: ship, trials: 3, seed: 0, "
    "pruner: none, baseline_seeds: 1, objectives: {val_accuracy: maximize, "
    "params: minimize}}",
) + textwrap.dedent(TINY_SEARCH)
FAST = [*QUICK_PROFILE, "--no-report"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """One tiny two-objective sweep (3 complete trials) in its own kdtrain home, shared by the tests here."""
    root = tmp_path_factory.mktemp("ship")
    (root / "ship.yaml").write_text(SWEEP)
    with in_home(root):
        assert main(["sweep", "ship.yaml", *FAST]) == 0
    return root


@pytest.fixture
def home(shipped, monkeypatch):
    monkeypatch.setenv("KDTRAIN_HOME", str(shipped / "home"))
    monkeypatch.setenv("KDTRAIN_DATA", str(shipped / "data"))
    monkeypatch.chdir(shipped)
    return shipped / "home"


def store(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def test_every_finished_run_is_a_logged_model_with_its_metrics_and_data(home):
    client = MlflowClient(store(home))
    exp = client.get_experiment_by_name("ship")
    runs = client.search_runs([exp.experiment_id])
    by_role = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("kdtrain.role"), []).append(r)
    study = optuna.load_study(study_name="ship", storage=search.open_storage(str(home / "optuna.journal")))
    complete = {t.user_attrs[search.T_RUN] for t in study.trials if t.state.name == "COMPLETE"}
    assert len(complete) == 3
    models = client.search_logged_models([exp.experiment_id])
    by_run = {m.source_run_id: m for m in models}
    assert len(by_run) == len(models)  # one model per run
    students = {r.info.run_id for r in by_role["student"]}
    assert students & set(by_run) == complete  # every finished student, no other
    for role in ("baseline", "teacher"):
        assert by_role[role] and all(r.info.run_id in by_run for r in by_role[role]), role
    for r in runs:
        m = by_run.get(r.info.run_id)
        if m is None:
            continue
        assert m.status.to_string() == "READY" if hasattr(m.status, "to_string") else str(m.status).endswith("READY")
        assert r.data.tags[MODEL_TAG] == m.model_id and m.name == r.info.run_name
        linked = {x.key: x.value for x in m.metrics}
        final_val = [p.value for p in client.get_metric_history(r.info.run_id, "val_accuracy") if p.step == 0]
        assert [linked["val_accuracy"]] == pytest.approx(final_val)  # final metrics linked, the final val once
        for key in r.data.metrics:  # linked without a second point (issue 29's held-out check: no point twice)
            steps = [p.step for p in client.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.info.run_name, key, steps)
        assert linked["params"] == r.data.metrics["params"]
        contexts = {t.value for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert contexts == {"train", "validation", "test"}
        assert {d.dataset.name for d in r.inputs.dataset_inputs} == {"synthetic"}
        assert len({d.dataset.digest for d in r.inputs.dataset_inputs}) == 3  # a digest per split


def test_a_logged_student_loads_without_kdtrain_and_predicts_what_model_pt_does(home, tmp_path):
    client = MlflowClient(store(home))
    exp = client.get_experiment_by_name("ship")
    run = client.search_runs([exp.experiment_id], "tags.`kdtrain.role` = 'student'", max_results=1)[0]
    _cfg, ds, model = params.trial_student(Tracker(store(home)), run.info.run_id)  # from model.pt
    x = ds.x_val[:64].numpy()
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["kdtrain"] = None  # any import of kdtrain fails: the model must need torch and mlflow only
        import mlflow, numpy as np
        mlflow.set_tracking_uri({store(home)!r})
        model = mlflow.pyfunc.load_model("models:/{run.data.tags[MODEL_TAG]}")
        np.save("out.npy", model.predict(np.load("x.npy")))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    # Python's own warning filters, as in the user's process: none of the warnings they show may appear (torch's
    # UserWarning and FutureWarning on loading TorchScript did: issue 24 item 8)
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (64, 4) and np.abs(got - expected).max() <= 1e-5


def test_register_the_front_with_an_alias_and_load_it(home, capsys):
    import mlflow

    assert (
        main(["register", "ship", "--pareto", "--name", "ship-student", "--alias", "champion", "--min-gain", "any"])
        == 0
    )
    out = capsys.readouterr().out
    assert "champion" in out and "models:/ship-student/1" in out
    client = MlflowClient(store(home))
    versions = client.search_model_versions("name = 'ship-student'")
    study = optuna.load_study(study_name="ship", storage=search.open_storage(str(home / "optuna.journal")))
    front = {t.number: t for t in study.best_trials}
    assert sorted(int(v.tags["optuna.trial"]) for v in versions) == sorted(front)
    best = max(front.values(), key=lambda t: t.values[0])
    champion = client.get_model_version_by_alias("ship-student", "champion")
    assert int(champion.tags["optuna.trial"]) == best.number and champion.tags["optuna.study"] == "ship"
    card = champion.description
    assert f"trial {best.number} of study `ship`" in card and "gain over the no-teacher baseline" in card
    assert "batch 1, 1 thread(s), cpu, eager" in card and "preprocessed as x = (raw * scale - mean[c]) / std[c]" in card
    # registering again adds no version; the alias loads
    assert main(["register", "ship", "--pareto", "--name", "ship-student", "--min-gain", "any"]) == 0
    assert len(client.search_model_versions("name = 'ship-student'")) == len(versions)
    mlflow.set_tracking_uri(store(home))
    try:
        pred = mlflow.pyfunc.load_model("models:/ship-student@champion").predict(np.zeros((3, 1, 16), np.float32))
    finally:
        mlflow.set_tracking_uri("")
    assert pred.shape == (3, 4)


def test_register_and_export_pareto_leave_out_students_below_the_gain_floor(home, tmp_path, capsys):
    """Issue 33 item 4: --pareto skips front students below the no-teacher baseline of their width (default) or
    below --min-gain POINTS; --min-gain any keeps the whole front; a floor nobody reaches is refused in one line."""
    client = MlflowClient(store(home))
    study = optuna.load_study(study_name="ship", storage=search.open_storage(str(home / "optuna.journal")))
    gains = {
        t.number: 100 * client.get_run(t.user_attrs[search.T_RUN]).data.metrics["kd_gain_test"]
        for t in study.best_trials
    }
    low, high = min(gains.values()), max(gains.values())
    assert low < high, gains  # the front's students differ in gain: a floor between them splits the front

    def registered(name):
        return {int(v.tags["optuna.trial"]) for v in client.search_model_versions(f"name = '{name}'")}

    floor = (low + high) / 2
    assert main(["register", "ship", "--pareto", "--name", "floored", "--min-gain", f"{floor:.6f}"]) == 0
    out = capsys.readouterr().out
    below = {n for n, g in gains.items() if g < floor}
    assert registered("floored") == set(gains) - below and below
    assert "left out" in out and all(f"{n} ({gains[n]:+.1f})" in out for n in below), out
    assert main(["register", "ship", "--pareto", "--name", "default-floor"]) == 0
    assert registered("default-floor") == {n for n, g in gains.items() if g >= 0}
    assert main(["register", "ship", "--pareto", "--name", "whole-front", "--min-gain", "any"]) == 0
    assert registered("whole-front") == set(gains)
    assert (
        main(
            [
                "register",
                "ship",
                "--trial",
                str(min(gains, key=gains.get)),
                "--name",
                "named",
                "--min-gain",
                f"{high + 1:.6f}",
            ]
        )
        == 0
    )  # --trial names what the user wants: no floor
    assert main(["export", "ship", "--pareto", "--min-gain", f"{high + 1:.6f}", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "every student on the front of 'ship' is below --min-gain" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(SystemExit) as stop:
        main(["register", "ship", "--pareto", "--name", "x", "--min-gain", "lots"])
    assert stop.value.code == 2
    assert "'lots' is not a number of points" in capsys.readouterr().err


def test_register_refuses_bad_names_and_incomplete_trials_in_one_line(home, capsys):
    assert main(["register", "ship", "--trial", "99", "--name", "x"]) == 1
    assert main(["register", "ship", "--pareto", "--name", "bad/name"]) == 1
    assert main(["register", "ship", "--pareto", "--name", "ok-name", "--alias", "latest"]) == 1
    err = capsys.readouterr().err
    assert err.count("kdtrain: error:") == 3 and "Traceback" not in err
    assert "no such trial in 'ship': 99" in err and "Names cannot contain '/'" in err and "reserved" in err


def test_register_against_a_real_mlflow_server(tmp_path, monkeypatch, shared_mlflow_server):
    import mlflow

    url = shared_mlflow_server.url  # the session's: the experiment "ship" and the model "served" are this test's
    (tmp_path / "ship.yaml").write_text(SWEEP.replace("trials: 3", "trials: 2"))
    assert main(["sweep", "ship.yaml", "--tracking-uri", url, *FAST]) == 0
    assert (
        main(
            [
                "register",
                "ship",
                "--pareto",
                "--name",
                "served",
                "--alias",
                "champion",
                "--min-gain",
                "any",
                "--tracking-uri",
                url,
            ]
        )
        == 0
    )
    mlflow.set_tracking_uri(url)
    try:
        pred = mlflow.pyfunc.load_model("models:/served@champion").predict(np.zeros((2, 1, 16), np.float32))
        models = mlflow.search_logged_models(
            experiment_ids=[mlflow.get_experiment_by_name("ship").experiment_id], output_format="list"
        )
    finally:
        mlflow.set_tracking_uri("")
    assert pred.shape == (2, 4) and len(models) >= 2 + 2  # students, baselines and teachers


def test_dashboard_serves_the_study_and_stops_cleanly(home, tmp_path):
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kdtrain.cli", "dashboard", "--study", "ship", "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies", proc, log, 120)
        studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10))
        assert [s["study_name"] for s in studies["study_summaries"]] == ["ship"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    text = log.read_text()
    assert rc == 0 and "optuna-dashboard stopped" in text and "Traceback" not in text, text
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in text


def test_dashboard_without_optuna_dashboard_says_how_to_install_it(home, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if it were not installed
    assert main(["dashboard"]) == 1
    assert "pip install 'kdtrain[dashboard]'" in capsys.readouterr().err


def test_the_mlflow_ui_lists_the_logged_models(home, tmp_path, start_mlflow_server):
    client = MlflowClient(store(home))
    exp_id = client.get_experiment_by_name("ship").experiment_id
    names = {m.name for m in client.search_logged_models([exp_id])}
    server = start_mlflow_server(tmp_path / "ui", backend_store_uri=store(home), artifacts=False)
    driver = chromium_driver(tmp_path)
    try:
        driver.get(f"{server.url}/{MODELS_VIEW.format(id=exp_id)}")
        deadline, shown = time.time() + 60, set()
        while time.time() < deadline and shown != names:
            text = driver.execute_script("return document.body.innerText")
            shown = {n for n in names if n in text}
            time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / "models.png"))
    finally:
        driver.quit()
    assert shown == names, (sorted(names - shown), text[:2000])
    assert "Agent versions" not in text  # the training-sweep view, not MLflow's GenAI one
