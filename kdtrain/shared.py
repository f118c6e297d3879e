"""What the processes of one machine share: locks, atomic files, content keys.

``file_lock(name)``: a plain mutex (asks, baselines, teacher runs), through the filelock library.

``cpu_room()``: a readers-writer lock over the machine's cores. Training holds
it shared for each epoch; a latency measurement holds it exclusive, so it never
runs while a neighbouring worker trains on the same cores (the numbers would be
noise). A turnstile in front keeps a waiting measurement from starving while
workers keep starting epochs. It stays on fcntl: filelock's ReadWriteLock is an
SQLite transaction, more than a per-epoch lock should cost, and has no turnstile.

``atomic_write_text`` / ``atomic_dir``: a reader sees the old content or the new,
never half a file (caches are read by other workers while they are written).

``uninterrupted()``: a Ctrl-C or SIGTERM that arrives inside the block is raised
when the block ends (a local database write is not cut in half).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from kdtrain.errors import first_line
from kdtrain.paths import home


def content_key(obj: Any, length: int = 16) -> str:
    """A stable hex key of a JSON-able object (dict keys sorted; other objects by str): the cache keys of
    teachers, baselines and latency measurements, and lock names."""
    blob = obj.encode() if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader sees the old content or the new: a temporary name of this process and
    thread beside it, then one rename (two workers on a cold cache never share a temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(folder: Path):
    """Yield an empty temporary folder beside `folder`; on success it becomes `folder` in one rename. When
    another process got there first, its folder stays and this one is dropped (both hold the same content)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield tmp
        with contextlib.suppress(OSError):
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_lock(name: str) -> FileLock:
    """A mutex over this machine's processes, by name (a file under kdtrain's home)."""
    path = home() / "locks" / f"{content_key(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


