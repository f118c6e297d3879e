"""One worker: its context (stores, data, teacher pool, MLflow runs) and the ask-run-tell loop.

Used alike by `kdtrain sweep` (in-process for one worker, else as subprocesses) and by `kdtrain worker` on
any machine that reaches the stores. Optuna stays behind kdtrain.study.search and MLflow behind kdtrain.tracking.client;
this module composes them with the trainer, which knows neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdtrain import pareto, schema
from kdtrain.config import sweepfile
from kdtrain.data import datasets
from kdtrain.distill import models, teachers
from kdtrain.distill.student import distill_student
from kdtrain.distill.train import DivergedError
from kdtrain.errors import KdtrainError, Terminated, first_line
from kdtrain.paths import redact
from kdtrain.schema import METRICS, Config
from kdtrain.shared import cpu_room, threads_per_worker
from kdtrain.study import first_trials, progress, recovery, search, space
from kdtrain.study.storage import StorageDown, StorageLost, no_wait, study_lock
from kdtrain.sweep import baselines, followup
from kdtrain.tracking import client
from kdtrain.tracking.client import Tracker


@dataclass
class Context:
    study: object
    """The Optuna study (only kdtrain.study.search looks inside)."""
    cfg: Config
    ds: datasets.Dataset
    pool: dict[str, teachers.Teacher]
    tracker: Tracker
    exp_id: str
    parent_id: str
    log: Callable[[str], None]
    inputs: list = dataclasses.field(default_factory=list)
    """The data as MLflow dataset inputs (train, validation, test), logged with every run."""
    unlogged: dict = dataclasses.field(default_factory=dict)
    """Baselines trained while the tracking server was away, by key: their runs are logged once it answers."""

    def example(self):
        """Two validation samples as the models take them: the logged models' input example and signature."""
        return self.ds.x_val[:2].cpu().numpy()

    def log_model(self, run_id: str, name: str, model, tags: dict) -> str | None:
        """A run's model as an MLflow logged model (see Tracker.log_model), named after its run."""
        return self.tracker.log_model(
            run_id, self.exp_id, name, model, self.example(), {"optuna.study": self.study.study_name, **tags}
        )

    def need(self, names: list[str]) -> dict[str, teachers.Teacher]:
        """The pool with these teachers in it: one this worker has not loaded yet comes from this machine's cache,
        from the study's teacher run (another machine trained it), or is trained now, by one worker of this machine
        while the others wait for it. Its run is logged once per study."""
        for name in [n for n in names if n not in self.pool]:
            key = teachers.teacher_key(self.cfg.teacher(name), self.cfg)
            # study-wide (every machine): one trains and logs it, the others fetch that very teacher from its run
            with study_lock(self.study, self.study.study_name, f"teacher-{key}"):
                fetch_teachers(self.cfg, self.tracker, self.exp_id, self.log, [name])
                self.pool.update(load_pool(self.cfg, self.ds, [name], log=self.log))
                ensure_teacher_runs(self)
        return self.pool


# --------------------------------------------------------------------------- assembling a worker


def load_pool(
    cfg: Config, ds: datasets.Dataset, names: list[str] | None = None, log: Callable[[str], None] = print, on_epoch=None
) -> dict[str, teachers.Teacher]:
    """The teacher pool, with teachers[].weights that name MLflow models (runs:/, models:/) read through MLflow."""
    return teachers.load_pool(cfg, ds, names, log=log, on_epoch=on_epoch, load_uri=client.load_state_dict)


def first_teachers(cfg: Config) -> list[str]:
    """The teachers a sweep loads before its first trial: those the base trial distils from, every teacher that
    is loaded rather than trained (a checkpoint, a logits or model file: seconds, and a bad file is an error
    before anything trains) and every one this machine has cached. The rest are trained when a trial first needs
    them (Context.need), so that the front starts to move after one teacher's training instead of all of them."""
    base = set(cfg.kd_teachers) if cfg.kd.alpha > 0 and "kd.teachers" not in cfg.search else set()
    if "kd.teachers" in cfg.search:  # the enqueued base trial distils from the base subset when it is a choice
        spec = cfg.search["kd.teachers"]
        choices = space.subsets(spec["of"]) if spec["type"] == "subset" else spec.get("choices", [])
        base = set(cfg.kd_teachers) if "+".join(cfg.kd_teachers) in choices else {t.name for t in cfg.teachers}
    return [t.name for t in cfg.teachers if t.name in base or teachers.kind(t) != "train" or teachers.is_cached(t, cfg)]


