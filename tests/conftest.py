import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # the suite runs on small CPUs; one thread keeps runs repeatable and quick
# the `mlflow server`s the tests start need none of MLflow 3's job runner (GenAI jobs): without it a server is
# 2 processes instead of 10 and ~10 s less CPU to start (`kdtrain ui` turns it off itself; test_new_user checks)
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# `kdtrain sweep` runs one worker per CPU by default; the suite already runs one pytest worker per CPU, so its sweeps
# run one worker each (and repeat their trials exactly) unless a test asks for more (test_workers tests auto)
os.environ.setdefault("KDTRAIN_WORKERS", "1")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test gets its own kdtrain home (store and caches) and data root."""
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; keep it from leaking into later tests' subprocesses
    # (setenv first so that the undo removes a value mlflow sets during the test)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("KDTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KDTRAIN_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_SWEEP = """
study: {name: tiny}
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers:
  - {name: big, arch: mlp, width: 64, epochs: 8}
  - {name: conv, arch: cnn1d, width: 8, epochs: 4}
student: {arch: mlp, width: 8}
train: {epochs: 4, batch_size: 64, lr: 0.01, threads: 1}
kd: {temperature: 4.0, alpha: 0.7, teachers: [big]}
"""

TINY_SEARCH = """
search:
  kd.temperature: {type: float, low: 1, high: 20, log: true}
  kd.alpha: {type: float, low: 0, high: 1}
  student.width: {type: int, low: 2, high: 16, log: true}
  kd.teachers: {type: subset, of: [big, conv]}
  kd.ensemble: {type: categorical, choices: [mean_probs, mean_logits, mean_kl]}
"""
"""The search space of the sweep tests, over TINY_SWEEP's pool."""


@pytest.fixture
def tiny_sweep(tmp_path):
    """A sweep file on synthetic data that trains in about a second."""
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(TINY_SWEEP))
    return p


def write_sweep(folder: Path, extra: str = TINY_SEARCH, name="tiny.yaml", **subs) -> Path:
    """The tiny sweep as the two-objective, 3-trial study of the sweep tests (pruner none and study.spread off
    unless a test sets them),
    with `extra` as its search section and each `subs` key replaced by its value."""
    text = textwrap.dedent(TINY_SWEEP) + textwrap.dedent(extra)
    text = text.replace(
        "study: {name: tiny}", "study: {name: tiny, objectives: {val_accuracy: maximize, params: minimize}, trials: 3}"
    )
    for a, b in subs.items():
        text = text.replace(a, b)
    if "pruner:" not in text:  # these tests count complete trials: pruning only where a test asks for it
        text = text.replace("study: {name: tiny, ", "study: {name: tiny, pruner: none, ")
    if "spread:" not in text:  # and their trials are the sampler's (or steered teachers') unless a test spreads
        text = text.replace("study: {name: tiny, ", "study: {name: tiny, spread: false, ")
    p = folder / name
    p.write_text(text)
    return p


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One finished 3-trial sweep of test_sweep's tiny sweep file, its report included: (root, sweep file, env,
    the sweep's CompletedProcess), the kdtrain home at root / "home". Shared by test_sweep and test_gains, whose
    tests that use it carry xdist_group("tiny-study") so that one worker builds it once. Tests add to it (a
    confirm, a second study, a rerun that runs nothing) and remove nothing."""
    root = tmp_path_factory.mktemp("tiny-study")
    env = {"KDTRAIN_HOME": str(root / "home"), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(root)
    r = run_cli("sweep", p, "--report-dir", root / "reports", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, p, env, r


def run_cli(*args, env=None, timeout=300):
    """Run the real `kdtrain` entry point in a subprocess."""
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**inherited, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdtrain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def stop_group(proc: subprocess.Popen, grace: float = 5) -> None:
    """End a server started with start_new_session=True: SIGTERM to its process group, then SIGKILL after
    `grace` seconds (uvicorn can wait on a half-open connection; a test has no reason to wait for it)."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still there (workers of a stopped server)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup` pytest-xdist suffixes a grouped test's id with `@group`, which sends the group to
    one worker, so that its module fixture (a finished sweep, a server) is built once. pytest 9.2 with xdist 3.8
    silently stopped doing it (every such fixture then ran on both workers); say so instead of running slower."""
    if getattr(config.option, "loadgroup", False):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist did not apply the xdist_group of {len(lost)} test(s) (e.g. "
                f"{lost[0]}): install the versions the test extra pins (pip install -e '.[test]')"
            )
