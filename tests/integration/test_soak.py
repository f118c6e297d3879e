"""A local soak: four workers on the default journal store and SQLite MLflow store."""

import optuna
import pytest
from support import run_cli, spawn_cli
from support.integration import sweep_file

from kdtrain.study import search


@pytest.mark.slow
def test_soak_four_local_workers_forty_trials_on_the_journal(tmp_path):
    """4 workers x 40 tiny trials on the default journal and SQLite MLflow store: no failure, no loss, no
    duplicate, every MLflow run present and finished."""
    trials = 40
    p = sweep_file(tmp_path, trials, epochs=2, pruner="auto")  # the pareto pruner under 4 workers too
    home = tmp_path / "home"
    env = {"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(tmp_path / "data")}
    # the study and its teachers first, then 4 workers started together: `kdtrain sweep --workers 4` would run its
    # own process as worker 0 at once, ahead of the 3 it spawns, and under load it can finish alone
    r = run_cli("sweep", p, "--workers", "0", "--no-report", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    procs = [spawn_cli("worker", "--study", "tiny", log=tmp_path / f"worker-{i}.log", env=env) for i in range(4)]
    try:
        for proc in procs:
            proc.wait(timeout=900)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outs = [proc.output() for proc in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outs)
    assert not any("Traceback" in o for o in outs)

    study = optuna.load_study(study_name="tiny", storage=search.open_storage(str(home / "optuna.journal")))
    states = [t.state.name for t in study.trials]
    assert len(states) == trials and set(states) <= {"COMPLETE", "PRUNED"}, states  # no failed, extra or running
    assert sorted(t.number for t in study.trials) == list(range(trials))
    pids = {t.user_attrs["kdtrain.pid"] for t in study.trials}
    assert len(pids) == 4  # every worker took part

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["tiny"], max_results=10000)
    students = df[df["tags.kdtrain.role"] == "student"]
    assert sorted(students["tags.optuna.trial"].astype(int)) == list(range(trials))  # each once
    assert (students["status"] == "FINISHED").all()
    assert set(students["run_id"]) == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert students["metrics.val_accuracy"].notna().all() and students["metrics.latency_ms_p50"].notna().all()
    assert len(df[df["tags.kdtrain.role"] == "teacher"]) == 2
    assert df[df["tags.kdtrain.role"] == "baseline"]["tags.kdtrain.baseline_key"].is_unique
    assert not (df["status"] == "RUNNING").any()