def open_context(
    study,
    tracker: Tracker,
    cfg: Config | None = None,
    *,
    ds: datasets.Dataset | None = None,
    pool: dict | None = None,
    threads: int | None = None,
    worker: int = 0,
    sweep_file: str | None = None,
    log: Callable[[str], None] = print,
) -> Context:
    """What a worker needs. `kdtrain sweep` passes what it has loaded already (its config, data and pool) and
    its sweep file (the parent run is then reopened); `kdtrain worker` gets all of it from the study alone,
    fetching the teachers from the study's teacher runs instead of training its own copies."""
    cfg = cfg or search.study_config(study)
    # `kdtrain worker` without --threads is one worker on its machine: the sweep file's train.threads, else the
    # CPUs it may use (its affinity and cgroup quota); `kdtrain sweep` passes its split
    threads = threads or threads_per_worker(cfg.train.threads, 1)
    if threads != cfg.train.threads:
        cfg = sweepfile.replace(cfg, {"train.threads": threads})
    search.configure(study, cfg, worker)
    tracker.patience = schema.parse_duration(cfg.study.storage_patience)  # a run's creation waits that long
    ds = ds or datasets.load(cfg.data)
    exp_id = tracker.experiment(study.study_name)
    if pool is None:
        fetch_teachers(cfg, tracker, exp_id, log)
        pool = load_pool(cfg, ds, first_teachers(cfg), log=log)
    parent_id = study.user_attrs.get(search.A_PARENT)
    if sweep_file or not parent_id:
        parent_id = ensure_parent(tracker, exp_id, study, cfg, sweep_file)
    ctx = Context(study, cfg, ds, pool, tracker, exp_id, parent_id, log, data_inputs(tracker, cfg, ds))
    ensure_teacher_runs(ctx)
    if len(cfg.study.objectives) > 1:
        hv_box(ctx)
    if not study.user_attrs.get(search.A_READY):
        study.set_user_attr(search.A_READY, True)  # workers waiting with --wait may join now
    return ctx


def data_inputs(tracker: Tracker, cfg: Config, ds: datasets.Dataset) -> list:
    """The data as MLflow dataset inputs, one per split (context train, validation, test), named after the dataset
    and the user's file or factory (mnist1d, folder:shapes, csv:flowers.csv)."""
    d = cfg.data
    source = d.path or d.factory
    name = f"{d.name}:{Path(source).name if d.path else source}" if source else d.name
    return tracker.dataset_inputs(
        name,
        {
            context: (getattr(ds, f"x_{s}").cpu().numpy(), getattr(ds, f"y_{s}").cpu().numpy())
            for s, context in (("train", "train"), ("val", "validation"), ("test", "test"))
        },
    )


def join(
    study_name: str,
    storage_url: str | None,
    tracking_uri: str | None,
    threads: int | None = None,
    worker: int | None = None,
    wait_s: float | None = None,
    log: Callable[[str], None] = print,
) -> Context:
    """`kdtrain worker`: the study (waited for with wait_s), its MLflow server checked, then open_context."""
    if wait_s:
        study = search.wait_for(study_name, storage_url, wait_s, log)
    else:
        try:
            study = search.load(study_name, storage_url)
        except KdtrainError as e:
            raise KdtrainError(
                f"{e}. A worker that starts before its study can wait for it: kdtrain worker "
                f"--study {study_name} --wait 10m"
            ) from None
    uri = search.tracking_uri(study, tracking_uri)
    client.check_reachable(uri)  # one clear line now, not minutes of MLflow's retries later
    return open_context(study, Tracker(uri), threads=threads, worker=os.getpid() if worker is None else worker, log=log)


def fetch_teachers(
    cfg: Config, tracker: Tracker, exp_id: str, log: Callable[[str], None], names: list[str] | None = None
) -> None:
    """Fill this machine's teacher cache from the study's teacher runs (all, or the named ones), so that every
    worker of a study, on any machine, distils from the very same teachers (and none trains them again)."""
    for t in cfg.teachers:
        if (names is not None and t.name not in names) or teachers.is_cached(t, cfg):
            continue
        folder = teachers.cache_dir(t, cfg)
        for run_id in tracker.find(exp_id, {"kdtrain.teacher_key": teachers.teacher_key(t, cfg)}):
            if tracker.fetch_dir(run_id, client.TEACHER_ARTIFACTS, folder):
                log(f"teacher {t.name}: fetched from MLflow run {run_id}")
                break


