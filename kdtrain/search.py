"""The Optuna side: search space from the sweep file, objective, storage, resume.

A study stores its whole sweep config (``kdtrain.config``), so a worker needs
only the study name and the storage URL. Trials are asked and told by hand
(not ``study.optimize``) so that the trial count is exact across workers, every
failure carries its reason, and interrupted trials are re-queued once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import yaml
from optuna.trial import TrialState

from kdtrain import config, data
from kdtrain.config import METRICS, Config, KdtrainError, home, redact
from kdtrain.locks import cpu_room, file_lock
from kdtrain.profile import model_identity, profile
from kdtrain.run import distill_student
from kdtrain.teachers import Teacher, load_pool
from kdtrain.tracking import Tracker
from kdtrain.train import DivergedError

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
A_CONFIG, A_TRIALS, A_PARENT, A_EXP = "kdtrain.config", "kdtrain.trials", "kdtrain.parent_run_id", "kdtrain.experiment_id"


# --------------------------------------------------------------------------- storage


def default_storage() -> str:
    return str(home() / "optuna.journal")


def open_storage(url: str | None = None):
    """A journal file path (the default) or an RDB URL (sqlite:///..., postgresql://...)."""
    url = url or default_storage()
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as e:
            raise KdtrainError(f"cannot open the Optuna storage {redact(url)}: {str(e).splitlines()[0][:300]}") \
                from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(url).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def existing_storage(url: str | None = None):
    """Open a storage that must already hold studies (status, report): a missing journal is an error."""
    url = url or default_storage()
    if "://" not in url and not Path(url).expanduser().exists():
        raise KdtrainError(f"no Optuna storage at {url}: run a sweep first, or pass --storage")
    return open_storage(url)


def load(study_name: str, storage_url: str | None = None, storage=None) -> optuna.Study:
    """An existing study, or one clear error naming the storage."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage or existing_storage(storage_url))
    except KeyError:
        raise KdtrainError(f"no study named {study_name!r} in {redact(storage_url or default_storage())} "
                           "(see kdtrain status)") from None


# --------------------------------------------------------------------------- search space


def subsets(names: list[str]) -> list[str]:
    """Every non-empty subset of the pool as 'a+b' strings (one categorical parameter)."""
    return ["+".join(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Dotted key -> value for one trial, from the sweep file's search: section."""
    values = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                              step=spec.get("step"))
        elif kind == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                            step=spec.get("step", 1))
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif kind == "subset":
            values[key] = trial.suggest_categorical(key, subsets(spec["of"])).split("+")
    return values


def base_params(cfg: Config) -> dict:
    """The sweep file's base settings as Optuna params: the first, enqueued trial."""
    flat = cfg.flat()
    out = {}
    for key, spec in cfg.search.items():
        value = "+".join(cfg.kd_teachers) if key == "kd.teachers" else flat[key]
        if spec["type"] == "subset" and value not in subsets(spec["of"]):
            continue  # let the sampler choose
        if spec["type"] == "categorical" and value not in spec["choices"]:
            continue
        out[key] = value
    return out


def signature(cfg: Config) -> dict:
    """What must not change under an existing study name: objectives, search space, the rest of the settings."""
    d = cfg.to_dict()
    for k in ("trials", "timeout"):
        d["study"].pop(k)
    for k in ("root", "download"):
        d["data"].pop(k)
    for k in ("device", "threads"):
        d["train"].pop(k)
    return d


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k != "search":
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


# --------------------------------------------------------------------------- studies


def create_or_open(cfg: Config, storage, name: str, trials: int) -> optuna.Study:
    """Create the study (config stored inside, base trial enqueued) or reopen it if the settings match."""
    directions = list(cfg.study.objectives.values())
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = None
    if study is not None:
        stored = json.loads(study.user_attrs.get(A_CONFIG, "{}"))
        if stored:
            changed = _diff(signature(config.from_dict(stored)), signature(cfg))
            if changed:
                what = "search space" if any(c.startswith("search") for c in changed) else "settings"
                raise KdtrainError(
                    f"study {name!r} already exists with a different {what} (changed: {', '.join(changed)}). "
                    f"Resume it with the original sweep file, or start a new study with --new-study "
                    f"(or --study OTHER_NAME).")
        study.set_user_attr(A_TRIALS, trials)
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.set_user_attr(A_CONFIG, json.dumps(cfg.to_dict()))
    study.set_user_attr(A_TRIALS, trials)
    study.set_user_attr("kdtrain.objectives", list(cfg.study.objectives))
    study.enqueue_trial(base_params(cfg), user_attrs={"kdtrain.reference": "base settings"})
    return study


