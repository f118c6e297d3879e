"""The Optuna side, with kdtrain.study.recovery (heartbeats, the next trial, dead workers' trials): storage, studies
(creation, checks, sampler, pruner, counts, the feasible front), asking and telling. The search space itself is
kdtrain.study.space.

A study stores its whole sweep config, so a worker needs only the study name and the storage URL. Trials are
asked and told by hand (not ``study.optimize``) so that the trial count is exact across workers, every failure
carries its reason, and interrupted trials are re-queued (at most study.max_requeues times).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kdtrain.config import sweepfile
from kdtrain.errors import KdtrainError
from kdtrain.paths import redact
from kdtrain.schema import METRICS, Config, StudyConfig, parse_duration
from kdtrain.shared import pid_alive, warn
from kdtrain.study import space
from kdtrain.study.storage import (
    PatientStorage,
    apply_heartbeat,
    default_storage,
    existing_storage,
    heartbeat_interval,
    is_rdb,
    open_storage,
    rdb_of,
    storage_of,
    trial_storage_id,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# kdtrain asks and tells by hand and runs its own heartbeat thread (see heartbeat())
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

TrialPruned = optuna.TrialPruned
"""Raised by a trial's epoch callback to stop it early (re-exported: the worker never imports optuna)."""
TrialTakenOver = optuna.exceptions.UpdateFinishedTrialError
"""Telling a trial that another worker has already failed (no heartbeat for the grace period)."""

# Study user attributes (written by create_or_open / the worker, read by workers, status and reports)
A_CONFIG, A_TRIALS, A_OBJECTIVES, A_DATA = "kdtrain.config", "kdtrain.trials", "kdtrain.objectives", "kdtrain.data"
A_PARENT, A_EXP, A_TRACKING = "kdtrain.parent_run_id", "kdtrain.experiment_id", "kdtrain.tracking_uri"
A_READY, A_HV_BOX = "kdtrain.ready", "kdtrain.hv_box"
"""Set once the study's teacher runs are logged: a worker that waits (--wait) joins only then."""
# Trial user attributes
T_RUN, T_HOST, T_PID = "mlflow_run_id", "kdtrain.host", "kdtrain.pid"
T_FAIL_REASON, T_INTERRUPTED, T_REQUEUED_FROM, T_REFERENCE = (
    "fail_reason",
    "kdtrain.interrupted",
    "kdtrain.requeued_from",
    "kdtrain.reference",
)
T_REQUEUE_DUE = "kdtrain.requeue_due"
"""Set on an interrupted trial whose settings must be queued again: recovery queues them if no copy exists (a stop
between the trial's failure and its re-queue)."""
T_REQUEUES = "kdtrain.requeues"
"""How many times this trial's settings were queued again after an interruption (study.max_requeues caps it)."""
T_CURVE, T_COMPUTE = "kdtrain.val_curve", "kdtrain.train_seconds"  # per-epoch val accuracy; seconds trained


def configure(study: optuna.Study, cfg: Config, worker: int = 0) -> None:
    """This process's view of the study: its heartbeat settings, sampler (seeded per worker and per resume) and
    pruner."""
    apply_heartbeat(storage_of(study), cfg)
    started = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    study.sampler, study.pruner = make_sampler(cfg, worker, started), make_pruner(cfg)


