"""File locks shared by the processes of one machine.

``file_lock(name)``: a plain mutex (asks, baselines, teacher runs).

``cpu_room()``: a readers-writer lock over the machine's cores. Training holds
it shared for each epoch; a latency measurement holds it exclusive, so it never
runs while a neighbouring worker trains on the same cores (the numbers would be
noise). A turnstile in front keeps a waiting measurement from starving while
workers keep starting epochs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path

from kdtrain.config import home


@contextlib.contextmanager
def _flock(path: Path, mode: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_lock(name: str):
    return _flock(home() / "locks" / f"{hashlib.sha1(name.encode()).hexdigest()[:16]}.lock", fcntl.LOCK_EX)


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