def free_name(storage, name: str) -> str:
    """name, or name-v2, name-v3, ... whichever does not exist yet."""
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name not in existing:
        return name
    return next(f"{name}-v{i}" for i in itertools.count(2) if f"{name}-v{i}" not in existing)


def study_config(study: optuna.Study) -> Config:
    raw = study.user_attrs.get(A_CONFIG)
    if not raw:
        raise KdtrainError(f"study {study.study_name!r} was not created by kdtrain (no stored sweep config)")
    return config.from_dict(json.loads(raw), source=f"study {study.study_name}")


def make_sampler(cfg: Config):
    # Constraints reach the samplers through trial.set_constraint (Optuna 5), not constraints_func.
    s = cfg.study
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True)


def make_pruner(cfg: Config):
    if len(cfg.study.objectives) > 1 or cfg.study.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=cfg.train.epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, cfg.train.epochs // 5))


def constraint_values(constraints: dict, metrics: dict) -> dict[str, float]:
    """<= 0 when satisfied: metric - bound for max_<metric> (max_latency_ms is latency_ms_p50)."""
    out = {}
    for key, bound in constraints.items():
        metric = "latency_ms_p50" if key == "max_latency_ms" else key[4:]
        out[key] = (float(metrics[metric]) - float(bound) if key.startswith("max_")
                    else float(bound) - float(metrics[metric]))
    return out


def counts(study: optuna.Study) -> dict[str, int]:
    c = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name] += 1
    return c


# --------------------------------------------------------------------------- recovery


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, tracker: Tracker | None,
               requeue: bool = True) -> None:
    """Mark a trial failed with its reason, close its MLflow run as KILLED, re-queue its params once."""
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    storage.set_trial_user_attr(trial._trial_id, "kdtrain.interrupted", True)
    if requeue and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"kdtrain.requeued_from": trial.number},
                            skip_if_exists=False)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if tracker is not None and run_id:
        with contextlib.suppress(Exception):
            tracker.set_tags(run_id, {"optuna.state": "FAIL", "fail_reason": reason})
            tracker.end(run_id, "KILLED")


def recover(study: optuna.Study, tracker: Tracker | None) -> list[int]:
    """Fail the RUNNING trials whose worker on this host is gone (kill -9, power loss)."""
    host = socket.gethostname()
    recovered = []
    with file_lock(f"ask-{study.study_name}"):  # no trial is between ask and its pid attribute meanwhile
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid, t_host = t.user_attrs.get("kdtrain.pid"), t.user_attrs.get("kdtrain.host")
            if t_host not in (None, host) or (pid is not None and pid != os.getpid() and _pid_alive(pid)):
                continue
            fail_trial(study, t, f"interrupted: its worker (pid {pid} on {t_host}) died before the trial "
                       "finished", tracker)
            recovered.append(t.number)
    return recovered


# --------------------------------------------------------------------------- the worker


@dataclass
class Context:
    study: optuna.Study
    cfg: Config
    ds: data.Dataset
    pool: dict[str, Teacher]
    tracker: Tracker
    exp_id: str
    parent_id: str
    log: Callable[[str], None]


