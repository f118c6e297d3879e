"""One worker's ask-run-tell loop: trials asked of the study until it has its trial count or the deadline passes,
each run and told (kdtrain.sweep.trial), the dead workers' trials recovered, the follow-up done while waiting and at
the end. Its session (stores, data, teacher pool, MLflow runs) is kdtrain.sweep.session's Context; spawning local
worker processes is kdtrain.sweep.processes."""

from __future__ import annotations

import time

from kdtrain import schema
from kdtrain.study import first_trials, recovery, search
from kdtrain.sweep import baselines, followup
from kdtrain.sweep.session import Context
from kdtrain.sweep.trial import close, killed, run_and_tell
from kdtrain.tracking import client


def work(ctx: Context, deadline: float | None = None, poll_s: float = 2.0) -> None:
    """Ask, run, tell until the study has its trial count (COMPLETE + PRUNED) or the deadline passes."""
    waiting_said, goal = False, search.target(ctx.study, ctx.cfg)
    while True:
        goal = retargeted(ctx, goal)
        ctx.tracker.labels = {}
        # a tracking server away: the finished trials' kept writes go first (a rerun sends a dead worker's too)
        ctx.tracker.wait_sent(schema.parse_duration(ctx.cfg.study.storage_patience), ctx.log)
        baselines.log_unlogged(ctx.runs, ctx.unlogged)
        nxt = recovery.next_trial(
            ctx.study,
            ctx.cfg.study.trials,
            deadline,
            on_failed=killed(ctx.tracker),
            fixed=lambda: first_trials.steer(ctx),
        )
        for n in nxt.recovered or []:
            ctx.log(f"trial {n}: its worker is gone; failed and re-queued")
        if nxt.trial is None and not nxt.waiting:
            if followup.deferred(ctx.cfg):  # the trials are in (or the deadline stopped new ones): their baselines,
                followup.run(ctx)  # latencies and logged models, which the report needs
            return
        if nxt.trial is None:
            if not waiting_said:
                ctx.log(f"waiting: the {nxt.waiting} trial(s) still missing run on other workers")
                waiting_said = True
            # idle: one width's follow-up while the others' trials run, else wait for them
            if not (followup.deferred(ctx.cfg) and followup.run(ctx, limit=1)):
                time.sleep(poll_s)
            continue
        waiting_said = False
        with recovery.heartbeat(ctx.study, nxt.trial):
            run_and_tell(ctx, nxt.trial)


def retargeted(ctx: Context, goal: int) -> int:
    """The study's trial count now; said once when another kdtrain sweep set a new total (recovery.retarget)."""
    now = search.target(ctx.study, ctx.cfg)
    if now != goal:
        print(
            f"study {ctx.study.study_name}: its target changed from {goal} to {now} trials (set by another "
            "kdtrain sweep)",
            flush=True,
        )
    return now


def recover(ctx: Context) -> list[int]:
    """Fail and re-queue the trials whose worker died (recovery.recover), closing their MLflow runs as KILLED;
    then any student run still RUNNING whose trial is failed (a worker killed between creating the run and
    recording its id in the study). The recovered trial numbers."""
    recovered = recovery.recover(ctx.study, killed(ctx.tracker))
    failed = {t.number for t in search.trials(ctx.study, "FAIL")}
    for run_id in ctx.tracker.find(ctx.exp_id, {client.ROLE: "student", "optuna.state": "RUNNING"}):
        number = ctx.tracker.run_tags(run_id).get("optuna.trial", "")
        if number.isdigit() and int(number) in failed and ctx.tracker.status(run_id) == "RUNNING":
            close(
                ctx.tracker, run_id, "FAIL", "KILLED", {"fail_reason": "its worker died before the study knew its run"}
            )
    return recovered


def finish(ctx: Context) -> int:
    """After the loop: the study's done count; the parent run is FINISHED once the study is complete, whoever
    started it."""
    done, goal = search.counts(ctx.study)["DONE"], search.target(ctx.study, ctx.cfg)
    if done >= goal:
        ctx.tracker.end(ctx.parent_id, "FINISHED")
    return done