def gone(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker is known dead: it ran on this host and its pid no longer exists."""
    pid = t.user_attrs.get(T_PID)
    return (
        t.user_attrs.get(T_HOST) == socket.gethostname()
        and pid is not None
        and pid != os.getpid()
        and not pid_alive(pid)
    )


def study_names(storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load(study_name: str, storage_url: str | None = None, storage=None, patient: bool = True) -> optuna.Study:
    """An existing study, or one clear error naming the storage. `patient`: from here on its storage calls wait out
    a database outage for the study's study.storage_patience (kdtrain status, report, confirm), as a worker's do;
    a database already away when the study is loaded is one error line at once."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage or existing_storage(storage_url))
    except KeyError:
        raise KdtrainError(
            f"no study named {study_name!r} in {redact(storage_url or default_storage())} (see kdtrain status)"
        ) from None
    b = rdb_of(storage_of(study))
    if patient and isinstance(b, PatientStorage) and not b.patience:
        with contextlib.suppress(ValueError, TypeError):  # a study of an older kdtrain: its default
            b.patience = parse_duration(stored_study(study).get("storage_patience", StudyConfig.storage_patience))
    return study


def wait_for(
    study_name: str, storage_url: str | None, wait_s: float, log: Callable[[str], None], poll_s: float = 2.0
) -> optuna.Study:
    """The study once it is ready (its teacher runs logged), waiting up to wait_s seconds: the workers of a SLURM
    array or a Kubernetes Job often start before the sweep that creates their study."""
    url, deadline, storage = storage_url or default_storage(), time.time() + wait_s, None
    log(f"waiting up to {wait_s:.0f} s for study {study_name!r} in {redact(url)}")
    while True:
        if storage is None and (is_rdb(url) or Path(url).expanduser().exists()):
            storage = open_storage(url)
        if storage is not None and study_name in study_names(storage):
            study = load(study_name, url, storage)
            if study.user_attrs.get(A_READY) or counts(study)["DONE"]:
                return study
        if time.time() >= deadline:
            raise KdtrainError(
                f"study {study_name!r} did not become ready in {redact(url)} within {wait_s:.0f} s "
                "(create it with kdtrain sweep, e.g. --workers 0, or wait longer: --wait 30m)"
            )
        time.sleep(poll_s)


# --------------------------------------------------------------------------- studies


def check_study(cfg: Config, storage, name: str) -> optuna.Study | None:
    """The existing study of that name (None if none); refused if its settings or its data's content changed."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    stored = json.loads(study.user_attrs.get(A_CONFIG, "{}"))
    if stored:
        changed = space.diff(
            space.signature(sweepfile.from_dict(stored), study.user_attrs.get(A_DATA)), space.signature(cfg)
        )
        if changed == ["data.content"]:  # the same sweep file, other files behind data.path
            raise KdtrainError(
                f"study {name!r} was made from other data: what {cfg.data.path or cfg.data.factory} holds"
                f"{' (and ' + cfg.data.test_path + ')' if cfg.data.test_path else ''} differs from what the study recorded "
                "(the files' bytes, not their times). Changed on purpose: start a new study with --new-study (or "
                "--study OTHER_NAME); if not, restore the files the study was made from."
            )
        if changed:
            what = "search space" if any(c.startswith("search") for c in changed) else "settings"
            raise KdtrainError(
                f"study {name!r} already exists with a different {what} (changed: {', '.join(changed)}). "
                f"Resume it with the original sweep file, or start a new study with --new-study "
                f"(or --study OTHER_NAME)."
            )
    return study


def create_or_open(cfg: Config, storage, name: str, trials: int) -> optuna.Study:
    """Create the study (config stored inside, its target `trials`, base trial enqueued) or reopen it if the
    settings match (its target unchanged: recovery.retarget sets it)."""
    apply_heartbeat(storage, cfg)
    study = check_study(cfg, storage, name)
    if study is not None:
        return study  # its target: recovery.retarget
    study = optuna.create_study(study_name=name, storage=storage, directions=list(cfg.study.objectives.values()))
    for key, value in (
        (A_CONFIG, json.dumps(cfg.to_dict())),
        (A_TRIALS, trials),
        (A_DATA, space.identity(cfg.data)),
        (A_OBJECTIVES, list(cfg.study.objectives)),
    ):
        study.set_user_attr(key, value)
    study.enqueue_trial(space.base_params(cfg), user_attrs={T_REFERENCE: "base settings"})
    return study


def free_name(storage, name: str) -> str:
    """name, or name-v2, name-v3, ... whichever does not exist yet."""
    existing = set(study_names(storage))
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


def stored_study(study: optuna.Study) -> dict:
    """The study section of the study's stored config, as written (read without validating the whole config)."""
    return json.loads(study.user_attrs.get(A_CONFIG, "{}")).get("study", {})


def study_config(study: optuna.Study) -> Config:
    raw = study.user_attrs.get(A_CONFIG)
    if not raw:
        raise KdtrainError(f"study {study.study_name!r} was not created by kdtrain (no stored sweep config)")
    return sweepfile.from_dict(json.loads(raw), source=f"study {study.study_name}")


def target(study: optuna.Study, cfg: Config | None = None) -> int | None:
    """The study's trial count (the latest --trials given), else the sweep file's."""
    return study.user_attrs.get(A_TRIALS, cfg.study.trials if cfg else None)


def make_sampler(cfg: Config, worker: int = 0, started: int = 0):
    """The study's sampler. Each worker process gets its own seed (study.seed + worker): with one shared seed,
    parallel workers would propose the very same parameters while the sampler is still sampling at random.
    The first (or only) worker of a sweep is worker 0, so one worker with a seed repeats itself exactly on an
    empty study. A process that joins or resumes a study in which `started` trials have run draws from another
    seed (study.seed + worker + 1,000,003 x started): with the first run's seed it would propose the first run's
    settings again, one by one."""
    # Constraints reach the samplers through trial.set_constraint (Optuna 5), not constraints_func.
    s = cfg.study
    seed = None if s.seed is None else (s.seed + worker + 1_000_003 * started) % 2**32
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def make_pruner(cfg: Config):  # the pareto rule is kdtrain's own (kdtrain.pareto, applied by the worker)
    pruner = cfg.study.resolved_pruner()
    if pruner in ("none", "pareto"):
        return optuna.pruners.NopPruner()
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=cfg.train.epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, cfg.train.epochs // 5))


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), plus DONE: what counts toward the target
    (COMPLETE + PRUNED)."""
    c = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name] += 1
    c["DONE"] = c["COMPLETE"] + c["PRUNED"]
    return c


def trials(study: optuna.Study, *states: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials in these states ('COMPLETE', 'RUNNING', 'FAIL', ...): finished ones in the order
    they finished, then the others by number."""
    found = study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states))
    return sorted(found, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number))