@contextlib.contextmanager
def advisory_lock(engine, name: str):
    """A mutex over the processes of every machine that reaches one PostgreSQL database (a SQLAlchemy engine):
    a session-level advisory lock, released when its holder's connection dies."""
    import sqlalchemy

    key = _advisory_key(name)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("select pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@contextlib.contextmanager
def try_advisory_lock(engine, name: str):
    """advisory_lock without waiting: yields True holding it, False (holding nothing) when another holds it."""
    import sqlalchemy

    key = _advisory_key(name)
    with engine.connect() as conn:
        got = bool(conn.execute(sqlalchemy.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        try:
            yield got
        finally:
            if got:
                with contextlib.suppress(Exception):  # a dead connection has released it already
                    conn.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()


def _advisory_key(name: str) -> int:
    """The signed 64-bit PostgreSQL advisory lock id of a lock name."""
    return int(content_key(f"kdtrain/{name}"), 16) - 2**63


@contextlib.contextmanager
def _flock(path: Path, mode: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def cpu_room(exclusive: bool = False):
    turnstile, room = home() / "locks" / "cpu-turnstile.lock", home() / "locks" / "cpu-room.lock"
    if exclusive:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(room, fcntl.LOCK_EX):
            yield
    else:
        with _flock(turnstile, fcntl.LOCK_EX):
            pass  # wait here while a measurement is queued
        with _flock(room, fcntl.LOCK_SH):
            yield


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist on this machine?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clock(t: float) -> str:
    """A moment of today as HH:MM:SS in local time (since when a store has been unreachable)."""
    return time.strftime("%H:%M:%S", time.localtime(t))


def warn(what: str, e: Exception) -> None:
    """One 'warning:' line on stderr: what failed, and the error's type and first line."""
    reason = first_line(e)
    detail = type(e).__name__ + (f": {reason}" if reason != type(e).__name__ else "")
    print(f"warning: {what} ({detail})", file=sys.stderr, flush=True)


def warning_once(what: Callable[[Exception], str]) -> Callable[[Exception], None]:
    """on_error for a repeated call: the first error is one warn() line (what(error) says what failed), later ones
    are silent: a dying store is visible without a line per beat or epoch."""
    said: list[bool] = []

    def once(e: Exception) -> None:
        if not said:
            said.append(True)
            warn(what(e), e)

    return once


@contextlib.contextmanager
def every(seconds: float, fn: Callable[[], None], name: str, on_error: Callable[[Exception], None] | None = None):
    """Call fn every `seconds` in a daemon thread while the block runs. fn's errors do not stop it (a heartbeat
    that misses one beat is covered by the grace period); each goes to on_error (see warning_once)."""
    stop = threading.Event()

    def loop():
        while not stop.wait(seconds):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - whatever the store raised: say it, keep beating
                if on_error is not None:
                    with contextlib.suppress(Exception):
                        on_error(e)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def uninterrupted():
    """Hold a Ctrl-C (SIGINT) or SIGTERM that arrives inside the block until the block ends, then handle it as it
    would have been (KeyboardInterrupt, kdtrain's Terminated). For short local writes: an interrupt raised inside
    SQLAlchemy can leave an SQLite connection holding the database's lock, and the writes that close the
    interrupted run then wait it out and fail. Outside the main thread (no signal lands there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, before[s])
        if caught:  # raised even when the block raised: the stop wins (the block's error as its context)
            handler = before[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota of this process's cgroup and its ancestors (CPUs, e.g. 1.5), or None for no limit: cgroup v2's
    cpu.max, or v1's cpu.cfs_quota_us over cpu.cfs_period_us (what a container's or pod's CPU limit sets)."""
    limits = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:  # v2: one unified tree
            base, v2 = CGROUP_ROOT, True
        elif "cpu" in controllers.split(","):
            base = CGROUP_ROOT / controllers
            base, v2 = (base if base.is_dir() else CGROUP_ROOT / "cpu"), False
        else:
            continue
        node = base / path.lstrip("/")
        while True:  # a limit anywhere above applies too
            try:
                if v2:
                    quota, period = (node / "cpu.max").read_text().split()[:2]
                    if quota != "max":
                        limits.append(int(quota) / int(period))
                else:
                    quota = int((node / "cpu.cfs_quota_us").read_text())
                    if quota > 0:
                        limits.append(quota / int((node / "cpu.cfs_period_us").read_text()))
            except (OSError, ValueError):
                pass
            if node == base or node.parent == node:
                break
            node = node.parent
    return min(limits) if limits else None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, SLURM, a container's cpuset), capped by its
    cgroup's CPU quota (a Kubernetes limit of 2 CPUs on a 64-core node is 2), not os.cpu_count()."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, int(quota + 0.5)))  # 1.5 CPUs of quota: 2 threads keep it busy
    return max(1, n)


def threads_per_worker(train_threads: int, workers: int, cpus: int | None = None) -> int:
    """The one rule for CPU threads: a machine's budget (train.threads when the sweep file sets it, else the CPUs
    this process may use) split evenly among the workers on that machine, at least one each."""
    budget = train_threads if train_threads > 0 else (cpus or available_cpus())
    return max(1, budget // max(1, workers))


def available_memory_gb() -> float | None:
    """Memory this machine can still give (MemAvailable of /proc/meminfo, GiB); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


WORKER_GB = 1.5
"""Memory a local worker is planned with: B5 measured 1.0 GB for the largest process of a quickstart sweep."""


def plan_workers(
    requested: str | int,
    cpus: int,
    gpus: list[str],
    train_threads: int = 0,
    trials: int | None = None,
    memory_gb: float | None = None,
) -> tuple[int, int, list[dict]]:
    """How `kdtrain sweep --workers` uses this machine: (workers, CPU threads each, each worker's environment).

    ``auto`` with GPUs: up to 4 workers per GPU (as many as the CPUs can feed, one at least), each worker given
    its own GPU through CUDA_VISIBLE_DEVICES, round robin. ``auto`` on CPUs: one single-threaded worker per CPU
    (train.threads, when set, is the budget instead). Measured (docs/benchmarks.md, B8): a second thread gains a
    quickstart student 1.1-1.5x where a second worker doubles the trials, and two processes of two spinning
    OpenMP threads on two cores slowed each other 4-7x, where single-threaded ones degrade in proportion (a
    thread alone never waits for another, so OpenMP's wait policy does not matter). Either way no more workers
    than trials, nor than the free memory holds at WORKER_GB each. A number asks for that many workers,
    sharing the GPUs round robin and the CPU budget evenly (threads_per_worker)."""
    budget = train_threads if train_threads > 0 else max(1, cpus)
    if requested == "auto":
        if gpus:
            n = len(gpus) * max(1, min(4, cpus // len(gpus)))
        else:
            n = budget
        if trials:
            n = min(n, trials)
        if memory_gb is not None:
            n = min(n, max(1, int(memory_gb / WORKER_GB)))
        n = max(1, n)
    else:
        n = int(requested)
    threads = threads_per_worker(train_threads, n, cpus)
    envs = [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {} for i in range(n)]
    return n, threads, envs
