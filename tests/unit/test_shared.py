"""The CPUs a process may use (kdtrain.shared): threads follow affinity masks and cgroup quotas, and a latency
measurement holds every other process's training epochs while it runs (cpu_room)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from support import write_sweep

from kdtrain.shared import cpu_room

HOLDER = """
import sys, time
from kdtrain.shared import cpu_room
with cpu_room(exclusive=True):
    print("held", flush=True)
    time.sleep(1.5)
    print(repr(time.time()), flush=True)  # the last moment inside: released right after
"""


TRAINER = """
import contextlib, json, sys, time
from pathlib import Path
from kdtrain import config
from kdtrain.data import datasets
from kdtrain.distill.student import distill_student
from kdtrain.shared import cpu_room

cfg = config.replace(config.load(sys.argv[1]), {"kd.alpha": 0.0, "train.epochs": 1000000})
ds, stop, intervals, began = datasets.load(cfg.data), Path(sys.argv[2]), [], time.time()

@contextlib.contextmanager
def guard():  # the worker's per-epoch guard, with the time spent inside it recorded
    with cpu_room():
        start = time.time()
        yield
        intervals.append((start, time.time()))

class Stop(Exception):
    pass

def on_epoch(s):
    if len(intervals) == 1:
        print("training", flush=True)
    # stop once an epoch has started after the measurement ended (or after 2 minutes, whatever happens)
    if (stop.exists() and intervals[-1][0] >= float(stop.read_text())) or time.time() - began > 120:
        raise Stop

try:
    distill_student(cfg, ds, {}, on_epoch=on_epoch, epoch_guard=guard)
except Stop:
    pass
print(json.dumps(intervals), flush=True)
"""


def test_an_epoch_guard_waits_while_another_process_measures(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "held"
        with cpu_room():  # what every training epoch enters
            entered = time.time()
        released = float(holder.stdout.readline())
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert entered >= released


def test_training_epochs_of_another_process_are_held_during_a_measurement(tmp_path):
    p = write_sweep(tmp_path)
    stop = tmp_path / "stop"
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(p), str(stop)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    held = []

    def measure():
        with cpu_room(exclusive=True):  # what a latency measurement takes
            held.append(time.time())
            time.sleep(1.0)
            held.append(time.time())

    try:
        assert trainer.stdout.readline().strip() == "training"  # epochs are running back to back
        m = threading.Thread(target=measure, daemon=True)
        m.start()
        m.join(timeout=60)
        assert not m.is_alive(), "the measurement never got the cores: the turnstile let epochs starve it"
        tmp = tmp_path / "stop.tmp"
        tmp.write_text(repr(held[1]))
        os.replace(tmp, stop)
        out, _ = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert trainer.returncode == 0
    intervals = json.loads(out.strip().splitlines()[-1])
    start, end = held
    before = [iv for iv in intervals if iv[1] <= start]
    after = [iv for iv in intervals if iv[0] >= end]
    assert before and after  # training before the measurement, and again after it
    assert len(before) + len(after) == len(intervals), "an epoch ran while the measurement held the cores"


def test_threads_follow_the_cpus_this_process_may_use_not_the_hosts():
    """The split divided os.cpu_count(), which ignores affinity and container limits; `kdtrain worker` kept
    torch's default; train.threads reached every worker unsplit."""
    import os
    import subprocess
    import sys

    from kdtrain.shared import available_cpus, threads_per_worker

    assert threads_per_worker(0, 2, cpus=8) == 4 and threads_per_worker(0, 3, cpus=2) == 1
    assert threads_per_worker(8, 4) == 2  # the sweep file's budget is split too
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no affinity masks here")
    code = "from kdtrain.shared import available_cpus, threads_per_worker; print(available_cpus(), threads_per_worker(0, 1))"
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    assert pinned.stdout.split() == ["1", "1"], pinned.stderr
    assert available_cpus() == len(os.sched_getaffinity(0))


@pytest.fixture
def one_cpu_cgroup():
    """A real cgroup limited to one CPU of quota (v1 cpu controller or v2 cpu.max), removed afterwards; skipped
    where this process may not create one."""
    import os

    from kdtrain.shared import CGROUP_ROOT

    v1, v2 = CGROUP_ROOT / "cpu", CGROUP_ROOT / "cgroup.subtree_control"
    folder = (v1 if v1.is_dir() else CGROUP_ROOT) / f"kdtrain-test-{os.getpid()}"
    try:
        folder.mkdir()
        if v1.is_dir():
            (folder / "cpu.cfs_quota_us").write_text("100000")
            assert (folder / "cpu.cfs_period_us").read_text().strip() == "100000"
        else:
            assert "cpu" in v2.read_text()
            (folder / "cpu.max").write_text("100000 100000")
    except (OSError, AssertionError) as e:
        if folder.is_dir():
            folder.rmdir()
        pytest.skip(f"cannot create a cgroup with a CPU quota here ({e})")
    yield folder / "cgroup.procs"
    folder.rmdir()


def test_a_worker_without_threads_takes_its_machines_budget(tiny_sweep, one_cpu_cgroup):
    """`kdtrain worker` without --threads kept torch's default, every core of the host, whatever the container's
    CPU limit: in a cgroup of one CPU on this 2-core machine it trained with 2 threads."""
    import os
    import subprocess
    import sys

    from support import run_cli

    text = tiny_sweep.read_text().replace("study: {name: tiny}", "study: {name: tiny, trials: 1}")
    tiny_sweep.write_text(text.replace(", threads: 1", "") + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n")
    assert "threads" not in tiny_sweep.read_text()  # no train.threads: the machine's budget decides
    assert run_cli("sweep", tiny_sweep, "--workers", "0").returncode == 0
    code = (
        "import sys, torch; from kdtrain.cli import main; rc = main(sys.argv[1:]); "
        "print('threads', torch.get_num_threads()); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # the worker starts inside the cgroup, as a pod's process would
    done = subprocess.run(
        [
            "sh",
            "-c",
            f'echo $$ > {one_cpu_cgroup} && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            code,
            "worker",
            "--study",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1" in done.stdout and (os.cpu_count() or 1) > 1
