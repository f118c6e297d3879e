"""The Optuna side: search space from the sweep file, objective, storage, resume.

A study stores its whole sweep config (``kdtrain.config``), so a worker needs
only the study name and the storage URL. Trials are asked and told by hand
(not ``study.optimize``) so that the trial count is exact across workers, every
failure carries its reason, and interrupted trials are re-queued once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import re
import socket
import threading
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
from kdtrain.teachers import cache_dir as teacher_cache_dir
from kdtrain.tracking import Tracker, check_reachable
from kdtrain.train import DivergedError

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# kdtrain asks and tells by hand and runs its own heartbeat thread (see heartbeat())
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TEACHER_ARTIFACTS = "teacher"
A_TRACKING = "kdtrain.tracking_uri"
A_CONFIG, A_TRIALS, A_PARENT, A_EXP = "kdtrain.config", "kdtrain.trials", "kdtrain.parent_run_id", "kdtrain.experiment_id"


# --------------------------------------------------------------------------- storage


def default_storage() -> str:
    """$KDTRAIN_STORAGE (keeps a password off the command line), else the journal file under kdtrain's home."""
    return os.environ.get("KDTRAIN_STORAGE") or str(home() / "optuna.journal")


def is_rdb(url: str) -> bool:
    return "://" in url


def _db_error(e: Exception) -> str:
    """The driver's own words, without SQLAlchemy's wrapping, on one line, passwords hidden."""
    text = str(e).replace("\n", " ").split("(Background on this error", 1)[0]
    text = re.sub(r"^\(\S+?\)\s*", "", text.strip())
    hint = ""
    if "authentication failed" in text:
        hint = " (check the user and password in the storage URL)"
    elif "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        hint = " (is the database server running and reachable from this machine?)"
    elif "does not exist" in text:
        hint = " (create the database first, e.g. createdb NAME)"
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
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=config.StudyConfig.heartbeat_interval,
                                              grace_period=config.StudyConfig.grace_period)
        except ImportError:
            raise KdtrainError(f"the Optuna storage {redact(url)} needs its database driver: "
                               "pip install 'kdtrain[postgres]'") from None
        except Exception as e:
            raise KdtrainError(f"cannot open the Optuna storage {redact(url)}: {_db_error(e)}") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(url).expanduser().resolve()
    if path.is_dir():
        raise KdtrainError(f"the Optuna storage {path} is a directory; give a journal file such as "
                           f"{path / 'optuna.journal'} or an RDB URL (postgresql://...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _backend(storage):
    return getattr(storage, "_backend", storage)  # optuna wraps an RDBStorage in a cache


def apply_heartbeat(storage, cfg: Config) -> None:
    """Every worker of a study beats at the study's own interval and grace period (stored with its config)."""
    b = _backend(storage)
    if isinstance(b, optuna.storages.RDBStorage):
        b.heartbeat_interval, b.grace_period = cfg.study.heartbeat_interval, cfg.study.grace_period


def heartbeat_interval(storage) -> int | None:
    b = _backend(storage)
    return b.heartbeat_interval if isinstance(b, optuna.storages.RDBStorage) else None


@contextlib.contextmanager
def study_lock(storage, study_name: str, purpose: str):
    """A mutex over every worker of a study: a PostgreSQL advisory lock when the study lives there (workers on
    several machines), else a file lock (workers on this machine). The lock dies with its holder."""
    b = _backend(storage)
    if isinstance(b, optuna.storages.RDBStorage) and b.engine.dialect.name == "postgresql":
        import sqlalchemy

        key = int.from_bytes(hashlib.sha1(f"kdtrain/{purpose}/{study_name}".encode()).digest()[:8], "big",
                             signed=True)
        with b.engine.connect() as conn:
            conn.execute(sqlalchemy.text("select pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        with file_lock(f"{purpose}-{study_name}"):
            yield


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


def check_study(cfg: Config, storage, name: str) -> optuna.Study | None:
    """The existing study of that name (None if there is none); refused if its settings differ from cfg."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    stored = json.loads(study.user_attrs.get(A_CONFIG, "{}"))
    if stored:
        changed = _diff(signature(config.from_dict(stored)), signature(cfg))
        if changed:
            what = "search space" if any(c.startswith("search") for c in changed) else "settings"
            raise KdtrainError(
                f"study {name!r} already exists with a different {what} (changed: {', '.join(changed)}). "
                f"Resume it with the original sweep file, or start a new study with --new-study "
                f"(or --study OTHER_NAME).")
    return study


def create_or_open(cfg: Config, storage, name: str, trials: int) -> optuna.Study:
    """Create the study (config stored inside, base trial enqueued) or reopen it if the settings match."""
    apply_heartbeat(storage, cfg)
    study = check_study(cfg, storage, name)
    if study is not None:
        study.set_user_attr(A_TRIALS, trials)
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=list(cfg.study.objectives.values()))
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


def remember_tracking(study: optuna.Study, uri: str) -> None:
    """Record the study's MLflow server (never one with a password in it), so that a worker or a report on
    another machine needs only the study name and the storage URL."""
    if uri.startswith(("http://", "https://")) and redact(uri) == uri:
        study.set_user_attr(A_TRACKING, uri)


def tracking_uri(study: optuna.Study, given: str | None = None) -> str | None:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the server the study recorded, else the local store."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or study.user_attrs.get(A_TRACKING)


def study_config(study: optuna.Study) -> Config:
    raw = study.user_attrs.get(A_CONFIG)
    if not raw:
        raise KdtrainError(f"study {study.study_name!r} was not created by kdtrain (no stored sweep config)")
    return config.from_dict(json.loads(raw), source=f"study {study.study_name}")


def make_sampler(cfg: Config, worker: int = 0):
    """The study's sampler. Each worker process gets its own seed (study.seed + worker): with one shared seed,
    parallel workers would propose the very same parameters while the sampler is still sampling at random."""
    # Constraints reach the samplers through trial.set_constraint (Optuna 5), not constraints_func.
    s = cfg.study
    seed = None if s.seed is None else (s.seed + worker) % 2**32
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


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
               requeue: bool = True) -> bool:
    """Mark a trial failed with its reason, re-queue its params once, close its MLflow run as KILLED.

    False when another worker failed or finished it first (the storage refuses a second transition)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial._trial_id, "kdtrain.interrupted", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if requeue and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"kdtrain.requeued_from": trial.number},
                            skip_if_exists=False)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if tracker is not None and run_id:
        with contextlib.suppress(Exception):
            tracker.set_tags(run_id, {"optuna.state": "FAIL", "fail_reason": reason})
            tracker.end(run_id, "KILLED")
    return True


def _recover(study: optuna.Study, tracker: Tracker | None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone. Call under study_lock(..., "ask").

    RDB storages (PostgreSQL: workers on many machines): a trial without a heartbeat for the grace period.
    Journal file (workers on this machine): a trial whose worker process on this host no longer exists."""
    storage, recovered = study._storage, []
    interval = heartbeat_interval(storage)
    if interval:
        grace = _backend(storage).grace_period
        stale = [storage.get_trial(i) for i in storage._get_stale_trial_ids(study._study_id)]
        # a worker that died between ask and its first heartbeat left a trial with no heartbeat and no pid
        old = datetime.datetime.now() - datetime.timedelta(seconds=grace)
        seen = {t.number for t in stale}
        stale += [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                  if "kdtrain.pid" not in t.user_attrs and t.datetime_start and t.datetime_start < old
                  and t.number not in seen]
        for t in stale:
            who = (f"pid {t.user_attrs['kdtrain.pid']} on {t.user_attrs.get('kdtrain.host')}"
                   if "kdtrain.pid" in t.user_attrs else "which died before its first heartbeat")
            if fail_trial(study, t, f"interrupted: no heartbeat from its worker ({who}) for more than {grace} s; "
                          "the worker died or lost the database", tracker):
                recovered.append(t.number)
        return recovered
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, t_host = t.user_attrs.get("kdtrain.pid"), t.user_attrs.get("kdtrain.host")
        if t_host not in (None, host) or (pid is not None and pid != os.getpid() and _pid_alive(pid)):
            continue
        if fail_trial(study, t, f"interrupted: its worker (pid {pid} on {t_host}) died before the trial "
                      "finished", tracker):
            recovered.append(t.number)
    return recovered


def recover(study: optuna.Study, tracker: Tracker | None) -> list[int]:
    """Fail and re-queue the trials whose worker is gone (kill -9, power loss, a lost machine)."""
    with study_lock(study._storage, study.study_name, "ask"):  # no trial is between ask and its pid meanwhile
        return _recover(study, tracker)


def _recoverable(study: optuna.Study) -> bool:
    """Will the RUNNING trials of this study finish or be recovered by a worker here? (heartbeats, or all on
    this host where a dead pid is seen)."""
    if heartbeat_interval(study._storage):
        return True
    host = socket.gethostname()
    return all(t.user_attrs.get("kdtrain.host") in (None, host)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


@contextlib.contextmanager
def heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every interval while it runs (RDB storages; nothing for a journal file)."""
    interval = heartbeat_interval(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a database blip must not kill the trial: the grace period covers it
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
    with study_lock(ctx.study._storage, ctx.study.study_name, "teachers"):
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
            # the cache entry itself (weights, logits, meta): workers on other machines fetch it instead of
            # training their own, slightly different, copy of the teacher
            ctx.tracker.log_dir(run, t.path, TEACHER_ARTIFACTS)
            ctx.tracker.end(run)


def fetch_teachers(cfg: Config, tracker: Tracker, exp_id: str, log: Callable[[str], None]) -> None:
    """Fill this machine's teacher cache from the study's teacher runs, so that every worker of a study, on any
    machine, distils from the very same teachers (and none trains them again)."""
    for t in cfg.teachers:
        folder = teacher_cache_dir(t, cfg)
        if (folder / "meta.json").exists():
            continue
        runs = tracker.find(exp_id, {"kdtrain.teacher_key": folder.name.rsplit("-", 1)[1]})
        for run in runs:
            if tracker.fetch_dir(run.info.run_id, TEACHER_ARTIFACTS, folder):
                log(f"teacher {t.name}: fetched from MLflow run {run.info.run_id}")
                break


def ensure_baseline(ctx: Context, cfg: Config) -> dict:
    """The no-teacher (alpha = 0) run of this student: trained once per machine (cached), logged once per study."""
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
    with study_lock(ctx.study._storage, ctx.study.study_name, f"baseline-{key}"):
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
            "kdtrain.host": socket.gethostname(), "kdtrain.pid": os.getpid(), "mlflow.note.content": describe(tcfg)}
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


def work(ctx: Context, deadline: float | None = None, poll_s: float = 2.0) -> None:
    """Ask, run, tell until the study has its trial count (COMPLETE + PRUNED) or the deadline passes.

    When the trials still missing are all running elsewhere, wait: a worker that dies is recovered (heartbeat
    or dead pid) and its trial re-queued, and someone must be left to run it."""
    study, tracker = ctx.study, ctx.tracker
    waiting_said = False
    while True:
        trial = None
        with study_lock(study._storage, study.study_name, "ask"):
            for n in _recover(study, tracker):
                ctx.log(f"trial {n}: its worker is gone; failed and re-queued")
            target = study.user_attrs.get(A_TRIALS, ctx.cfg.study.trials)
            c = counts(study)
            done = c["COMPLETE"] + c["PRUNED"]
            if done >= target or (deadline is not None and time.time() >= deadline):
                return
            if done + c["RUNNING"] < target:
                errors = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                          if not t.user_attrs.get("kdtrain.interrupted")]
                if len(errors) > max(5, target):  # a broken setting, not bad luck: stop instead of looping
                    raise KdtrainError(f"study {study.study_name!r}: {len(errors)} trials failed; stopping. Last "
                                       f"reason: {errors[-1].user_attrs.get('fail_reason', '?').splitlines()[0]}")
                trial = study.ask()
                if heartbeat_interval(study._storage):  # first: from here on a death is seen by its silence
                    study._storage.record_heartbeat(trial._trial_id)
                # who runs it, set before the lock is released: recovery (under the same lock) trusts these
                trial.set_user_attr("kdtrain.host", socket.gethostname())
                trial.set_user_attr("kdtrain.pid", os.getpid())
            elif not _recoverable(study):
                return  # the rest runs on hosts whose death this worker cannot see
        if trial is None:
            if not waiting_said:
                ctx.log(f"waiting: the {c['RUNNING']} trial(s) still missing run on other workers")
                waiting_said = True
            time.sleep(poll_s)
            continue
        waiting_said = False
        with heartbeat(study._storage, trial._trial_id):
            _run_and_tell(ctx, trial)


def _run_and_tell(ctx: Context, trial: optuna.Trial) -> None:
    study, tracker = ctx.study, ctx.tracker
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
    except optuna.exceptions.UpdateFinishedTrialError:
        # another worker saw no heartbeat for the grace period and failed this trial (a long database outage);
        # its re-queued copy runs again, so this result is dropped rather than counted twice
        _close(tracker, trial.user_attrs.get("mlflow_run_id"), "FAIL", "KILLED",
               {"fail_reason": "failed by another worker (no heartbeat) while still running; result dropped"})
        ctx.log(f"trial {trial.number} was failed by another worker while running (no heartbeat); result dropped")
    except (KeyboardInterrupt, SystemExit):
        frozen = study._storage.get_trial(trial._trial_id)
        fail_trial(study, frozen, "interrupted: stopped by the user (Ctrl-C)", tracker)
        raise
    except Exception as e:
        reason = str(e) if isinstance(e, (DivergedError, KdtrainError)) else \
            f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        reason = redact(reason)[:2000]
        trial.set_user_attr("fail_reason", reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        study.tell(trial, state=TrialState.FAIL)
        _close(tracker, run_id, "FAIL", "FAILED", {"fail_reason": reason})
        ctx.log(f"trial {trial.number} failed: {reason.splitlines()[0]}")


def _close(tracker: Tracker, run_id: str | None, state: str, status: str, tags: dict | None = None) -> None:
    if run_id:
        tracker.set_tags(run_id, {"optuna.state": state, **(tags or {})})
        tracker.end(run_id, status)


def open_context(study_name: str, storage_url: str | None, tracking_uri_given: str | None, threads: int | None = None,
                 log: Callable[[str], None] = print) -> Context:
    """What a worker needs, from the study alone: config, data, teacher pool, MLflow ids."""
    study = load(study_name, storage_url)
    cfg = study_config(study)
    apply_heartbeat(study._storage, cfg)
    if threads:
        cfg = config.replace(cfg, {"train.threads": threads})
    study.sampler = make_sampler(cfg, worker=os.getpid())
    study.pruner = make_pruner(cfg)
    uri = tracking_uri(study, tracking_uri_given)
    check_reachable(uri)  # one clear line now, not minutes of MLflow's retries later
    ds = data.load(cfg.data)
    tracker = Tracker(uri)
    exp_id = tracker.experiment(study_name)
    fetch_teachers(cfg, tracker, exp_id, log)
    pool = load_pool(cfg, ds, log=log)
    parent_id = study.user_attrs.get(A_PARENT) or ensure_parent(tracker, exp_id, study, cfg, None)
    ctx = Context(study, cfg, ds, pool, tracker, exp_id, parent_id, log)
    ensure_teacher_runs(ctx)
    return ctx


def ensure_parent(tracker: Tracker, exp_id: str, study: optuna.Study, cfg: Config, sweep_file: str | None) -> str:
    """The study's parent run (kdtrain.role=sweep): created once, reopened on resume."""
    with study_lock(study._storage, study.study_name, "parent"):
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