def ensure_parent(tracker: Tracker, exp_id: str, study, cfg: Config, sweep_file: str | None) -> str:
    """The study's parent run (kdtrain.role=sweep): created once, reopened on resume."""
    with study_lock(study, study.study_name, "parent"):
        found = tracker.find(exp_id, {client.ROLE: "sweep", "optuna.study": study.study_name})
        if found:
            run_id = found[0]
            tracker.reopen(run_id)
        else:
            run_id = tracker.start(
                exp_id,
                study.study_name,
                "sweep",
                tags={"optuna.study": study.study_name},
                params={
                    "study.objectives": json.dumps(cfg.study.objectives),
                    "study.sampler": cfg.study.sampler,
                    "search": json.dumps(cfg.search, sort_keys=True),
                },
            )
            tracker.log_text(run_id, yaml.safe_dump(cfg.to_dict(), sort_keys=False), client.SWEEP_ARTIFACT)
            if sweep_file:
                tracker.log_file(run_id, sweep_file)
        study.set_user_attr(search.A_PARENT, run_id)
        study.set_user_attr(search.A_EXP, exp_id)
    return run_id


def ensure_teacher_runs(ctx: Context) -> None:
    """Every teacher of the pool is a run of the study (logged once)."""
    with study_lock(ctx.study, ctx.study.study_name, "teachers"):
        for t in ctx.pool.values():
            if baselines.logged_whole(ctx, {"kdtrain.teacher_key": t.key}):
                continue
            run = ctx.tracker.start(
                ctx.exp_id,
                f"teacher-{t.name}",
                "teacher",
                ctx.parent_id,
                tags={
                    "kdtrain.teacher_key": t.key,
                    "kdtrain.source": t.source,
                    **({"kdtrain.teacher_data": teacher_data_name(t.config)} if t.config.data is not None else {}),
                },
                params={f"teacher.{k}": v for k, v in dataclasses.asdict(t.config).items()},
            )
            ctx.tracker.log_inputs(run, ctx.inputs)
            # latency and the logged model wait for the follow-up (study.follow_up: after): the trials need the
            # teacher's logits only, and exporting a GRU alone took seconds
            later = followup.deferred(ctx.cfg)
            metrics = followup.teacher_metrics(t, ctx, timing=not later)
            metrics.update(val_accuracy=t.val_accuracy, test_accuracy=t.test_accuracy, train_seconds=t.seconds)
            # a teacher from another domain: its accuracy on its own data beside the student's ("source only")
            metrics.update(
                {
                    k: v
                    for k, v in (
                        ("source_val_accuracy", t.source_val_accuracy),
                        ("source_test_accuracy", t.source_test_accuracy),
                    )
                    if v is not None
                }
            )
            model_id = followup.teacher_model(ctx, run, t) if not later else None
            ctx.tracker.log_metrics(run, metrics, model_id=model_id)
            # the cache entry itself (weights, logits, meta): workers on other machines fetch it instead of
            # training their own, slightly different, copy of the teacher
            ctx.tracker.log_dir(run, t.path, client.TEACHER_ARTIFACTS)
            ctx.tracker.end(run)


def teacher_data_name(t) -> str:
    """A teacher's own data in words, for its run and the report: mnist1d (size 5000, seed 1, iid_noise_scale 0.1)."""
    d = dict(t.data)
    name = d.pop("name", "mnist1d")
    opts = d.pop("options", None) or {}
    parts = [f"{k} {v}" for k, v in {**d, **opts}.items() if k not in ("root", "download")]
    return f"{name} ({', '.join(parts)})" if parts else name


# --------------------------------------------------------------------------- baselines and trials


def describe(cfg: Config) -> str:
    return (
        f"{cfg.student.arch} width {cfg.student.width}, T={cfg.kd.temperature:.3g}, alpha={cfg.kd.alpha:.3g}, "
        f"teachers={'+'.join(cfg.kd_teachers)} ({cfg.kd.ensemble})"
    )


