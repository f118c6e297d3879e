"""One trial: its student trained, measured and logged (run_trial), then its outcome told to Optuna and its MLflow
run closed (run_and_tell). Optuna stays behind kdtrain.study.search and MLflow behind kdtrain.tracking.client; this
module composes them with the trainer, which knows neither. The worker's session (kdtrain.sweep.session.Context)
holds what a trial uses; the loop that asks for trials is kdtrain.sweep.worker."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

import yaml

from kdtrain import pareto
from kdtrain.config import sweepfile
from kdtrain.deploy.measure import measure
from kdtrain.distill import models
from kdtrain.distill.student import distill_student
from kdtrain.distill.train import DivergedError
from kdtrain.errors import KdtrainError, Terminated, first_line, stopped_by
from kdtrain.paths import redact
from kdtrain.schema import METRICS, Config
from kdtrain.shared import cpu_room
from kdtrain.study import progress, recovery, search, space
from kdtrain.study.storage import StorageDown, StorageLost, no_wait
from kdtrain.sweep import baselines, followup
from kdtrain.sweep.session import Context
from kdtrain.tracking import client
from kdtrain.tracking.client import Tracker
from kdtrain.tracking.params import flat_params


def describe(cfg: Config) -> str:
    return (
        f"{cfg.student.arch} width {cfg.student.width}, T={cfg.kd.temperature:.3g}, alpha={cfg.kd.alpha:.3g}, "
        f"teachers={'+'.join(cfg.kd_teachers)} ({cfg.kd.ensemble})"
    )


# --------------------------------------------------------------------------- running a trial


def run_trial(ctx: Context, trial) -> list[float]:
    """Train, measure and log one trial's student; its objective values."""
    tcfg = sweepfile.replace(ctx.cfg, space.suggest(trial, ctx.cfg.search, ctx.cfg.kd.loss))
    run_id = start_run(ctx, trial, tcfg)
    history = []
    # cost metrics depend on the architecture only: known before training, they let the pareto rule prune. The
    # timed ones (latency, throughput) wait for the follow-up unless an objective or constraint needs them now.
    later = followup.deferred(ctx.cfg)
    metrics = measure(
        models.from_config(tcfg.student, ctx.ds.input_shape, ctx.ds.num_classes),
        tcfg.student,
        ctx.bench,
        timing=not later or followup.timing_needed(ctx.cfg),
    )
    on_epoch = epoch_check(ctx, trial, history, pareto_guard(ctx, tcfg, metrics))
    pool = ctx.need(tcfg.kd_teachers) if tcfg.kd.alpha > 0 else ctx.pool  # a teacher not trained yet: now
    start = time.perf_counter()
    try:
        r = distill_student(tcfg, ctx.ds, pool, on_epoch=on_epoch, epoch_guard=cpu_room)
    except BaseException:
        search.set_trial_attr(trial, search.T_COMPUTE, time.perf_counter() - start)  # quietly: the error matters
        ctx.tracker.log_metrics(run_id, metrics, history)  # its costs and the partial curves
        raise
    search.record(
        trial,
        {search.T_COMPUTE: time.perf_counter() - start, search.T_CURVE: [round(h.val_accuracy, 6) for h in r.history]},
    )
    metrics.update(
        val_accuracy=r.val_accuracy,
        test_accuracy=r.test_accuracy,
        train_seconds=r.seconds,
        train_steps=r.steps,
        **baselines.label_metrics(ctx.ds),
    )
    log_trial(ctx, trial, run_id, tcfg, r, metrics, history)
    return [metrics[m] for m in ctx.cfg.study.objectives]


def start_run(ctx: Context, trial, tcfg: Config) -> str:
    """The trial's MLflow run (the server away: waited for), its id recorded in the trial."""
    tags = {
        "optuna.study": ctx.study.study_name,
        "optuna.trial": trial.number,
        "optuna.state": "RUNNING",
        search.T_HOST: socket.gethostname(),
        search.T_PID: os.getpid(),
        "mlflow.note.content": describe(tcfg),
    }
    ctx.tracker.labels = {"study": ctx.study.study_name, "trial": trial.number}  # kept writes say whose they are
    run_id = ctx.tracker.start(
        ctx.exp_id,
        f"trial-{trial.number}",
        "student",
        ctx.parent_id,
        tags=tags,
        params=flat_params(tcfg),
        inputs=ctx.inputs,
    )  # the server away: waited for
    search.record(trial, {search.T_RUN: run_id})
    return run_id


