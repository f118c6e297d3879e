"""Recovery, the other half of the Optuna side (with kdtrain.study.search): heartbeats while a trial runs, the next trial
for a worker, and failing the trials whose worker died (kill -9, a lost machine, Ctrl-C), each with its reason and
its settings re-queued at most study.max_requeues times. MLflow is the caller's: see ``on_failed``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from kdtrain.errors import KdtrainError, UsageError
from kdtrain.shared import every, pid_alive, warn, warning_once
from kdtrain.study.search import (
    A_TRIALS,
    T_FAIL_REASON,
    T_HOST,
    T_INTERRUPTED,
    T_PID,
    T_REFERENCE,
    T_REQUEUE_DUE,
    T_REQUEUED_FROM,
    T_REQUEUES,
    T_RUN,
    TrialTakenOver,
    ask,
    counts,
    gone,
    stored_study,
    trials,
)
from kdtrain.study.storage import (
    StorageLost,
    heartbeat_interval,
    rdb_of,
    storage_of,
    study_lock,
    study_storage_id,
    trial_storage_id,
)


def max_requeues(study: optuna.Study) -> int:
    """study.max_requeues of the study's stored config."""
    return int(stored_study(study).get("max_requeues", 2))


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Record the trial's heartbeat every interval while it runs (RDB storages; nothing for a journal file)."""
    storage = storage_of(study)
    interval = heartbeat_interval(storage)
    trial_id = trial_storage_id(study, trial) if interval else None
    once = warning_once(
        lambda e: (
            f"trial {trial.number}: its heartbeat could not be recorded; the study's storage "
            "may be unreachable (past study.grace_period without one, another worker fails the trial)"
        )
    )
    warn = lambda e: None if isinstance(e, StorageLost) else once(e)  # noqa: E731  (the storage said it, once)
    with (
        every(interval, lambda: storage.record_heartbeat(trial_id), f"heartbeat-{trial.number}", warn)
        if interval
        else contextlib.nullcontext()
    ):
        yield


@dataclass
class Next:
    """Run `trial`; or wait (`waiting` trials run elsewhere); or stop. `recovered`: dead workers' trials."""

    trial: optuna.Trial | None
    waiting: int = 0
    recovered: list[int] | None = None


OnFailed = Callable[[str, str], None]
"""Called with (MLflow run id, reason) for each trial failed on behalf of a dead or interrupted worker."""


def next_trial(
    study: optuna.Study,
    default_target: int,
    deadline: float | None = None,
    on_failed: OnFailed | None = None,
    fixed: Callable[[], dict | None] | None = None,
) -> Next:
    """Under the study's ask lock: recover dead workers' trials, then ask for a trial if the study still needs
    one. When the trials still missing are all running elsewhere, wait: a worker that dies is recovered
    (heartbeat or dead pid) and its trial re-queued, and someone must be left to run it. `fixed` gives params to
    fix in a new trial (the sampler draws the rest) and why (its kdtrain.reference); a queued trial (the base
    settings, a re-queued one) goes first, as it is."""
    with study_lock(study, study.study_name, "ask"):
        recovered = _recover(study, on_failed) + requeue_missing(study)
        goal = study.user_attrs.get(A_TRIALS, default_target)
        c = counts(study)
        if c["DONE"] >= goal or (deadline is not None and time.time() >= deadline):
            return Next(None, recovered=recovered)
        if c["DONE"] + c["RUNNING"] < goal:
            errors = [t for t in trials(study, "FAIL") if not t.user_attrs.get(T_INTERRUPTED)]
            if len(errors) > max(5, goal):  # a broken setting, not bad luck: stop instead of looping
                raise KdtrainError(
                    f"study {study.study_name!r}: {len(errors)} trials failed; stopping. Last "
                    f"reason: {errors[-1].user_attrs.get(T_FAIL_REASON, '?').splitlines()[0]}"
                )
            pinned = fixed() if fixed is not None and not c["WAITING"] else None
            if pinned:
                study.enqueue_trial(pinned[0], user_attrs={T_REFERENCE: pinned[1]})
            return Next(ask(study), recovered=recovered)
        if not _recoverable(study):
            return Next(None, recovered=recovered)  # the rest runs on hosts whose death this worker cannot see
        return Next(None, waiting=c["RUNNING"], recovered=recovered)


