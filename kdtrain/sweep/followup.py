"""The work a finished trial leaves for later: its width's no-teacher baseline and its gain over it, its latency,
and its MLflow logged model; and each teacher run's latency and logged model.

None of it moves the front (the objectives are known when a trial ends), so with study.follow_up: after (the
default) a worker does it once the study has its trials, or while it waits for other workers' trials, instead of
before each trial can report. Measured on the quickstart (docs/benchmarks.md, B7): the seeded baselines were 30
of the 20 trials' 55 trainings. Nothing is dropped: every complete trial gets the same metrics, runs and models as
with study.follow_up: per_trial, only later, the front's widths first (the report's verdict needs those).

Work is done per student width (a baseline key): every worker takes the widths no other worker holds, under a
study-wide lock per width, so workers of one study share it and none does a width twice. Which trials are done is
a study attribute per trial (kdtrain.followed_up.<n>): a finished trial itself can no longer be written.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from kdtrain import pareto
from kdtrain.config import sweepfile
from kdtrain.deploy.measure import measure
from kdtrain.deploy.profile import profile, profile_onnx
from kdtrain.distill import models, teachers
from kdtrain.errors import first_line
from kdtrain.schema import Config
from kdtrain.study import search, space
from kdtrain.study.storage import try_study_lock
from kdtrain.sweep import baselines
from kdtrain.tracking import client
from kdtrain.tracking.params import trial_model

A_DONE = "kdtrain.followed_up."
"""Study attribute prefix: kdtrain.followed_up.<trial number> is set once that trial's follow-up is logged."""
TIMING = ("latency_ms_p50", "latency_ms_p95", "latency_cv", "latency_noisy", "latency_threads", "throughput")
"""The deployment metrics that need a timed measurement (the others are counted from the architecture)."""


def timing_needed(cfg: Config) -> bool:
    """Whether a trial needs its latency when it ends: an objective or a constraint names a timed metric."""
    s = cfg.study
    named = list(s.objectives) + [pareto.constraint_metric(k) for k in s.constraints]
    return any(m in TIMING for m in named)


def deferred(cfg: Config) -> bool:
    """Whether trials leave their baselines, latency and logged models for later (study.follow_up: after)."""
    return cfg.study.follow_up == "after"


def trial_config(ctx, trial) -> Config:
    """The settings a finished trial trained with (its parameters over the study's base config)."""
    with warnings.catch_warnings():  # an enqueued value outside its range was warned about when it was asked
        warnings.simplefilter("ignore", UserWarning)
        return sweepfile.replace(ctx.cfg, space.suggest(trial, ctx.cfg.search, ctx.cfg.kd.loss))


def pending(ctx) -> list[tuple[str, Config, list]]:
    """The complete and pruned trials whose follow-up is not logged yet, grouped by student width: (baseline key,
    the first trial's config, the trials), the groups holding a trial of the front first, then by width."""
    done = {k for k in ctx.study.user_attrs if k.startswith(A_DONE)}
    todo = [t for t in search.trials(ctx.study, "COMPLETE", "PRUNED") if f"{A_DONE}{t.number}" not in done]
    if not todo:
        return []
    front = {t.number for t in search.pareto(ctx.study)}
    groups: dict[str, list] = defaultdict(list)
    configs = {}
    for t in todo:
        cfg = trial_config(ctx, t)
        key = baselines.student_key(cfg)
        groups[key].append(t)
        configs.setdefault(key, cfg)
    order = sorted(groups, key=lambda k: (not any(t.number in front for t in groups[k]), configs[k].student.width))
    return [(k, configs[k], groups[k]) for k in order]


def run(ctx, log: Callable[[str], None] | None = None, limit: int | None = None) -> int:
    """Follow up every pending trial this worker can take (widths another worker holds are left to it), or the
    trials of at most `limit` widths (a worker waiting for other workers' trials does one, then looks again). The
    number of trials followed up."""
    log = log or ctx.log
    n = widths = 0
    ctx.need([t.name for t in ctx.cfg.teachers])  # a teacher no trial needed: trained now, for the report's table
    for t in list(ctx.pool.values()):
        done = f"{A_DONE}teacher-{t.key}"
        if done in ctx.study.user_attrs:
            continue
        with try_study_lock(ctx.study, ctx.study.study_name, f"follow-up-teacher-{t.key}") as held:
            if held and done not in ctx.study.user_attrs:
                follow_up_teacher(ctx, t)
                ctx.study.set_user_attr(done, True)
    for key, cfg, group in pending(ctx):
        if limit is not None and widths >= limit:
            break
        with try_study_lock(ctx.study, ctx.study.study_name, f"follow-up-{key}") as held:
            if not held:
                continue  # another worker has this width
            n += follow_up(ctx, cfg, group, log)
            widths += 1
    return n


