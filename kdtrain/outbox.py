"""The MLflow writes a tracking server could not take, kept on local disk until it answers again.

A trial that finishes while the tracking server is down (restarted, upgraded, a network cut) is told to Optuna
as usual; its run's writes (metrics, model, artifacts, tags, the run's end) wait here as entries, one folder per
write: ``record.json`` (the write and its arguments) and the files it uploads. kdtrain.tracking sends them in the
order they were made, each once (an entry is removed once the server took it; one process sends at a time, under
a lock), as soon as a write or a worker finds the server answering again: this worker's next write, the next
worker, or a rerun of the sweep on this machine. ``kdtrain status`` counts the trials whose writes wait.

One outbox per tracking server, under kdtrain's home: ``outbox/<key of the server's URL>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kdtrain.errors import KdtrainError, first_line
from kdtrain.paths import home, redact
from kdtrain.shared import atomic_dir, clock, content_key

_seq = itertools.count()
PENDING = "outbox:"
"""The id a logged model kept in the outbox goes by until it is sent."""

_GONE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "Read timed out",
         "Connection aborted", "RemoteDisconnected", "error code 502", "error code 503", "error code 504",
         "too many 502", "too many 503", "too many 504")


def unreachable(e: BaseException) -> bool:
    """Did an MLflow call fail because the tracking server could not be reached (refused, timed out, a proxy's
    502-504 after MLflow's own retries), rather than because it refused what was asked?"""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
                "ConnectionError", "MaxRetryError", "NewConnectionError", "ConnectTimeout", "ReadTimeout"):
            return True
        if type(e).__name__ == "MlflowException" and any(k in str(e) for k in _GONE):
            return True
        e = e.__cause__ or e.__context__
    return False