# --------------------------------------------------------------------------- recovery


def fail_trial(
    study: optuna.Study, trial, reason: str, on_failed: OnFailed | None = None, requeue: bool = True
) -> bool:
    """Mark a trial failed with its reason, re-queue its params (at most study.max_requeues times for one set of
    settings), report its MLflow run to on_failed. A trial not re-queued for the cap counts toward the failure cap.

    False when another worker failed or finished it first (the storage refuses a second transition)."""
    storage = storage_of(study)
    trial_id = trial_storage_id(study, trial)
    frozen = storage.get_trial(trial_id)
    settings = _settings(frozen)
    done, cap = frozen.user_attrs.get(T_REQUEUES, 0), max_requeues(study)
    again = bool(requeue and settings and done < cap)
    if requeue and settings and not again:
        reason += (
            f"; not re-queued: its settings were interrupted {done + 1} times and study.max_requeues is "
            f"{cap} (a setting that kills its worker, e.g. out of memory, fails for good)"
        )
    try:
        storage.set_trial_user_attr(trial_id, T_FAIL_REASON, reason)
        storage.set_trial_user_attr(trial_id, T_INTERRUPTED, again or not settings)
        if again:  # a stop before the copy below is queued: a later recovery queues it (requeue_missing)
            storage.set_trial_user_attr(trial_id, T_REQUEUE_DUE, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except TrialTakenOver:
        return False
    if again and frozen.number not in _copied(study):  # a FAIL retried after a lost reply, a racing recovery: once
        study.enqueue_trial(
            settings, user_attrs={T_REQUEUED_FROM: frozen.number, T_REQUEUES: done + 1}, skip_if_exists=False
        )
    run_id = frozen.user_attrs.get(T_RUN)
    if on_failed is not None and run_id:
        try:
            on_failed(run_id, reason)
        except Exception as e:  # noqa: BLE001 - the trial is failed and re-queued; its MLflow run stays as it was
            warn(f"trial {frozen.number} was failed and re-queued, but its MLflow run {run_id} could not be closed", e)
    return True


def _settings(t: optuna.trial.FrozenTrial) -> dict:
    """The settings an interrupted trial ran with: its parameters, else those it was queued with (Optuna's
    fixed_params: a queued trial taken, RUNNING, whose worker stopped, or lost the database's reply to the take,
    before it drew them)."""
    return t.params or dict(t.system_attrs.get("fixed_params") or {})


def _copied(study: optuna.Study) -> set:
    """The numbers of the trials whose settings were queued again (each copy names its original)."""
    return {t.user_attrs.get(T_REQUEUED_FROM) for t in study.get_trials(deepcopy=False)} - {None}


def requeue_missing(study: optuna.Study, min_age_s: float = 60.0) -> list[int]:
    """Queue the settings of interrupted trials failed at least min_age_s ago whose copy was never queued (a kill
    or an outage between fail_trial's two steps): the numbers of those trials. The age leaves a worker that is
    between the two steps right now the time to finish them."""
    due = [t for t in trials(study, "FAIL") if t.user_attrs.get(T_REQUEUE_DUE)]
    if not due:
        return []
    copies = _copied(study)
    now, out = datetime.datetime.now(), []
    for t in due:
        if t.number not in copies and t.datetime_complete and (now - t.datetime_complete).total_seconds() >= min_age_s:
            study.enqueue_trial(
                _settings(t),
                user_attrs={T_REQUEUED_FROM: t.number, T_REQUEUES: t.user_attrs.get(T_REQUEUES, 0) + 1},
                skip_if_exists=False,
            )
            out.append(t.number)
    return out


def _stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials without a heartbeat for the grace period. Private method: Optuna's public
    optuna.storages.fail_stale_trials fails them itself and runs only its own retry callback, while kdtrain must
    also record why, re-queue them once and close their MLflow runs, under its own ask lock."""
    storage = storage_of(study)
    return [storage.get_trial(i) for i in storage._get_stale_trial_ids(study_storage_id(study))]


def _recover(study: optuna.Study, on_failed: OnFailed | None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone. Call under study_lock(..., "ask").

    RDB storages (PostgreSQL: workers on many machines): a trial without a heartbeat for the grace period.
    Journal file (workers on this machine): a trial whose worker process on this host no longer exists."""
    recovered = []
    b = rdb_of(storage_of(study))
    if b is not None:
        stale = _stale(study)
        # a worker that died between ask and its first heartbeat left a trial with no heartbeat and no pid
        old = datetime.datetime.now() - datetime.timedelta(seconds=b.grace_period)
        seen = {t.number for t in stale}
        stale += [
            t
            for t in trials(study, "RUNNING")
            if T_PID not in t.user_attrs and t.datetime_start and t.datetime_start < old and t.number not in seen
        ]
        for t in stale:
            who = (
                f"pid {t.user_attrs[T_PID]} on {t.user_attrs.get(T_HOST)}"
                if T_PID in t.user_attrs
                else "which died before its first heartbeat"
            )
            if fail_trial(
                study,
                t,
                f"interrupted: no heartbeat from its worker ({who}) for more than "
                f"{b.grace_period} s; the worker died or lost the database",
                on_failed,
            ):
                recovered.append(t.number)
        return recovered
    host = socket.gethostname()
    for t in trials(study, "RUNNING"):
        pid, t_host = t.user_attrs.get(T_PID), t.user_attrs.get(T_HOST)
        if t_host not in (None, host) or (pid is not None and pid != os.getpid() and pid_alive(pid)):
            continue
        if fail_trial(
            study, t, f"interrupted: its worker (pid {pid} on {t_host}) died before the trial finished", on_failed
        ):
            recovered.append(t.number)
    return recovered


def live_elsewhere(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials of other processes not known to be dead (another host's, or a live pid here)."""
    stale = {t.number for t in (_stale(study) if rdb_of(storage_of(study)) is not None else [])}
    return [
        t
        for t in trials(study, "RUNNING")
        if t.number not in stale and not gone(t) and t.user_attrs.get(T_PID) != os.getpid()
    ]


def retarget(study: optuna.Study, total: int, source: str, check_only: bool = False) -> str | None:
    """Set the study's target to `total` trials (COMPLETE + PRUNED), as `source` (--trials N, or the sweep file's
    study.trials) asks, and say what that means; None when nothing changes. A target is never lowered while
    other processes run the study's trials (UsageError): that would end their sweep early without a word to its
    user. check_only: raise if it would be refused, change nothing (before any teacher trains)."""
    with study_lock(study, study.study_name, "ask"):
        old, done = study.user_attrs.get(A_TRIALS), counts(study)["DONE"]
        if old == total:
            return _met(study.study_name, done, total, source)
        running = live_elsewhere(study)
        if old is not None and total < old and running:
            raise UsageError(
                f"study {study.study_name!r} is being run toward {old} trials ({done} done, {len(running)} running "
                f"in another process); {source} would end that sweep at {total}. Give --trials {old} (or more) to "
                f"add this machine's workers to it, or --new-study to start a separate study"
            )
        if check_only:
            return None
        study.set_user_attr(A_TRIALS, total)
        said = f"study {study.study_name}: target {old} -> {total} trials ({source})"
        return (
            said
            + ("; the running sweep takes the new target" if running else "")
            + (f"\n{_met(study.study_name, done, total, source)}" if done >= total else "")
        )


def _met(name: str, done: int, total: int, source: str) -> str | None:
    """What a target the study has already met means: nothing to train."""
    if done < total:
        return None
    return (
        f"study {name} already has {done} finished trials, which meets its target of {total} ({source}): "
        f"no trial to train. --trials is the study's total: to add 10 trials, give --trials {done + 10}"
    )


def recover(study: optuna.Study, on_failed: OnFailed | None = None) -> list[int]:
    """Fail and re-queue the trials whose worker is gone (kill -9, power loss, a lost machine)."""
    with study_lock(study, study.study_name, "ask"):  # no trial is between ask and its pid meanwhile
        return _recover(study, on_failed)


def _recoverable(study: optuna.Study) -> bool:
    """Will the RUNNING trials of this study finish or be recovered by a worker here? (heartbeats, or all on
    this host where a dead pid is seen)."""
    if heartbeat_interval(storage_of(study)):
        return True
    host = socket.gethostname()
    return all(t.user_attrs.get(T_HOST) in (None, host) for t in trials(study, "RUNNING"))
