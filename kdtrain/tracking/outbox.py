"""The MLflow writes a tracking server could not take, kept on local disk until it answers again.

A trial that finishes while the tracking server is down (restarted, upgraded, a network cut) is told to Optuna
as usual; its run's writes (metrics, model, artifacts, tags, the run's end) wait here as entries, one folder per
write: ``record.json`` (the write, its arguments and how far its sending got) and the files it uploads.
kdtrain.tracking.client sends them in the order they were made (a sequence number kept in the folder, not the clock, so
that a clock stepped back cannot reorder them), each once (an entry is removed once the server took it; a write
of several calls records each step it made, so that sending it again after a cut repeats none; one process sends
at a time, under a lock), as soon as a write or a worker finds the server answering again: this worker's next
write, the next worker, or a rerun of the sweep on this machine. ``kdtrain status`` counts the trials whose writes
wait. An entry that keeps failing while the server answers (a proxy that cuts one large upload) is set aside, in
``<outbox>-set-aside/``, after SET_ASIDE_AFTER tries if the entry after it goes through, with one warning, so that
it cannot hold the others back.

One outbox per tracking server, under kdtrain's home: ``outbox/<key of the server's URL>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kdtrain.errors import KdtrainError, first_line
from kdtrain.paths import home, redact
from kdtrain.shared import atomic_dir, clock, content_key

PENDING = "outbox:"
"""The id a logged model kept in the outbox goes by until it is sent."""
SET_ASIDE_AFTER = 3
"""Failed tries, with the server answering /health, after which a kept write is set aside."""
STUCK = "stuck"

_GONE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Read timed out",
    "Connection aborted",
    "RemoteDisconnected",
    "error code 502",
    "error code 503",
    "error code 504",
    "too many 502",
    "too many 503",
    "too many 504",
)


class TrackingLost(KdtrainError):
    """A write that cannot be kept (creating a run) found the tracking server unreachable for longer than the
    worker's patience (study.storage_patience): the trial it was for is interrupted, not failed."""


def unreachable(e: BaseException) -> bool:
    """Did an MLflow call fail because the tracking server could not be reached (refused, timed out, a proxy's
    502-504 after MLflow's own retries; TrackingLost: past the worker's patience), rather than because it refused
    what was asked?"""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError, TrackingLost)) or type(e).__name__ in (
            "ConnectionError",
            "MaxRetryError",
            "NewConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
        ):
            return True
        if type(e).__name__ == "MlflowException" and any(k in str(e) for k in _GONE):
            return True
        e = e.__cause__ or e.__context__
    return False


class Outbox:
    def __init__(self, server: str):
        self.folder = home() / "outbox" / content_key(server, 12)
        self.aside = self.folder.with_name(self.folder.name + "-set-aside")
        """Where a write that kept failing while the server answered is set aside (beside the outbox)."""

    def entries(self) -> list[Path]:
        """The waiting writes, oldest first (names start with their sequence number, 20 digits)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _next(self) -> int:
        """The next sequence number of this outbox: a counter in ``.seq``, under a lock held by one process at a
        time, that never goes back (without the file, or with it unreadable: past the newest entry's number)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".seq", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            names = [] if text.isdigit() else [p.name.split("-")[0] for p in self.entries()]
            last = max([int(n) for n in [text, *names] if n.isdigit()], default=0)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(last + 1).encode(), 0)
            return last + 1
        finally:
            os.close(fd)  # releases the lock

    def add(
        self, op: str, run_id: str, args: dict, files: dict[str, bytes | Path] | None = None, labels: dict | None = None
    ) -> Path:
        """Keep one write: its name, run, JSON arguments, files (bytes, or a file copied in) and labels (the study
        and trial it belongs to, for kdtrain status). Written whole or not at all."""
        entry = self.folder / f"{self._next():020d}-{os.getpid()}"
        with atomic_dir(entry) as tmp:
            for name, content in (files or {}).items():
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    shutil.copyfile(content, tmp / name)
            record = {
                "op": op,
                "run_id": run_id,
                "args": args,
                "files": sorted(files or {}),
                "labels": labels or {},
                "made": time.time(),
            }
            (tmp / "record.json").write_text(json.dumps(record))
        return entry

    @staticmethod
    def read(entry: Path) -> dict:
        return json.loads((entry / "record.json").read_text())

    @staticmethod
    def update(entry: Path, args: dict | None = None, **fields) -> None:
        """Record in an entry (or in the folder of a write being sent) how far its sending got: arguments merged
        into its args, other fields set. Replaced in one rename, so a crash leaves the old record or the new."""
        record = Outbox.read(entry)
        record["args"].update(args or {})
        record.update(fields)
        tmp = entry / ".record.json"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry / "record.json")

    @staticmethod
    def done(entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)

    def set_aside(self, entry: Path) -> Path:
        """Move an entry out of the outbox, into the set-aside folder beside it (kept for the user to look at)."""
        self.aside.mkdir(parents=True, exist_ok=True)
        os.replace(entry, self.aside / entry.name)
        return self.aside / entry.name

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


