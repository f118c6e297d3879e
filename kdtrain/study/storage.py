"""The study's storage, the third part of the Optuna side (with kdtrain.study.search and kdtrain.study.recovery): opening a
journal file or a database, heartbeat settings, the study-wide lock, and surviving a database outage.

A database that goes away while a trial trains (a restart, a failover, a network cut) costs a warning, not the
sweep: every storage call of a process that knows its study (a worker; kdtrain status, report, confirm once the
study is loaded) retries with backoff for study.storage_patience (PatientStorage), whichever RDBStorage method
Optuna calls, and the trial's epochs go on meanwhile (pruning checks skip the epochs the storage misses).
Past the window the call raises StorageLost: the worker stops with one line, and its trial is recovered as any
interrupted trial is (no heartbeat for study.grace_period).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import optuna

from kdtrain import schema
from kdtrain.errors import KdtrainError
from kdtrain.paths import home, redact
from kdtrain.schema import Config
from kdtrain.shared import advisory_lock, clock, file_lock, try_advisory_lock


class StorageLost(KdtrainError):
    """The study's database stayed unreachable past study.storage_patience."""


class StorageDown(Exception):
    """A storage call that must not wait (an epoch's pruning check) met the database unreachable."""


def lost_connection(e: BaseException, context: bool = True) -> bool:
    """Did a storage call fail because the database went away (not because of what it asked)? SQLAlchemy's
    OperationalError, InterfaceError and DisconnectionError, or a DBAPI error that invalidated its connection,
    anywhere in the chain of causes (Optuna wraps them in StorageInternalError) and, with `context`, of errors
    met while handling one (a rollback on a dead connection)."""
    import sqlalchemy.exc as sa

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.PendingRollbackError)):
            return True
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or (e.__context__ if context else None)
    return False


def _driver_words(e: BaseException) -> str:
    """The innermost cause's words (the driver's, not Optuna's "invalid data in the commit"), no password."""
    while e.__cause__ is not None:
        e = e.__cause__
    return db_error(e)


def outage_reason(e: BaseException) -> str:
    """The outage's reason, as the one line a command prints when a storage call failed with the database gone:
    the driver's words, no password. (kdtrain.tracking.outbox.unreachable is another question: whether an error
    means the tracking server is away.)"""
    return (
        f"the study's storage is unreachable ({_driver_words(e)}); start the database again and rerun the same "
        "command (a sweep resumes; its running trial is recovered)"
    )


class PatientStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose calls retry, with backoff up to 30 s, while the database is unreachable, for `patience`
    seconds counted from the first failure of the outage (0 until the study's study.storage_patience is set: a
    worker, kdtrain status, report and confirm set it once the study is loaded). One warning line when an outage
    starts, one when the database answers again; past the window StorageLost. Inside `no_wait()` a call fails at
    once with StorageDown instead (an epoch's pruning check: training goes on).

    Every method of RDBStorage that reaches the database waits, its private ones included: Optuna's _CachedStorage
    (what a study holds) calls _create_new_trial, _set_trial_param, _get_trials, _get_best_trial_id, ... The
    methods are found by walking RDBStorage's classes, not listed by hand, so that one Optuna adds is covered too;
    only the outermost call of a thread retries (a call inside another is retried whole with it).

    A write whose commit landed but whose reply was lost is retried and meets its own work: a trial state change
    (tell, fail, taking a queued trial) that finds the trial already in the state and with the values it was about
    to write counts as done (see set_trial_state_values)."""

    patience: float = 0.0
    down_since: float | None = None
    log = staticmethod(print)

    def _patient(self, call):
        if getattr(_local, "depth", 0):  # inside another call of this thread: that one waits, and retries it whole
            return call()
        _local.depth = 1
        try:
            return self._retrying(call)
        finally:
            _local.depth = 0

    def _retrying(self, call):
        delay = 1.0
        while True:
            try:
                result = call()
            except Exception as e:  # a driver's or SQLAlchemy's: one line with the driver's words
                if not lost_connection(e):
                    raise
                since = self._failed(e)  # this thread's view: the heartbeat thread may clear down_since meanwhile
                if getattr(_local, "no_wait", False):
                    raise StorageDown(str(e)) from None
                waited = time.time() - since
                if waited >= self.patience:
                    if not self.patience:
                        raise
                    raise StorageLost(
                        f"the study's storage {self._name()} has been unreachable since "
                        f"{clock(since)} (more than "
                        f"study.storage_patience, {self.patience:.0f} s); this worker stops. Its "
                        "trial is failed and re-queued by the next worker or run once the database "
                        "is back (no heartbeat for study.grace_period)"
                    ) from None
                with contextlib.suppress(Exception):
                    self.remove_session()  # a session whose connection died cannot roll back; start afresh
                time.sleep(min(delay, self.patience - waited))
                delay = min(2 * delay, 30.0)
                continue
            self._back()
            return result

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        """RDBStorage's, retried as every call is; a retry after a lost connection that finds its own write already
        made (the first attempt's commit landed, its reply did not) returns True: the trial in `state`, with these
        `values`, changed since this call began. A finished state is refused as UpdateFinishedTrialError, and
        RUNNING (a queued trial taken) answers False, when another process changed the trial first. (A queued trial
        is taken under the study's ask lock: another worker taking the same one between the two attempts needs that
        lock lost with the database, PostgreSQL's advisory lock, and a take that lands in the same seconds.)"""
        begun, tries = datetime.datetime.now(), [0]

        def call():
            tries[0] += 1
            try:
                done = optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries[0] > 1 and self._landed(trial_id, state, values, begun):
                    return True
                raise
            return done or (tries[0] > 1 and self._landed(trial_id, state, values, begun))

        return self._patient(call)

    def _landed(self, trial_id: int, state, values, begun: datetime.datetime) -> bool:
        """Is the trial in `state` with `values`, since `begun` (this process's clock, as Optuna's times are)?"""
        t = optuna.storages.RDBStorage.get_trial(self, trial_id)
        when = t.datetime_complete if state.is_finished() else t.datetime_start
        same = (t.values is None) == (values is None) and all(
            math.isclose(a, b, rel_tol=1e-12) for a, b in zip(t.values or [], values or [], strict=False)
        )
        return t.state == state and same and when is not None and when >= begun

    def _name(self) -> str:
        return redact(str(self.engine.url.render_as_string(hide_password=False)))

    def _failed(self, e: Exception) -> float:
        """Note a failed call: the outage's start (now, if none was under way), read under the lock."""
        with _lock:
            if self.down_since is None:
                self.down_since = time.time()
                if self.patience:
                    print(
                        f"warning: the study's storage {self._name()} is unreachable since "
                        f"{clock(self.down_since)} ({_driver_words(e)}); retrying "
                        f"for up to {self.patience:.0f} s (study.storage_patience)",
                        file=sys.stderr,
                        flush=True,
                    )
            return self.down_since

    def _back(self) -> None:
        with _lock:  # read and cleared under the lock: another thread's call may end the outage at the same time
            if self.down_since is not None and self.patience:  # one that does not wait said nothing (_failed)
                self.log(f"the study's storage answers again (unreachable for {time.time() - self.down_since:.0f} s)")
            self.down_since = None


_lock, _local = threading.Lock(), threading.local()
_NO_DATABASE = {
    "remove_session",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "get_failed_trial_callback",
    "check_trial_is_updatable",
    "_build_frozen_trial_from_trial_model",
}
"""RDBStorage methods that do not reach the database (nothing to wait for; remove_session starts a retry afresh)."""


def _reaches_database(name: str, method) -> bool:
    """Every function of RDBStorage's classes but dunders, _NO_DATABASE, and those given a session: they run
    inside another call's transaction (Optuna's *_without_commit), retried whole with that call."""
    return (
        inspect.isfunction(method)
        and not name.startswith("__")
        and name not in _NO_DATABASE
        and "session" not in inspect.signature(method).parameters
    )


def _waiting(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._patient(lambda: method(self, *args, **kwargs))

    return call


for _cls in optuna.storages.RDBStorage.__mro__[:-1]:
    for _method_name, _method in vars(_cls).items():
        if _reaches_database(_method_name, _method) and _method_name not in vars(PatientStorage):
            setattr(PatientStorage, _method_name, _waiting(_method_name))


class _QuietFallback(logging.Filter):
    """Drop Optuna's "Caught an error from sqlalchemy ... Falling back to a slower alternative" (its _get_trials
    retrying a query): in an outage PatientStorage says it once; otherwise the slower query answers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Caught an error from sqlalchemy")


logging.getLogger("optuna.storages._rdb.storage").addFilter(_QuietFallback())


@contextlib.contextmanager
def no_wait():
    """Storage calls in this block (this thread) do not wait out an outage: they raise StorageDown."""
    _local.no_wait = True
    try:
        yield
    finally:
        _local.no_wait = False


def default_storage() -> str:
    """$KDTRAIN_STORAGE (keeps a password off the command line), else the journal file under kdtrain's home."""
    return os.environ.get("KDTRAIN_STORAGE") or str(home() / "optuna.journal")


def is_rdb(url: str) -> bool:
    return "://" in url


def db_error(e: Exception) -> str:
    """The driver's own words, without SQLAlchemy's wrapping (nor the statement), on one line, passwords hidden;
    for every message about a database kdtrain could not use (this storage's, the preflight's checks of a URL)."""
    text = str(e).replace("\n", " ").split("(Background on this error", 1)[0].split("[SQL: ", 1)[0]
    text = re.sub(r"^\(\S+?\)\s*", "", text.strip())
    hints = {
        "authentication failed": "check the user and password in the storage URL",
        "Connection refused": "is the database server running and reachable from this machine?",
        "could not connect": "is the database server running and reachable from this machine?",
        "timeout expired": "is the database server running and reachable from this machine?",
        "does not exist": "create the database first, e.g. createdb NAME",
    }
    hint = next((f" ({h})" for k, h in hints.items() if k in text), "")
    return redact(" ".join(text.split()))[:400] + hint


def open_storage(url: str | None = None):
    """A journal file path (the default) or an RDB URL (sqlite:///..., postgresql://...).

    RDB storages record a heartbeat per running trial, at the defaults of StudyConfig until apply_heartbeat sets
    the study's own: a trial whose worker stops beating for the grace period is failed and its parameters
    re-queued by the next worker that looks (recover)."""
    url = url or default_storage()
    if is_rdb(url):
        # pool_pre_ping: each pooled connection is checked before use, so a database restart overnight is survived
        kwargs: dict = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            return PatientStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=schema.StudyConfig.heartbeat_interval,
                grace_period=schema.StudyConfig.grace_period,
            )
        except ImportError:
            raise KdtrainError(
                f"the Optuna storage {redact(url)} needs its database driver: pip install 'kdtrain[postgres]'"
            ) from None
        except Exception as e:  # noqa: BLE001 - a driver's or SQLAlchemy's: one line with the driver's words
            raise KdtrainError(f"cannot open the Optuna storage {redact(url)}: {db_error(e)}") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(url).expanduser().resolve()
    if path.is_dir():
        raise KdtrainError(
            f"the Optuna storage {path} is a directory; give a journal file such as "
            f"{path / 'optuna.journal'} or an RDB URL (postgresql://...)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def rdb_of(storage) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a storage, or None for a journal. Private attribute: Optuna wraps an RDBStorage in
    a _CachedStorage and offers no public accessor, and heartbeat settings and the engine live on the inner one."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


# A private attribute for want of a public accessor: asking and failing trials by hand (heartbeats, recovery)
# needs the study's storage. The trial-level calls take a trial's id, found through public storage calls.
def storage_of(study: optuna.Study):
    """The storage a study reads and writes (kdtrain.study.search and .recovery ask, beat and fail through it)."""
    return study._storage


def study_storage_id(study: optuna.Study) -> int:
    """The study's id in its storage (the storage's trial-level calls take it)."""
    return storage_of(study).get_study_id_from_name(study.study_name)


def trial_storage_id(study: optuna.Study, trial) -> int:
    """A trial's storage id, from its number (public BaseStorage calls; Trial._trial_id is private)."""
    return storage_of(study).get_trial_id_from_study_id_trial_number(study_storage_id(study), trial.number)


def apply_heartbeat(storage, cfg: Config) -> None:
    """Every worker of a study beats at the study's own interval and grace period (stored with its config)."""
    b = rdb_of(storage)
    if b is not None:
        b.heartbeat_interval, b.grace_period = cfg.study.heartbeat_interval, cfg.study.grace_period
        if isinstance(b, PatientStorage):
            b.patience = schema.parse_duration(cfg.study.storage_patience)


def heartbeat_interval(storage) -> int | None:
    b = rdb_of(storage)
    return b.heartbeat_interval if b is not None else None


@contextlib.contextmanager
def study_lock(study_or_storage, study_name: str, purpose: str):
    """A mutex over every worker of a study: a PostgreSQL advisory lock when the study lives there (workers on
    several machines), else a file lock (workers on this machine). The lock dies with its holder."""
    b, name = _lock_backend(study_or_storage), f"{purpose}-{study_name}"
    if b is None:
        with file_lock(name):
            yield
        return

    def take():
        lock = advisory_lock(b.engine, name)
        lock.__enter__()
        return lock

    # taking the lock waits out an outage as any storage call does (a fresh attempt each time)
    lock = b._patient(take) if isinstance(b, PatientStorage) else take()
    try:
        yield
    finally:
        try:
            lock.__exit__(None, None, None)
        except Exception as e:  # a driver's or SQLAlchemy's: one line with the driver's words
            if not lost_connection(e):  # a dead connection has released its advisory lock already
                raise


def existing_storage(url: str | None = None):
    """Open a storage that must already hold studies (status, report): a missing journal is an error."""
    url = url or default_storage()
    if not is_rdb(url) and not Path(url).expanduser().exists():
        raise KdtrainError(f"no Optuna storage at {url}: run a sweep first, or pass --storage")
    return open_storage(url)


def _lock_backend(study_or_storage):
    """The PostgreSQL storage backend whose advisory locks a study's workers share; None where the study lives
    elsewhere (a journal file, SQLite: workers on this machine only, file locks)."""
    storage = storage_of(study_or_storage) if isinstance(study_or_storage, optuna.Study) else study_or_storage
    b = rdb_of(storage)
    return b if b is not None and b.engine.dialect.name == "postgresql" else None


@contextlib.contextmanager
def try_study_lock(study_or_storage, study_name: str, purpose: str):
    """study_lock without waiting: yields True holding the lock, False (holding nothing) when another worker holds
    it. For work that any worker may do and none should do twice (a width's follow-up)."""
    from filelock import Timeout

    b, name = _lock_backend(study_or_storage), f"{purpose}-{study_name}"
    if b is not None:
        with try_advisory_lock(b.engine, name) as held:
            yield held
        return
    lock = file_lock(name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