def epoch_check(ctx: Context, trial, history: list, pareto_check: Callable[[list[float]], None] | None):
    """What the trainer calls after each epoch: the epoch kept in `history`, then the pruner asked (a single
    val_accuracy objective: Optuna's pruner; the pareto pruner: pareto_check). The study's database away: that
    epoch goes unchecked, training goes on."""
    single = len(ctx.cfg.study.objectives) == 1 and "val_accuracy" in ctx.cfg.study.objectives

    def on_epoch(s):
        history.append(s)
        try:
            with no_wait():  # the study's database away: this epoch goes unchecked, training goes on
                if single:
                    if search.report(trial, s.val_accuracy, s.epoch):
                        raise search.TrialPruned(f"pruned at epoch {s.epoch} (val_accuracy {s.val_accuracy:.4f})")
                elif pareto_check:
                    pareto_check([h.val_accuracy for h in history])
        except StorageDown:
            pass

    return on_epoch


def log_trial(ctx: Context, trial, run_id: str, tcfg: Config, r, metrics: dict, history: list) -> None:
    """A trained trial's numbers to the study and its run: with study.follow_up: per_trial also its gain over its
    width's baseline and its logged model (else kdtrain.sweep.followup logs the gain, latency and model later)."""
    later = followup.deferred(ctx.cfg)
    if not later:
        base = baselines.ensure_baseline(ctx.runs, tcfg, ctx.unlogged)
        metrics.update(baselines.gains(metrics, base, len(ctx.ds.y_val)))
    search.set_constraints(trial, pareto.constraint_values(ctx.cfg.study.constraints, metrics))
    search.record(trial, {k: metrics[k] for k in METRICS if k in metrics})
    model_id = (
        None
        if later
        else ctx.runs.log_model(
            run_id, f"trial-{trial.number}", r.model, {"kdtrain.role": "student", "optuna.trial": trial.number}
        )
    )
    ctx.tracker.log_metrics(run_id, metrics, history, model_id=model_id)
    ctx.tracker.log_state_dict(run_id, r.model.state_dict(), client.MODEL_ARTIFACT)
    ctx.tracker.log_text(run_id, yaml.safe_dump(tcfg.to_dict(), sort_keys=False), client.CONFIG_ARTIFACT)


def pareto_guard(ctx: Context, tcfg: Config, costs: dict) -> Callable[[list[float]], None] | None:
    """For a study with the pareto pruner: the check that, given the trial's val accuracy per epoch so far,
    raises TrialPruned when kdtrain.pareto's rule says so (None for other pruners)."""
    s = ctx.cfg.study
    if s.resolved_pruner() != "pareto":
        return None
    warmup, epochs = s.prune_warmup(tcfg.train.epochs), tcfg.train.epochs

    def check(curve: list[float]) -> None:
        if len(curve) <= warmup:
            return
        finished = [
            pareto.Course(
                t.number, {m: t.user_attrs[m] for m in s.objectives if m in pareto.COSTS}, t.user_attrs[search.T_CURVE]
            )
            for t in search.trials(ctx.study, "COMPLETE")
            if len(t.user_attrs.get(search.T_CURVE, ())) == epochs
        ]
        hit = pareto.dominated_by(costs, curve, finished, s.objectives, s.prune_margin, warmup)
        if hit:
            raise search.TrialPruned(
                f"pruned at epoch {len(curve)}: trial {hit[0].number} is at least as cheap "
                f"and was {100 * hit[1]:.1f} points more accurate at this epoch"
            )

    return check


def log_progress(ctx: Context) -> None:
    """The parent run's hypervolume and compute_s (training seconds so far), step = finished trials."""
    h = progress.hv_history(ctx.study, ctx.cfg.study.objectives, ctx.cfg.study.constraints)
    if h:
        ctx.tracker.log_step(ctx.parent_id, {"hypervolume": h[-1][1], "compute_s": h[-1][0]}, len(h))


# --------------------------------------------------------------------------- telling its outcome


class Outcome(NamedTuple):
    """How a trial ended, for Optuna (state, values) and its MLflow run (status, tags), and the line that says it.
    state None: another worker failed the trial meanwhile (its result is dropped)."""

    state: str | None
    values: list[float] | None = None
    status: str = "FINISHED"
    tags: dict | None = None
    line: str = ""