def student_key(cfg: Config) -> str:
    ident = {"student": dataclasses.asdict(cfg.student), "train": signature(cfg)["train"],
             "data": signature(cfg)["data"]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat_params(cfg: Config) -> dict:
    flat = cfg.flat()
    flat["kd.teachers"] = "+".join(cfg.kd_teachers)
    return flat


def ensure_teacher_runs(ctx: Context) -> None:
    """Every teacher of the pool is a run of the study (logged once)."""
    with file_lock(f"teachers-{ctx.exp_id}"):
        for t in ctx.pool.values():
            if ctx.tracker.find(ctx.exp_id, {"kdtrain.teacher_key": t.key}):
                continue
            run = ctx.tracker.start(ctx.exp_id, f"teacher-{t.name}", "teacher", ctx.parent_id,
                                    tags={"kdtrain.teacher_key": t.key, "kdtrain.source": t.source},
                                    params={f"teacher.{k}": v for k, v in dataclasses.asdict(t.config).items()})
            metrics = profile(t.model, ctx.ds.input_shape, ctx.cfg.profile,
                              model_identity(t.config, ctx.ds.num_classes), ctx.log)
            metrics.update(val_accuracy=t.val_accuracy, test_accuracy=t.test_accuracy, train_seconds=t.seconds)
            ctx.tracker.log_metrics(run, metrics)
            ctx.tracker.end(run)


def ensure_baseline(ctx: Context, cfg: Config) -> dict:
    """The no-teacher (alpha = 0) run of this student, trained once, cached, logged once per study."""
    key = student_key(cfg)
    path = home() / "cache" / "baselines" / f"{key}.json"
    with file_lock(f"baseline-{key}"):
        if path.exists():
            result = json.loads(path.read_text())
        else:
            ctx.log(f"baseline {cfg.student.arch} width {cfg.student.width}: training without a teacher")
            base = config.replace(cfg, {"kd.alpha": 0.0})
            r = distill_student(base, ctx.ds, {}, epoch_guard=cpu_room)
            metrics = profile(r.model, ctx.ds.input_shape, cfg.profile,
                              model_identity(cfg.student, ctx.ds.num_classes), ctx.log)
            metrics.update(val_accuracy=r.val_accuracy, test_accuracy=r.test_accuracy, train_seconds=r.seconds)
            result = {"metrics": metrics, "history": [dataclasses.asdict(h) for h in r.history]}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
        if not ctx.tracker.find(ctx.exp_id, {"kdtrain.baseline_key": key}):
            from kdtrain.train import EpochStats

            run = ctx.tracker.start(ctx.exp_id, f"baseline-{cfg.student.arch}-w{cfg.student.width}", "baseline",
                                    ctx.parent_id, tags={"kdtrain.baseline_key": key},
                                    params={**{k: v for k, v in _flat_params(cfg).items()
                                               if not k.startswith("kd.")}, "kd.alpha": 0.0})
            ctx.tracker.log_metrics(run, result["metrics"], [EpochStats(**h) for h in result["history"]])
            ctx.tracker.end(run)
    return result["metrics"]


def run_trial(ctx: Context, trial: optuna.Trial) -> list[float]:
    values = suggest(trial, ctx.cfg.search)
    tcfg = config.replace(ctx.cfg, values)
    tags = {"optuna.study": ctx.study.study_name, "optuna.trial": trial.number, "optuna.state": "RUNNING",
            "mlflow.note.content": describe(tcfg)}
    run_id = ctx.tracker.start(ctx.exp_id, f"trial-{trial.number}", "student", ctx.parent_id, tags=tags,
                               params=_flat_params(tcfg))
    trial.set_user_attr("mlflow_run_id", run_id)
    history = []
    single = len(ctx.cfg.study.objectives) == 1 and "val_accuracy" in ctx.cfg.study.objectives

    def on_epoch(s):
        history.append(s)
        if single:
            trial.report(s.val_accuracy, s.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {s.epoch} (val_accuracy {s.val_accuracy:.4f})")

    try:
        r = distill_student(tcfg, ctx.ds, ctx.pool, on_epoch=on_epoch, epoch_guard=cpu_room)
    except BaseException:
        ctx.tracker.log_metrics(run_id, {}, history)  # keep the partial curves
        raise
    metrics = profile(r.model, ctx.ds.input_shape, tcfg.profile, model_identity(tcfg.student, ctx.ds.num_classes),
                      ctx.log)
    metrics.update(val_accuracy=r.val_accuracy, test_accuracy=r.test_accuracy, train_seconds=r.seconds)
    baseline = ensure_baseline(ctx, tcfg)
    metrics["baseline_val_accuracy"] = baseline["val_accuracy"]
    metrics["kd_gain"] = r.val_accuracy - baseline["val_accuracy"]
    for key, value in constraint_values(ctx.cfg.study.constraints, metrics).items():
        trial.set_constraint(key, value)
    for k in METRICS:
        trial.set_user_attr(k, metrics[k])
    ctx.tracker.log_metrics(run_id, metrics, history)
    ctx.tracker.log_state_dict(run_id, r.model.state_dict(), "model.pt")
    ctx.tracker.log_text(run_id, yaml.safe_dump(tcfg.to_dict(), sort_keys=False), "config.yaml")
    return [metrics[m] for m in ctx.cfg.study.objectives]


def describe(cfg: Config) -> str:
    return (f"{cfg.student.arch} width {cfg.student.width}, T={cfg.kd.temperature:.3g}, alpha={cfg.kd.alpha:.3g}, "
            f"teachers={'+'.join(cfg.kd_teachers)} ({cfg.kd.ensemble})")


def work(ctx: Context, deadline: float | None = None) -> None:
    """Ask, run, tell until the study has its trial count (COMPLETE + PRUNED) or the deadline passes."""
    study, tracker = ctx.study, ctx.tracker
    while True:
        with file_lock(f"ask-{study.study_name}"):
            target = study.user_attrs.get(A_TRIALS, ctx.cfg.study.trials)
            c = counts(study)
            if c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] >= target:
                return
            errors = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if not t.user_attrs.get("kdtrain.interrupted")]
            if len(errors) > max(5, target):  # a broken setting, not bad luck: stop instead of looping
                raise KdtrainError(f"study {study.study_name!r}: {len(errors)} trials failed; stopping. "
                                   f"Last reason: {errors[-1].user_attrs.get('fail_reason', '?').splitlines()[0]}")
            if deadline is not None and time.time() >= deadline:
                return
            trial = study.ask()
            # who runs it, set before the lock is released: recover() (under the same lock) trusts these
            trial.set_user_attr("kdtrain.host", socket.gethostname())
            trial.set_user_attr("kdtrain.pid", os.getpid())
        run_id = None
        try:
            values = run_trial(ctx, trial)
            run_id = trial.user_attrs.get("mlflow_run_id")
            study.tell(trial, values)
            _close(tracker, run_id, "COMPLETE", "FINISHED")
            ctx.log(f"trial {trial.number} complete: "
                    + ", ".join(f"{m}={v:.4g}" for m, v in zip(ctx.cfg.study.objectives, values)))
        except optuna.TrialPruned as e:
            run_id = trial.user_attrs.get("mlflow_run_id")
            study.tell(trial, state=TrialState.PRUNED)
            _close(tracker, run_id, "PRUNED", "FINISHED", {"prune_reason": str(e)})
            ctx.log(f"trial {trial.number} pruned: {e}")
        except (KeyboardInterrupt, SystemExit):
            frozen = study._storage.get_trial(trial._trial_id)
            fail_trial(study, frozen, "interrupted: stopped by the user (Ctrl-C)", tracker)
            raise
        except Exception as e:
            reason = str(e) if isinstance(e, (DivergedError, KdtrainError)) else \
                f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
            trial.set_user_attr("fail_reason", reason[:2000])
            run_id = trial.user_attrs.get("mlflow_run_id")
            study.tell(trial, state=TrialState.FAIL)
            _close(tracker, run_id, "FAIL", "FAILED", {"fail_reason": reason[:2000]})
            ctx.log(f"trial {trial.number} failed: {reason.splitlines()[0]}")