def is_feasible(trial, constraints: dict) -> bool:
    """A finished trial meets the study's constraints (kdtrain.pareto.feasible on the metrics it recorded)."""
    from kdtrain import pareto as rule

    metrics = {k: trial.user_attrs[k] for k in METRICS if k in trial.user_attrs}
    try:
        return rule.feasible(constraints, metrics)
    except KeyError:  # a trial without its metrics (an old study): Optuna's verdict stands
        return True


def front_or_reason(study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], str]:
    """(the study's feasible Pareto front, or best trial), and when it is empty why: no complete trial yet, or
    every complete trial breaks a constraint."""
    front = pareto(study)
    if front:
        return front, ""
    done = trials(study, "COMPLETE")
    if not done:
        return [], f"study {study.study_name!r} has no complete trial yet"
    bounds = ", ".join(f"{k} {v}" for k, v in stored_study(study).get("constraints", {}).items())
    return [], (
        f"study {study.study_name!r}: none of its {len(done)} complete trials meets the constraints "
        f"({bounds}): no feasible student yet (relax study.constraints or search cheaper students)"
    )


def pareto(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    if len(study.directions) == 1:
        try:
            return [study.best_trial]
        except ValueError:
            return []
    return study.best_trials


# --------------------------------------------------------------------------- asking and telling


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial, marked with who runs it. Call under study_lock(..., "ask"): recovery (under the same lock)
    trusts the host and pid set here."""
    trial = study.ask()
    if heartbeat_interval(storage_of(study)):  # first: from here on a death is seen by its silence
        storage_of(study).record_heartbeat(trial_storage_id(study, trial))
    trial.set_user_attr(T_HOST, socket.gethostname())
    trial.set_user_attr(T_PID, os.getpid())
    return trial


def tell(study: optuna.Study, trial: optuna.Trial, state: str, values: list[float] | None = None) -> None:
    """'COMPLETE' with its values, 'PRUNED' or 'FAIL'; TrialTakenOver if another worker failed it meanwhile (Optuna
    5 says so with a ValueError, "Cannot tell a FAIL trial.", where older releases raised UpdateFinishedTrialError)."""
    try:
        study.tell(trial, values, state=TrialState[state])
    except ValueError as e:
        if str(e).startswith("Cannot tell a"):
            raise TrialTakenOver(str(e)) from None
        raise


def importances(study: optuna.Study, maximize: bool) -> dict[str, float]:
    """Optuna's parameter importances for the first objective ({} with one line on stderr when they cannot be
    computed: the report then leaves out their plot)."""
    # Optuna's default evaluator ranks parameters by how they lead to LOW target values
    sign = -1.0 if maximize else 1.0
    try:
        with warnings.catch_warnings():  # its reminder of that is handled by the sign above
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            # trials too alike to split (every one as accurate): the importances are equal, the plot says so
            warnings.filterwarnings("ignore", message="Target and region quantiles select the same set")
            return optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0])
    except Exception as e:  # noqa: BLE001 - e.g. every trial alike: nothing to rank
        warn(f"parameter importances of {study.study_name!r} not computed; the report leaves out their plot", e)
        return {}


def record(trial, attrs: dict) -> None:
    """User attributes of a running trial (its MLflow run, curve, metrics)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def report(trial, value: float, step: int) -> bool:
    """An intermediate value for the study's pruner; True when the trial should be pruned."""
    trial.report(value, step)
    return trial.should_prune()


def set_constraints(trial, values: dict[str, float]) -> None:
    """The trial's constraint values (<= 0: satisfied), for Optuna's feasible front and constrained samplers
    (Trial.set_constraint: Optuna 5, hence pyproject's optuna>=5,<6)."""
    for key, value in values.items():
        trial.set_constraint(key, value)


def set_trial_attr(trial, key: str, value) -> bool:
    """A user attribute on a running trial; False (nothing raised) when the trial was finished meanwhile by another
    worker, which the tell that follows reports as TrialTakenOver."""
    try:
        trial.set_user_attr(key, value)
        return True
    except (TrialTakenOver, RuntimeError, ValueError):
        return False