def run_and_tell(ctx: Context, trial) -> None:
    """Run a trial, tell Optuna its outcome, then end its MLflow run. Once the tell is made nothing here may stop
    the worker: the result is in the study, and a run that cannot be closed costs a warning, not the sweep."""
    out = outcome(ctx, trial)
    if out is None:
        return
    state = out.state
    if state is not None:
        try:
            search.tell(ctx.study, trial, state, out.values)
        except search.TrialTakenOver:
            state = None
    run_id = trial.user_attrs.get(search.T_RUN)  # read now: set once its run started
    if state is None:
        # another worker saw no heartbeat for the grace period and failed this trial (a long database outage);
        # its re-queued copy runs again, so this result is dropped rather than counted twice
        dropped = "failed by another worker (no heartbeat) while still running; result dropped"
        close(ctx.tracker, run_id, "FAIL", "KILLED", {"fail_reason": dropped}, ctx.log)
        ctx.log(f"trial {trial.number} was failed by another worker while running (no heartbeat); result dropped")
        return
    close(ctx.tracker, run_id, state, out.status, out.tags, ctx.log)
    ctx.log(out.line)
    if state != "FAIL":
        try:
            log_progress(ctx)
        except Exception as e:  # noqa: BLE001 - MLflow's errors are many; the study holds the result
            ctx.log(f"warning: trial {trial.number}: the study's progress was not logged to MLflow ({first_line(e)})")


def outcome(ctx: Context, trial) -> Outcome | None:
    """Run the trial and say how it ended; None when it was interrupted by the tracking server's absence (failed
    and re-queued here). An interrupted worker fails its trial and stops; a lost study database stops it too (the
    next run recovers the trial)."""
    n = trial.number
    try:
        values = run_trial(ctx, trial)
        line = f"trial {n} complete: " + ", ".join(
            f"{m}={v:.4g}" for m, v in zip(ctx.cfg.study.objectives, values, strict=False)
        )
    except search.TrialPruned as e:
        return Outcome(state="PRUNED", tags={"prune_reason": str(e)}, line=f"trial {n} pruned: {e}")
    except search.TrialTakenOver:
        return Outcome(state=None)
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted(ctx, trial, e)
        raise
    except StorageLost:
        raise  # the study's database is gone past study.storage_patience: the next run recovers the trial
    except Exception as e:  # noqa: BLE001 - MLflow's errors are many; the study holds the result
        stop = stopped_by(e)
        if stop is None:
            return failed(ctx, trial, e)
        interrupted(ctx, trial, stop)  # a stop that a library's cleanup turned into its own error
        raise stop from None
    return Outcome(state="COMPLETE", values=values, line=line)


def interrupted(ctx: Context, trial, e: BaseException) -> None:
    """A trial stopped by Ctrl-C or SIGTERM: failed as interrupted and queued again, its MLflow run KILLED."""
    why = "SIGTERM" if isinstance(e, Terminated) else "the user (Ctrl-C)"
    recovery.fail_trial(ctx.study, trial, f"interrupted: stopped by {why}", killed(ctx.tracker))


def failed(ctx: Context, trial, e: Exception) -> Outcome | None:
    """A trial that raised: failed with its reason, or (the tracking server away past study.storage_patience: not
    the settings' fault) failed and re-queued here (None)."""
    n = trial.number
    if ctx.tracker.away(e):
        recovery.fail_trial(ctx.study, trial, f"interrupted: {redact(first_line(e))}", killed(ctx.tracker))
        ctx.log(f"trial {n} interrupted: the MLflow tracking server is unreachable; failed and re-queued")
        return None
    reason = (
        str(e)
        if isinstance(e, (DivergedError, KdtrainError))
        else f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
    )
    reason = redact(reason)[:2000]
    search.set_trial_attr(trial, search.T_FAIL_REASON, reason)
    return Outcome(
        state="FAIL", status="FAILED", tags={"fail_reason": reason}, line=f"trial {n} failed: {reason.splitlines()[0]}"
    )


def close(
    tracker: Tracker,
    run_id: str | None,
    state: str,
    status: str,
    tags: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """End a trial's MLflow run with the trial's final Optuna state as a tag. With ``log`` a failure is one warning
    line (the trial is told already): the tags failing does not keep the run from ending."""
    if not run_id:
        return
    try:
        try:
            tracker.set_tags(run_id, {"optuna.state": state, **(tags or {})})
        finally:
            tracker.end(run_id, status)
    except Exception as e:  # MLflow's errors are many; the study holds the result
        if log is None:
            raise
        log(
            f"warning: MLflow run {run_id} of this trial not fully closed ({type(e).__name__}: {first_line(e)}); "
            "the study holds the trial's result"
        )


def killed(tracker: Tracker) -> recovery.OnFailed:
    """What recovery does to the MLflow run of a trial it fails for a dead or interrupted worker."""
    return lambda run_id, reason: close(tracker, run_id, "FAIL", "KILLED", {"fail_reason": reason})
