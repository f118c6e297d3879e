"""A worker's session: what it opens before its first trial and holds until its last. The study's stores (the
Optuna study, the MLflow experiment), the data, the teacher pool (teachers trained when a trial first needs them),
the study's parent run and its teacher runs, and the hypervolume's box.

Used alike by `kdtrain sweep` (open_context with what it has loaded already) and by `kdtrain worker` on any machine
that reaches the stores (join: all of it from the study alone). One trial is kdtrain.sweep.trial, the ask-run-tell
loop kdtrain.sweep.worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdtrain import pareto, schema
from kdtrain.config import sweepfile
from kdtrain.data import datasets
from kdtrain.deploy.measure import Bench, measure
from kdtrain.distill import models, teachers
from kdtrain.errors import KdtrainError
from kdtrain.schema import Config
from kdtrain.shared import threads_per_worker
from kdtrain.study import search, space
from kdtrain.study.storage import study_lock
from kdtrain.sweep import followup
from kdtrain.sweep.baselines import StudyRuns
from kdtrain.tracking import client
from kdtrain.tracking.client import Tracker
from kdtrain.tracking.params import logged_whole


@dataclass
class Context:
    """One worker's session: the study and its config, the data, the teacher pool, the MLflow experiment and parent
    run, and the log. A trial (kdtrain.sweep.trial), the loop (kdtrain.sweep.worker) and the follow-up
    (kdtrain.sweep.followup) read it; baselines and confirm get only its `runs`, measurements its `bench`."""

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
    """Baselines trained while the tracking server was away, by key (kdtrain.sweep.baselines.ensure_baseline):
    their runs are logged once it answers (baselines.log_unlogged, before the loop's next trial)."""

    @property
    def bench(self) -> Bench:
        """What this worker measures its models with (kdtrain.deploy.measure)."""
        return Bench(
            input_shape=self.ds.input_shape, num_classes=self.ds.num_classes, settings=self.cfg.profile, log=self.log
        )

    @property
    def runs(self) -> StudyRuns:
        """Where this worker's baseline and confirm runs go and what they train on."""
        return StudyRuns(
            study=self.study,
            tracker=self.tracker,
            exp_id=self.exp_id,
            parent_id=self.parent_id,
            ds=self.ds,
            inputs=self.inputs,
            bench=self.bench,
            baseline_seeds=self.cfg.study.baseline_seeds,
            log=self.log,
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
    ctx = Context(
        study=study,
        cfg=cfg,
        ds=ds,
        pool=pool,
        tracker=tracker,
        exp_id=exp_id,
        parent_id=parent_id,
        log=log,
        inputs=data_inputs(tracker, cfg, ds),
    )
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
            if not logged_whole(ctx.tracker, ctx.exp_id, {"kdtrain.teacher_key": t.key}):
                log_teacher_run(ctx, t)


def log_teacher_run(ctx: Context, t: teachers.Teacher) -> None:
    """A teacher's run: its settings, accuracies and (unless the follow-up waits for them) deployment metrics and
    logged model, and its cache entry for the workers of other machines."""
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
    own = (("source_val_accuracy", t.source_val_accuracy), ("source_test_accuracy", t.source_test_accuracy))
    metrics.update({k: v for k, v in own if v is not None})
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


def hv_box(ctx: Context) -> dict:
    """The study's fixed hypervolume box (pareto.box; stored in the study the first time it is needed): the
    costs of the cheapest and the costliest students the search space can propose."""
    found = ctx.study.user_attrs.get(search.A_HV_BOX)
    if found is None:

        def costs(end: str) -> list[dict]:
            students = [sweepfile.replace(ctx.cfg, over).student for over in space.extreme_students(ctx.cfg, end)]
            timing = not followup.deferred(ctx.cfg) or followup.timing_needed(ctx.cfg)
            return [
                measure(models.from_config(m, ctx.ds.input_shape, ctx.ds.num_classes), m, ctx.bench, timing=timing)
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