def follow_up(ctx, cfg: Config, group: list, log: Callable[[str], None]) -> int:
    """One width's trials (cfg: the first one's settings): the baseline (trained where this machine has not cached it, logged once per study) when
    one of them is complete, then per trial its latency (cached per architecture) and, when complete, its gain and
    its logged model (a pruned trial has neither, as it never had). Trials another worker did meanwhile are
    skipped."""
    done = {k for k in ctx.study.user_attrs if k.startswith(A_DONE)}  # read again: another worker's
    group = [t for t in group if f"{A_DONE}{t.number}" not in done]
    if not group:
        return 0
    complete = [t for t in group if t.state.name == "COMPLETE"]
    base = baselines.ensure_baseline(ctx.runs, cfg, ctx.unlogged) if complete else None
    costs = measure(models.from_config(cfg.student, ctx.ds.input_shape, ctx.ds.num_classes), cfg.student, ctx.bench)
    for trial in group:
        run_id = trial.user_attrs.get(search.T_RUN)
        metrics = {k: v for k, v in costs.items() if k in TIMING and k not in trial.user_attrs}
        if trial.state.name != "COMPLETE":
            if run_id:
                ctx.tracker.log_metrics(run_id, metrics)
            ctx.study.set_user_attr(f"{A_DONE}{trial.number}", True)
            continue
        metrics.update(
            baselines.gains(
                {k: trial.user_attrs[k] for k in ("val_accuracy", "test_accuracy")}, base, len(ctx.ds.y_val)
            )
        )
        if run_id:
            model = trial_model(ctx.tracker, run_id, cfg, ctx.ds)  # one student per key: cfg's
            model_id = ctx.runs.log_model(
                run_id, f"trial-{trial.number}", model, {"kdtrain.role": "student", "optuna.trial": trial.number}
            )
            log_final(ctx, run_id, metrics, model_id)
        ctx.study.set_user_attr(f"{A_DONE}{trial.number}", True)
    numbers = ", ".join(str(t.number) for t in complete)
    log(
        f"follow-up of width {cfg.student.width}: "
        + (
            f"baseline over {ctx.cfg.study.baseline_seeds} seed(s), latency and logged model of trial(s) {numbers}"
            if complete
            else f"latency of pruned trial(s) {', '.join(str(t.number) for t in group)}"
        )
    )
    return len(group)


# --------------------------------------------------------------------------- teachers


def log_final(ctx, run_id: str, metrics: dict, model_id: str | None) -> None:
    """The follow-up's metrics, and the run's final metrics as logged when it ended (not its per-epoch curves)
    linked to the model the follow-up logged: the same points again (their first timestamps), so that the model
    carries them as if both had been logged at once and the run's history holds each point once."""
    keys = [
        k for k in ctx.tracker.metrics(run_id) if (k not in client.CURVES or k == "val_accuracy") and k not in metrics
    ]
    final = ctx.tracker.final_points(run_id, keys)
    ctx.tracker.log_metrics(
        run_id,
        {**{k: v for k, (v, _) in final.items()}, **metrics},
        model_id=model_id,
        times={k: at for k, (_, at) in final.items()},
    )


def follow_up_teacher(ctx, t: teachers.Teacher) -> None:
    """A teacher run's latency and logged model (logged without them when the sweep started)."""
    for run_id in ctx.tracker.find(ctx.exp_id, {"kdtrain.teacher_key": t.key}):
        if ctx.tracker.status(run_id) != "FINISHED":
            continue
        metrics = {k: v for k, v in teacher_metrics(t, ctx).items() if k in TIMING}
        log_final(ctx, run_id, metrics, teacher_model(ctx, run_id, t))
        return


def teacher_model(ctx, run_id: str, t: teachers.Teacher) -> str | None:
    """A teacher's logged model (None for a teacher known by its logits only)."""
    return (
        ctx.runs.log_model(run_id, f"teacher-{t.name}", t.model, {"kdtrain.role": "teacher"})
        if t.model is not None
        else None
    )


def teacher_metrics(t: teachers.Teacher, ctx, timing: bool = True) -> dict:
    """_measured(), and reference_moved = 1 for a teacher made anew because its reference moved (a moved MLflow
    alias, edited python: code: kdtrain.distill.references): the report's teacher table says so."""
    moved = t.source.startswith(("reloaded", "retrained"))
    return {**_measured(t, ctx, timing), **({"reference_moved": 1.0} if moved else {})}


def _measured(t: teachers.Teacher, ctx, timing: bool = True) -> dict:
    """A teacher's deployment metrics where they can be measured: none for a logits file; an ONNX file in ONNX
    Runtime and a TorchScript model as is, both uncached (the file, not an arch, defines them). Without ``timing``
    what can be counted without running it (its parameters)."""
    if not timing:
        if t.model is not None and not isinstance(t.model, torch.jit.ScriptModule):
            return measure(t.model, t.config, ctx.bench, len(t.classes) or None, timing=False)
        return {"params": float(t.params)} if t.params is not None else {}
    if t.model is None:
        path = Path(t.config.weights or "").expanduser()
        if not (t.config.weights or "").endswith(".onnx") or not path.is_file():
            return {}  # a logits file: no model to measure
        try:
            return profile_onnx(path, ctx.ds.input_shape, ctx.cfg.profile)
        except Exception as e:  # noqa: BLE001 - a TorchScript model may not export or count; its accuracy still counts
            ctx.log(f"teacher {t.name}: latency not measured ({type(e).__name__}: {first_line(e)})")
            return {}
    if not isinstance(t.model, torch.jit.ScriptModule):
        return measure(t.model, t.config, ctx.bench, len(t.classes) or None)
    try:
        with warnings.catch_warnings():  # copying a TorchScript module touches .grad of its non-leaf tensors
            warnings.simplefilter("ignore", UserWarning)
            return profile(t.model, ctx.ds.input_shape, ctx.cfg.profile, None, ctx.log)
    except Exception as e:  # noqa: BLE001 - a TorchScript model may not export or count; its accuracy still counts
        ctx.log(f"teacher {t.name}: deployment metrics not measured ({type(e).__name__}: {first_line(e)})")
        return {"params": float(t.params)} if t.params is not None else {}
