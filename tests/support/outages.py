"""Helpers of the outage tests: a sweep whose trials run long enough to meet an outage, started as a real
`kdtrain sweep` process in its own group, and readers of its log and its study."""

import contextlib
import os
import signal
import textwrap
import time
from pathlib import Path

import optuna

from kdtrain.study import search
from support.sweeps import spawn_cli

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


def start_sweep(sweep: Path, storage: str, tmp_path: Path, *extra: str):
    """`kdtrain sweep` on `storage`, one worker, no report, in a process group of its own (support.spawn_cli)."""
    args = ["sweep", sweep, "--storage", storage, "--workers", "1", "--no-report", *extra]
    return spawn_cli(*args, log=tmp_path / f"sweep-{time.time_ns()}.log", new_session=True)


@contextlib.contextmanager
def sweeping(sweep: Path, storage: str, tmp_path: Path, *extra: str):
    """A running `kdtrain sweep`, killed with its group if the test fails before it ends."""
    proc = start_sweep(sweep, storage, tmp_path, *extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def paused(proc):
    """The sweep's processes held still (SIGSTOP) while the block runs: an outage begun inside it lands in the
    middle of whatever the sweep was doing, however busy the machine (its trial cannot finish meanwhile)."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def one_outage_line(out: str) -> str:
    """The one line that says a store is unreachable (not one per heartbeat or write), and no traceback."""
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "is unreachable since" in line]
    assert len(lines) == 1, out
    return lines[0]


def output(proc) -> str:
    return proc.output()


def wait_for_running(url: str, name: str, proc, timeout: float = 240) -> int:
    """The number of a trial past trial 0 once it is RUNNING (the sweep is training it). The store is read only
    after the sweep said it opened its study: opening an empty PostgreSQL database creates Optuna's tables, and a
    test doing that while the sweep does the same made the sweep fail on the second CREATE (seen in CI)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)
        if f"study {name}: " not in output(proc):
            time.sleep(0.3)
            continue
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