def run_trial(ctx: Context, trial) -> list[float]:
    """Train, measure and log one trial's student; its objective values."""
    tcfg = sweepfile.replace(ctx.cfg, space.suggest(trial, ctx.cfg.search, ctx.cfg.kd.loss))
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
        params=baselines.flat_params(tcfg),
        inputs=ctx.inputs,
    )  # the server away: waited for
    search.record(trial, {search.T_RUN: run_id})
    history = []
    single = len(ctx.cfg.study.objectives) == 1 and "val_accuracy" in ctx.cfg.study.objectives
    # cost metrics depend on the architecture only: known before training, they let the pareto rule prune. The
    # timed ones (latency, throughput) wait for the follow-up unless an objective or constraint needs them now.
    later = followup.deferred(ctx.cfg)
    metrics = baselines.measure(
        models.from_config(tcfg.student, ctx.ds.input_shape, ctx.ds.num_classes),
        ctx,
        tcfg.student,
        timing=not later or followup.timing_needed(ctx.cfg),
    )
    pareto_check = pareto_guard(ctx, tcfg, metrics)

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
    if not later:  # study.follow_up: per_trial (else kdtrain.sweep.followup logs the gain, latency and model later)
        metrics.update(baselines.gains(metrics, baselines.ensure_baseline(ctx, tcfg), len(ctx.ds.y_val)))
    search.set_constraints(trial, pareto.constraint_values(ctx.cfg.study.constraints, metrics))
    search.record(trial, {k: metrics[k] for k in METRICS if k in metrics})
    model_id = (
        None
        if later
        else ctx.log_model(
            run_id, f"trial-{trial.number}", r.model, {"kdtrain.role": "student", "optuna.trial": trial.number}
        )
    )
    ctx.tracker.log_metrics(run_id, metrics, history, model_id=model_id)
    ctx.tracker.log_state_dict(run_id, r.model.state_dict(), client.MODEL_ARTIFACT)
    ctx.tracker.log_text(run_id, yaml.safe_dump(tcfg.to_dict(), sort_keys=False), client.CONFIG_ARTIFACT)
    return [metrics[m] for m in ctx.cfg.study.objectives]


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


def hv_box(ctx: Context) -> dict:
    """The study's fixed hypervolume box (pareto.box; stored in the study the first time it is needed): the
    costs of the cheapest and the costliest students the search space can propose."""
    found = ctx.study.user_attrs.get(search.A_HV_BOX)
    if found is None:

        def costs(end: str) -> list[dict]:
            students = [sweepfile.replace(ctx.cfg, over).student for over in space.extreme_students(ctx.cfg, end)]
            timing = not followup.deferred(ctx.cfg) or followup.timing_needed(ctx.cfg)
            return [
                baselines.measure(models.from_config(m, ctx.ds.input_shape, ctx.ds.num_classes), ctx, m, timing=timing)
                for m in students
            ]

        low, high = costs("low"), costs("high")
        cheaper = lambda k: max if k == "throughput" else min  # noqa: E731  (throughput: higher is cheaper)
        dearer = lambda k: min if k == "throughput" else max  # noqa: E731
        found = pareto.box(
            ctx.cfg.study.objectives,
            {k: cheaper(k)(c[k] for c in low) for k in low[0]},
            {k: dearer(k)(c[k] for c in high) for k in high[0]},
        )
        ctx.study.set_user_attr(search.A_HV_BOX, found)
    return found


def log_progress(ctx: Context) -> None:
    """The parent run's hypervolume and compute_s (training seconds so far), step = finished trials."""
    h = progress.hv_history(ctx.study, ctx.cfg.study.objectives, ctx.cfg.study.constraints)
    if h:
        ctx.tracker.log_step(ctx.parent_id, {"hypervolume": h[-1][1], "compute_s": h[-1][0]}, len(h))


# --------------------------------------------------------------------------- the loop


