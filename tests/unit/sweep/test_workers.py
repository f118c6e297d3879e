"""How `kdtrain sweep` uses a machine: workers, threads and GPUs (shared.plan_workers), and the environment each
local worker process is started with (worker.spawn), tested on the CPU."""

import os
import re
import sys

import optuna
from support import load_study, mlflow_runs, run_cli, write_sweep

from kdtrain import config
from kdtrain.shared import plan_workers
from kdtrain.study import search
from kdtrain.sweep import processes


def test_auto_on_cpus_is_one_single_threaded_worker_per_cpu():
    assert plan_workers("auto", 2, []) == (2, 1, [{}, {}])
    assert plan_workers("auto", 16, [])[:2] == (16, 1)
    assert plan_workers("auto", 16, [], train_threads=4)[:2] == (4, 1)  # train.threads is the budget
    assert plan_workers("auto", 16, [], trials=3)[:2] == (3, 5)  # no worker without a trial
    assert plan_workers("auto", 16, [], memory_gb=4.0)[:2] == (2, 8)  # 1.5 GB a worker
    assert plan_workers("auto", 1, [])[:2] == (1, 1)


def test_auto_with_gpus_gives_each_worker_its_own_gpu():
    n, threads, envs = plan_workers("auto", 16, ["0", "1"])
    assert (n, threads) == (8, 2)  # 4 small trials per GPU, the CPUs shared among them
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"] * 4
    n, threads, envs = plan_workers("auto", 2, ["3"])  # CUDA_VISIBLE_DEVICES=3: the one GPU this process sees
    assert (n, threads, envs) == (2, 1, [{"CUDA_VISIBLE_DEVICES": "3"}] * 2)
    n, _, envs = plan_workers(3, 8, ["0", "1"])  # a number: round robin over the GPUs
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]


def test_a_number_splits_the_cpu_budget_as_before():
    assert plan_workers(1, 2, []) == (1, 2, [{}])
    assert plan_workers(4, 2, [])[:2] == (4, 1)


def test_spawned_workers_start_with_their_gpu_and_the_stores_in_their_environment(tmp_path, monkeypatch):
    """worker.spawn's command and environment, as the process receives them: a stand-in for the Python
    interpreter writes both into the worker's log (the real command runs in the sweep tests)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\nenv\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    storage = f"{tmp_path / 'optuna.journal'}"
    envs = [{"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "0"}]
    procs = processes.spawn("st", envs, 3, storage, "sqlite:///x.db", None, tmp_path / "logs", first_index=1)
    assert [p.wait(timeout=30) for p, _ in procs] == [0, 0]
    seen = []
    for i, (_, log) in enumerate(procs, start=1):
        assert log == tmp_path / "logs" / f"st-worker{i}.log"
        lines = log.read_text().splitlines()
        assert lines[0] == f"ARGS -m kdtrain.cli worker --study st --threads 3 --worker-index {i}"
        seen.append(dict(x.split("=", 1) for x in lines[1:] if "=" in x))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in seen] == ["1", "0"]
    assert all(e["KDTRAIN_STORAGE"] == storage and e["MLFLOW_TRACKING_URI"] == "sqlite:///x.db" for e in seen)


def test_workers_flag_is_checked(tmp_path):
    p = write_sweep(tmp_path)
    for bad, says in (("-1", "must be auto or >= 0"), ("many", "expected auto or a number")):
        r = run_cli("sweep", p, "--workers", bad)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_sweep_with_auto_workers_runs_one_single_threaded_worker_per_cpu(tmp_path):
    p = write_sweep(tmp_path, **{"trials: 3": "trials: 4", "lr: 0.01, threads: 1}": "lr: 0.01}"})
    cpus = len(os.sched_getaffinity(0))
    r = run_cli("sweep", p, "--no-report", "--workers", "auto")
    assert r.returncode == 0, r.stdout + r.stderr
    n = min(cpus, 4)
    assert f"{n} worker(s), 1 CPU thread(s) each" in r.stdout
    logs = sorted((tmp_path / "home" / "logs").glob("tiny-worker*.log")) if n > 1 else []
    assert len(logs) == n - 1
    assert "Traceback" not in r.stdout + r.stderr + "".join(x.read_text() for x in logs)


def test_two_workers_each_get_half_the_threads(tmp_path):
    p = write_sweep(tmp_path, **{"lr: 0.01, threads: 1}": "lr: 0.01}", "trials: 3}": "trials: 4, pruner: none}"})
    assert config.load(p).train.threads == 0  # the file leaves the threads to kdtrain
    home = tmp_path / "home"
    r = run_cli(
        "sweep",
        p,
        "--workers",
        "2",
        "--no-report",
        env={"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(tmp_path / "data")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert f"2 worker(s), {expected} CPU thread(s) each; this process and 1 more, logs in {home / 'logs'}" in r.stdout
    log = (home / "logs" / "tiny-worker1.log").read_text()  # the sweep's own process is worker 0
    m = re.search(r"worker pid (\d+) on \S+ joined study tiny", log)
    assert m, log
    study = load_study(home)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 4 and len({t.user_attrs[search.T_PID] for t in done} - {int(m[1])}) <= 1  # two workers
    df = mlflow_runs(home, "tiny")
    trained = df[df["tags.kdtrain.role"].isin(["student", "baseline"])]
    assert len(trained) >= 5 and (trained["params.train.threads"] == str(expected)).all()
