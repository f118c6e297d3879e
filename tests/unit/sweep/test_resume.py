"""A study run by more than one command: resumed studies propose new settings, --trials is the study's total and
never silently shrinks a running sweep, and status tells a dead worker's trial from a running one. Real journal
files and real `kdtrain` processes."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from support import TINY_SEARCH, run_cli, spawn_cli, write_sweep

from kdtrain.config import sweepfile
from kdtrain.study import search


def _env(tmp_path):
    return {"KDTRAIN_HOME": str(tmp_path / "home"), "KDTRAIN_DATA": str(tmp_path / "data")}


def _study(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=search.open_storage(str(tmp_path / "home" / "optuna.journal")))


def test_a_resumed_study_proposes_new_settings_instead_of_replaying_its_first_run(tmp_path):
    env = _env(tmp_path)
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 3, seed: 0"})
    for total in ("3", "6"):  # stopped after 3 trials, then the same study resumed to 6
        r = run_cli("sweep", p, "--trials", total, "--workers", "1", "--no-report", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    params = [tuple(sorted(t.params.items())) for t in sorted(_study(tmp_path).trials, key=lambda t: t.number)]
    assert len(params) == 6
    assert len(set(params)) == 6, f"repeated settings: {params}"


def test_trials_is_the_total_a_met_target_trains_nothing_and_says_how_to_add(tmp_path):
    env = _env(tmp_path)
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 2"})
    assert run_cli("sweep", p, "--workers", "1", "--no-report", env=env).returncode == 0
    r = run_cli("sweep", p, "--trials", "1", "--workers", "1", "--no-report", env=env)
    assert r.returncode == 0, r.stderr
    assert "target 2 -> 1 trials (--trials 1)" in r.stdout
    assert "already has 2 finished trials" in r.stdout and "--trials 12" in r.stdout
    assert len(_study(tmp_path).trials) == 2


def _wait_for(cond, what, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_command_cannot_shrink_a_running_sweep_and_a_larger_total_reaches_it(tmp_path):
    env = _env(tmp_path)
    # 8 trials of a few seconds each: the other commands meet the first one running
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 8", "epochs: 4,": "epochs: 400,"})
    log = tmp_path / "first.log"
    first = spawn_cli("sweep", p, "--workers", "1", "--no-report", log=log, env=env, new_session=True)
    try:
        journal = tmp_path / "home" / "optuna.journal"
        _wait_for(lambda: journal.exists() and search.counts(_study(tmp_path))["DONE"] >= 1, "the first trial")
        r = run_cli("sweep", p, "--trials", "2", "--workers", "1", "--no-report", env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "is being run toward 8 trials" in r.stderr and "--trials 8" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "data synthetic" not in r.stdout  # refused before any work
        assert search.target(_study(tmp_path)) == 8
        r = run_cli("sweep", p, "--trials", "10", "--workers", "0", env=env)  # only sets the total
        assert r.returncode == 0, r.stdout + r.stderr
        assert "target 8 -> 10 trials (--trials 10); the running sweep takes the new target" in r.stdout
        _wait_for(lambda: "its target changed from 8 to 10 trials" in log.read_text(), "the first sweep to say so")
        first.send_signal(signal.SIGTERM)  # enough: it took the new target
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert search.target(_study(tmp_path)) == 10


def test_status_says_a_trial_whose_local_worker_is_dead_is_not_running(tmp_path):
    cfg = sweepfile.load(write_sweep(tmp_path))
    storage = search.open_storage(str(tmp_path / "j.journal"))
    study = search.create_or_open(cfg, storage, "tiny", 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that existed and is gone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, alive.pid):
            t = study.ask()
            search.set_trial_attr(t, search.T_HOST, __import__("socket").gethostname())
            search.set_trial_attr(t, search.T_PID, pid)
        r = run_cli("status", "--study", "tiny", "--storage", str(tmp_path / "j.journal"))
    finally:
        alive.kill()
        alive.wait()
    assert r.returncode == 0, r.stderr
    assert f"trial 0: its worker on {__import__('socket').gethostname()} (pid {dead.pid}) is gone" in r.stdout
    assert "trial 1 running for" in r.stdout and f"pid {alive.pid}" in r.stdout


def test_sigterm_stops_a_sweep_like_ctrl_c(tmp_path):
    env = _env(tmp_path)
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 4", "epochs: 4,": "epochs: 5000,"})
    sweep = spawn_cli(
        "sweep", p, "--workers", "1", "--no-report", log=tmp_path / "sweep.log", env=env, new_session=True
    )
    try:
        journal = tmp_path / "home" / "optuna.journal"
        _wait_for(lambda: journal.exists() and search.counts(_study(tmp_path))["RUNNING"] >= 1, "a running trial")
        time.sleep(1)
        sweep.send_signal(signal.SIGTERM)  # to the sweep alone, as `timeout` does
        sweep.wait(timeout=120)
        out = err = sweep.output()
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 130, (sweep.returncode, out, err)
    assert "stopped:" in err and "Run the same command again to resume" in err and "Traceback" not in err
    study = _study(tmp_path)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs[search.T_FAIL_REASON] == "interrupted: stopped by SIGTERM"
    requeued = [t for t in study.trials if t.state.name == "WAITING"]
    assert [t.system_attrs["fixed_params"] for t in requeued] == [failed[0].params]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bad_flags_are_refused_before_any_data_loads_with_exit_code_2(tmp_path):
    env = _env(tmp_path)
    p = write_sweep(tmp_path)
    r = run_cli("sweep", p, "--set", "train.device=cuda", env=env)
    assert r.returncode == 2 and "train.device: cuda, but no CUDA device is available" in r.stderr, r.stderr
    assert "data synthetic" not in r.stdout and "Traceback" not in r.stderr
    r = run_cli("sweep", p, "--trials", "-3", env=env)
    assert r.returncode == 2 and "--trials must be >= 1 (got -3)" in r.stderr, r.stderr