def work(ctx: Context, deadline: float | None = None, poll_s: float = 2.0) -> None:
    """Ask, run, tell until the study has its trial count (COMPLETE + PRUNED) or the deadline passes."""
    waiting_said, goal = False, search.target(ctx.study, ctx.cfg)
    while True:
        now = search.target(ctx.study, ctx.cfg)
        if now != goal:  # another kdtrain sweep set a new total (recovery.retarget)
            print(
                f"study {ctx.study.study_name}: its target changed from {goal} to {now} trials (set by another "
                "kdtrain sweep)",
                flush=True,
            )
            goal = now
        ctx.tracker.labels = {}
        # a tracking server away: the finished trials' kept writes go first (a rerun sends a dead worker's too)
        ctx.tracker.wait_sent(schema.parse_duration(ctx.cfg.study.storage_patience), ctx.log)
        for cfg in list(ctx.unlogged.values()):
            baselines.ensure_baseline(ctx, ctx.unlogged.pop(baselines.student_key(cfg)))
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
            _run_and_tell(ctx, nxt.trial)


def _run_and_tell(ctx: Context, trial) -> None:
    """Run a trial, tell Optuna its outcome, then end its MLflow run. Once the tell is made nothing here may stop
    the worker: the result is in the study, and a run that cannot be closed costs a warning, not the sweep."""
    study, tracker, n = ctx.study, ctx.tracker, trial.number
    run_id = lambda: trial.user_attrs.get(search.T_RUN)  # noqa: E731  (read when needed: set once its run starts)
    try:
        values = run_trial(ctx, trial)
        state, status, tags = "COMPLETE", "FINISHED", {}
        line = f"trial {n} complete: " + ", ".join(
            f"{m}={v:.4g}" for m, v in zip(ctx.cfg.study.objectives, values, strict=False)
        )
    except search.TrialPruned as e:
        values, state, status, tags, line = (
            None,
            "PRUNED",
            "FINISHED",
            {"prune_reason": str(e)},
            f"trial {n} pruned: {e}",
        )
    except search.TrialTakenOver:
        values, state = None, None
    except (KeyboardInterrupt, SystemExit) as e:
        why = "SIGTERM" if isinstance(e, Terminated) else "the user (Ctrl-C)"
        recovery.fail_trial(study, trial, f"interrupted: stopped by {why}", killed(tracker))
        raise
    except StorageLost:
        raise  # the study's database is gone past study.storage_patience: the next run recovers the trial
    except Exception as e:  # noqa: BLE001 - MLflow's errors are many; the study holds the result
        if tracker.away(e):  # the tracking server away past study.storage_patience: not the settings' fault
            recovery.fail_trial(study, trial, f"interrupted: {redact(first_line(e))}", killed(tracker))
            ctx.log(f"trial {n} interrupted: the MLflow tracking server is unreachable; failed and re-queued")
            return
        reason = (
            str(e)
            if isinstance(e, (DivergedError, KdtrainError))
            else f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        )
        reason = redact(reason)[:2000]
        values, state, status, tags = None, "FAIL", "FAILED", {"fail_reason": reason}
        line = f"trial {n} failed: {reason.splitlines()[0]}"
        search.set_trial_attr(trial, search.T_FAIL_REASON, reason)
    if state is not None:
        try:
            search.tell(study, trial, state, values)
        except search.TrialTakenOver:
            state = None
    if state is None:
        # another worker saw no heartbeat for the grace period and failed this trial (a long database outage);
        # its re-queued copy runs again, so this result is dropped rather than counted twice
        close(
            tracker,
            run_id(),
            "FAIL",
            "KILLED",
            {"fail_reason": "failed by another worker (no heartbeat) while still running; result dropped"},
            ctx.log,
        )
        ctx.log(f"trial {n} was failed by another worker while running (no heartbeat); result dropped")
        return
    close(tracker, run_id(), state, status, tags, ctx.log)
    ctx.log(line)
    if state != "FAIL":
        try:
            log_progress(ctx)
        except Exception as e:  # noqa: BLE001 - MLflow's errors are many; the study holds the result
            ctx.log(f"warning: trial {n}: the study's progress was not logged to MLflow ({first_line(e)})")


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


def killed(tracker: Tracker) -> recovery.OnFailed:
    """What recovery does to the MLflow run of a trial it fails for a dead or interrupted worker."""
    return lambda run_id, reason: close(tracker, run_id, "FAIL", "KILLED", {"fail_reason": reason})


def finish(ctx: Context) -> int:
    """After the loop: the study's done count; the parent run is FINISHED once the study is complete, whoever
    started it."""
    done, goal = search.counts(ctx.study)["DONE"], search.target(ctx.study, ctx.cfg)
    if done >= goal:
        ctx.tracker.end(ctx.parent_id, "FINISHED")
    return done