class Outbox:
    def __init__(self, server: str):
        self.folder = home() / "outbox" / content_key(server, 12)

    def entries(self) -> list[Path]:
        """The waiting writes, oldest first (names start with the time they were made)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def add(self, op: str, run_id: str, args: dict, files: dict[str, bytes | Path] | None = None,
            labels: dict | None = None) -> Path:
        """Keep one write: its name, run, JSON arguments, files (bytes, or a file copied in) and labels (the study
        and trial it belongs to, for kdtrain status). Written whole or not at all."""
        entry = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{next(_seq):06d}"
        with atomic_dir(entry) as tmp:
            for name, content in (files or {}).items():
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    shutil.copyfile(content, tmp / name)
            record = {"op": op, "run_id": run_id, "args": args, "files": sorted(files or {}),
                      "labels": labels or {}, "made": time.time()}
            (tmp / "record.json").write_text(json.dumps(record))
        return entry

    @staticmethod
    def read(entry: Path) -> dict:
        return json.loads((entry / "record.json").read_text())

    @staticmethod
    def done(entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)

    def alias(self, placeholder: str, value: str | None = None) -> str | None:
        """The id a write made when it was sent (a logged model's) for the placeholder later writes name: set
        with value, else read (None while unsent)."""
        path = self.folder / ".ids" / placeholder
        if value is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)
            return value
        return path.read_text() if path.exists() else None

    @contextlib.contextmanager
    def sending(self) -> Iterator[bool]:
        """Yield True to the one process of this machine that may send now (False: another is sending)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def waiting_trials(self, study: str | None = None) -> list[tuple[str, int]]:
        """(study, trial number) of the trials with writes still waiting, in order."""
        seen: dict[tuple[str, int], None] = {}
        for entry in self.entries():
            with contextlib.suppress(OSError, ValueError):
                labels = self.read(entry)["labels"]
                if "trial" in labels and (study is None or labels.get("study") == study):
                    seen[(labels["study"], int(labels["trial"]))] = None
        return list(seen)


def _reason(e: BaseException) -> str:
    """The innermost cause of a connection error, in one line without the URL's credentials."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return redact(first_line(e, 300))


class Deferring:
    """The writes of kdtrain.tracking.Tracker that outlive a tracking server outage. The tracker gives `uri`,
    `outbox` (None for a local store), `down_since`, `labels`, `answers()` and one `_w_<op>(run_id, folder,
    **args)` per write, where folder holds the write's files."""

    def _write(self, op: str, run_id: str, args: dict, files: dict[str, bytes] | None = None):
        """One write to a run: sent now, or kept in the outbox when the server cannot be reached or earlier
        writes still wait there (so that the order holds). A kept log_model returns a placeholder id."""
        if self.outbox is not None and self.outbox.entries() and not self.flush():
            return self._keep(op, run_id, args, files)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in (files or {}).items():
                    (Path(tmp) / name).write_bytes(content)
                return getattr(self, f"_w_{op}")(run_id, Path(tmp), **args)
        except Exception as e:
            if self.outbox is None or not unreachable(e):
                raise
            self.down(e)
            return self._keep(op, run_id, args, files)

    def _keep(self, op: str, run_id: str, args: dict, files: dict[str, bytes] | None):
        entry = self.outbox.add(op, run_id, args, files, self.labels)
        return PENDING + entry.name if op == "model" else None

    def down(self, e: Exception) -> None:
        """Say once per outage that the server is unreachable, and since when."""
        if self.down_since is None:
            self.down_since = time.time()
            print(f"warning: the MLflow tracking server {redact(self.uri)} is unreachable since "
                  f"{clock(self.down_since)} ({_reason(e)}); the runs' writes "
                  f"are kept in {self.outbox.folder} and sent in order when it answers (kdtrain status counts "
                  "the trials waiting)", file=sys.stderr, flush=True)

    def flush(self) -> bool:
        """Send the outbox's writes, oldest first, each once, while the server takes them. True when none is
        left waiting (another process sending them counts as waiting)."""
        if self.outbox is None or not self.outbox.entries():
            return True
        if not self.answers():
            return False
        sent = 0
        with self.outbox.sending() as mine:
            for entry in self.outbox.entries() if mine else []:
                record = self.outbox.read(entry)
                try:
                    made = getattr(self, f"_w_{record['op']}")(record["run_id"], entry, **record["args"])
                except Exception as e:
                    if unreachable(e):
                        self.down(e)
                        break
                    # the server refuses it (the run deleted meanwhile, say): said, and not tried again
                    print(f"warning: a kept MLflow write ({record['op']} of run {record['run_id']}) was refused "
                          f"by the server and dropped ({_reason(e)})", file=sys.stderr, flush=True)
                    self.outbox.done(entry)
                    continue
                if record["op"] == "model" and made:
                    self.outbox.alias(PENDING + entry.name, made)
                self.outbox.done(entry)
                sent += 1
        left = bool(self.outbox.entries())
        if sent:
            since = f" (unreachable since {clock(self.down_since)})" \
                if self.down_since else ""
            print(f"the MLflow tracking server answers again{since}: sent {sent} kept write(s)"
                  + (", more waiting" if left else ""), flush=True)
        if not left:
            self.down_since = None
        return not left

    def wait_sent(self, patience: float, log) -> None:
        """Before a new trial: the kept writes sent, waiting up to `patience` seconds for the server (checked
        every 5 s); past it one clear error (the writes stay kept for the next run)."""
        if self.outbox is None or self.flush():
            return
        since = self.down_since or time.time()
        log(f"waiting for the MLflow tracking server to send the writes of {len(self.outbox.waiting_trials())} "
            f"trial(s) before the next trial (up to {patience:.0f} s, study.storage_patience)")
        while not self.flush():
            if time.time() - since > patience:
                raise KdtrainError(f"the MLflow tracking server {redact(self.uri)} has been unreachable since "
                                   f"{clock(since)} (more than "
                                   f"study.storage_patience); this worker stops. The finished trials' writes stay "
                                   f"in {self.outbox.folder}; the next kdtrain run against this server on this "
                                   "machine sends them (kdtrain status counts them)")
            time.sleep(5)