def _close(tracker: Tracker, run_id: str | None, state: str, status: str, tags: dict | None = None) -> None:
    if run_id:
        tracker.set_tags(run_id, {"optuna.state": state, **(tags or {})})
        tracker.end(run_id, status)


def open_context(study_name: str, storage_url: str | None, tracking_uri: str | None, threads: int | None = None,
                 log: Callable[[str], None] = print) -> Context:
    """What a worker needs, from the study alone: config, data, teacher pool, MLflow ids."""
    study = load(study_name, storage_url)
    cfg = study_config(study)
    if threads:
        cfg = config.replace(cfg, {"train.threads": threads})
    study.sampler = make_sampler(cfg)
    study.pruner = make_pruner(cfg)
    ds = data.load(cfg.data)
    pool = load_pool(cfg, ds, log=log)
    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment(study_name)
    parent_id = study.user_attrs.get(A_PARENT) or ensure_parent(tracker, exp_id, study, cfg, None)
    ctx = Context(study, cfg, ds, pool, tracker, exp_id, parent_id, log)
    ensure_teacher_runs(ctx)
    return ctx


def ensure_parent(tracker: Tracker, exp_id: str, study: optuna.Study, cfg: Config, sweep_file: str | None) -> str:
    """The study's parent run (kdtrain.role=sweep): created once, reopened on resume."""
    with file_lock(f"parent-{exp_id}"):
        found = tracker.find(exp_id, {"kdtrain.role": "sweep", "optuna.study": study.study_name})
        if found:
            run_id = found[0].info.run_id
            tracker.client.update_run(run_id, status="RUNNING")
        else:
            run_id = tracker.start(exp_id, study.study_name, "sweep",
                                   tags={"optuna.study": study.study_name},
                                   params={"study.objectives": json.dumps(cfg.study.objectives),
                                           "study.sampler": cfg.study.sampler,
                                           "search": json.dumps(cfg.search, sort_keys=True)})
            tracker.log_text(run_id, yaml.safe_dump(cfg.to_dict(), sort_keys=False), "sweep.yaml")
            if sweep_file:
                tracker.log_file(run_id, sweep_file)
        study.set_user_attr(A_PARENT, run_id)
        study.set_user_attr(A_EXP, exp_id)
    return run_id


def pareto(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    if len(study.directions) == 1:
        try:
            return [study.best_trial]
        except ValueError:
            return []
    return study.best_trials