def innermost_cause(e: BaseException) -> str:
    """The innermost cause of a connection error, in one line without the URL's credentials (this module's warnings
    and kdtrain.tracking.client.check_reachable's refusal say it)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return redact(first_line(e, 300))


class Deferring:
    """The writes of kdtrain.tracking.client.Tracker that outlive a tracking server outage. The tracker gives `uri`,
    `outbox` (None for a local store), `down_since`, `labels`, `answers()` and one `_w_<op>(run_id, folder,
    **args)` per write, where folder holds the write's files and its record.json (a write of several calls
    records its progress there with Outbox.update, so that sending it again repeats none of them)."""

    patience = 600.0
    """Seconds a write that cannot be kept (creating a run) waits for the server (the worker sets
    study.storage_patience)."""
    poll_s = 5.0
    """Seconds between two looks at a server that is away."""
    _aside_said = False

    def _write(self, op: str, run_id: str, args: dict, files: dict[str, bytes] | None = None):
        """One write to a run: sent now, or kept in the outbox when the server cannot be reached or earlier
        writes still wait there (so that the order holds). A kept log_model returns a placeholder id."""
        if self.outbox is not None and self.outbox.entries() and not self.flush():
            return self._keep(op, run_id, args, files)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for name, content in (files or {}).items():
                (folder / name).write_bytes(content)
            (folder / "record.json").write_text(json.dumps({"op": op, "run_id": run_id, "args": args}))
            try:
                return getattr(self, f"_w_{op}")(run_id, folder, **args)
            except Exception as e:
                if self.outbox is None or not unreachable(e):
                    raise
                self.down(e)
                # kept with the progress the write recorded (the batches, or the logged model, the server took)
                return self._keep(op, run_id, Outbox.read(folder)["args"], files)

    def _keep(self, op: str, run_id: str, args: dict, files: dict[str, bytes] | None):
        entry = self.outbox.add(op, run_id, args, files, self.labels)
        return PENDING + entry.name if op == "model" else None

    def down(self, e: Exception) -> None:
        """Say once per outage that the server is unreachable, and since when."""
        if self.down_since is None:
            self.down_since = time.time()
            print(
                f"warning: the MLflow tracking server {redact(self.uri)} is unreachable since "
                f"{clock(self.down_since)} ({innermost_cause(e)}); the runs' writes "
                f"are kept in {self.outbox.folder} and sent in order when it answers (kdtrain status counts "
                "the trials waiting)",
                file=sys.stderr,
                flush=True,
            )

    def flush(self) -> bool:
        """Send the outbox's writes, oldest first, each once, while the server takes them. True when none is
        left waiting (another process sending them counts as waiting). An empty outbox with the server answering
        ends this process's outage too (another worker may have sent its writes)."""
        if self.outbox is None:
            return True
        if not self.outbox.entries():
            if self.down_since is not None and self.answers():
                self._back(0, False)
            return True
        if not self.answers():
            return False
        sent, stuck = 0, None
        with self.outbox.sending() as mine:
            for entry in self.outbox.entries() if mine else []:
                took = self._send(entry)
                if stuck is not None:  # the write after a stuck one tells whose fault it is
                    if took is not True:  # it failed too: the server's, and the stuck write waits
                        stuck = None
                        break
                    self._set_aside(stuck)  # it went: the stuck write's own
                    stuck = None
                if took is None:
                    break
                if took == STUCK:
                    stuck = entry
                    continue
                sent += took
            if stuck is not None:  # nothing after it to tell: the bound holds
                self._set_aside(stuck)
        left = bool(self.outbox.entries())
        if sent or not left:
            self._back(sent, left)
        return not left

    def _send(self, entry: Path) -> bool | str | None:
        """Send one kept write: True once the server took it, False when it was dropped, None when the server is
        away (the entry stays, and so do the ones after it), STUCK when it failed SET_ASIDE_AFTER times while the
        server answered (flush sets it aside if the next write goes, which tells the write's fault from the
        server's: an MLflow server whose database is away still answers /health)."""
        record = self.outbox.read(entry)
        try:
            made = getattr(self, f"_w_{record['op']}")(record["run_id"], entry, **record["args"])
        except Exception as e:  # noqa: BLE001 - whatever a write raised: an outage waits, anything else is counted
            if unreachable(e):
                self.down(e)
                if not self.answers():  # an outage: this write waits for the server, and the ones after it
                    return None
                tries = record.get("failures", 0) + 1  # a failure with the server answering: counted
                self.outbox.update(entry, failures=tries, error=innermost_cause(e))
                return STUCK if tries >= SET_ASIDE_AFTER else None
            # the server refuses it (the run deleted meanwhile, say): said, and not tried again
            print(
                f"warning: a kept MLflow write ({record['op']} of run {record['run_id']}) was refused "
                f"by the server and dropped ({innermost_cause(e)})",
                file=sys.stderr,
                flush=True,
            )
            self.outbox.done(entry)
            return False
        if record["op"] == "model" and made:
            self.outbox.alias(PENDING + entry.name, made)
        self.outbox.done(entry)
        return True

    def _set_aside(self, entry: Path) -> None:
        """A write that failed SET_ASIDE_AFTER times while the server answered: out of the way of the others."""
        record = self.outbox.read(entry)
        self.outbox.set_aside(entry)
        if not self._aside_said:
            self._aside_said = True
            print(
                f"warning: a kept MLflow write ({record['op']} of run {record['run_id']}) failed "
                f"{record['failures']} times while the tracking server answered ({record['error']}); set aside in "
                f"{self.outbox.aside} (its record.json and files; this is said once) so that the writes after it "
                "go on",
                file=sys.stderr,
                flush=True,
            )

    def _back(self, sent: int, left: bool) -> None:
        """Say that the server answers again (sent: the kept writes this process sent), and end the outage."""
        if sent or self.down_since is not None:
            since = f" (unreachable since {clock(self.down_since)})" if self.down_since else ""
            print(
                f"the MLflow tracking server answers again{since}"
                + (f": sent {sent} kept write(s)" if sent else "")
                + (", more waiting" if left else ""),
                flush=True,
            )
        if not left:
            self.down_since = None

    def patiently(self, call: Callable[[bool], object]):
        """call(again), a write that cannot be kept (creating a run, whose id the trial needs): with a tracking
        server that cannot be reached, tried again each time it answers, for up to `patience` seconds since it
        went away; again is True from the second try on (the first may have landed before the reply was lost).
        Past the patience, or after SET_ASIDE_AFTER failures while the server answered: TrackingLost."""
        again, tries = False, 0
        while True:
            try:
                result = call(again)
            except Exception as e:
                if self.outbox is None or not unreachable(e):
                    raise
                self.down(e)
                lost = TrackingLost(
                    f"the MLflow tracking server {redact(self.uri)} has been unreachable since "
                    f"{clock(self.down_since)} ({innermost_cause(e)}), more than study.storage_patience"
                )
                if self.answers():  # a failure of this write alone: tried again a few times
                    tries += 1
                    if tries >= SET_ASIDE_AFTER:
                        raise lost from None
                while not self.answers():
                    if time.time() - self.down_since > self.patience:
                        raise lost from None
                    time.sleep(self.poll_s)
                again = True
                continue
            if again:
                self.flush()  # the server answers again: what waited goes now, and the outage ends
            return result

    def away(self, e: BaseException) -> bool:
        """Did e come from the tracking server being away (TrackingLost, or a read or run it could not answer and
        it does not answer now)? A trial that met it is interrupted, not failed: its settings are not to blame."""
        if self.outbox is None or not (isinstance(e, TrackingLost) or (unreachable(e) and not self.answers())):
            return False
        self.down(e)  # said once per outage; the worker waits for the server before its next trial (wait_sent)
        return True

    def wait_sent(self, patience: float, log) -> None:
        """Before a new trial: the kept writes sent and the server answering, waiting up to `patience` seconds
        for it (checked every 5 s); past it one clear error (the writes stay kept for the next run)."""
        if self.outbox is None or (self.flush() and self.down_since is None):
            return
        since = self.down_since or time.time()
        n = len(self.outbox.waiting_trials())
        log(
            "waiting for the MLflow tracking server"
            + (f" to send the writes of {n} trial(s)" if n else "")
            + f" before the next trial (up to {patience:.0f} s, study.storage_patience)"
        )
        while not (self.flush() and self.down_since is None):
            if time.time() - since > patience:
                raise KdtrainError(
                    f"the MLflow tracking server {redact(self.uri)} has been unreachable since "
                    f"{clock(since)} (more than "
                    f"study.storage_patience); this worker stops. The finished trials' writes stay "
                    f"in {self.outbox.folder}; the next kdtrain run against this server on this "
                    "machine sends them (kdtrain status counts them)"
                )
            time.sleep(self.poll_s)
