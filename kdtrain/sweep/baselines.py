"""What a trial's gain is measured against, and how a pick is confirmed: the no-teacher baseline of each student
(trained once per machine and seed, cached, logged once per study), the deployment metrics of a model, and
kdtrain confirm (a finished trial retrained with new seeds, each paired with the baseline of the same seed).
Functions take the worker's context (kdtrain.sweep.worker.Context)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from kdtrain.config import sweepfile
from kdtrain.data import datasets
from kdtrain.deploy.profile import model_identity, profile
from kdtrain.distill import features, models
from kdtrain.distill.student import distill_student
from kdtrain.distill.train import EpochStats
from kdtrain.paths import home
from kdtrain.schema import Config
from kdtrain.shared import atomic_write_text, content_key, cpu_room, file_lock
from kdtrain.study import search, space
from kdtrain.study.storage import study_lock
from kdtrain.tracking import client
from kdtrain.tracking.client import Tracker
from kdtrain.tracking.outbox import unreachable


def student_key(cfg: Config) -> str:
    """The baseline cache key: what shapes a no-teacher student (its seeds are entries of the cache file)."""
    sig = space.signature(cfg)
    train = {k: v for k, v in sig["train"].items() if k != "seed"}
    return content_key(
        {"student": dataclasses.asdict(cfg.student), "train": train, "data": sig["data"], "format": 3}
    )  # 3: each seed's weights beside the results


def flat_params(cfg: Config) -> dict:
    """The settings as MLflow params, without the loss settings that this run's loss does not use."""
    from kdtrain.distill.losses import LOSS_SETTINGS

    flat = {k: v for k, v in cfg.flat().items() if cfg.kd.loss in LOSS_SETTINGS.get(k, (cfg.kd.loss,))}
    flat["kd.teachers"] = "+".join(cfg.kd_teachers)
    flat["kd.features"] = features.describe(cfg)  # the pairs and losses this run used, not the whole list
    return flat


def measure(model, ctx, model_cfg, num_classes: int | None = None, timing: bool = True) -> dict:
    """Deployment metrics of a model (cached per architecture and output size: a teacher may have its own); without
    ``timing`` the counted ones only, unless cached (see profile)."""
    return profile(
        model,
        ctx.ds.input_shape,
        ctx.cfg.profile,
        model_identity(model_cfg, num_classes or ctx.ds.num_classes),
        ctx.log,
        timing=timing,
    )


def label_metrics(ds: datasets.Dataset) -> dict:
    """How many labels a run used: to train on (labelled_rows), to select on (val_rows), and the rows that enter
    the distillation term only (unlabelled_rows: the unlabelled training rows plus the transfer set)."""
    return {"labelled_rows": ds.labelled_rows, "unlabelled_rows": ds.unlabelled_rows, "val_rows": len(ds.y_val)}


def logged_whole(ctx, tags: dict) -> bool:
    """Whether the run with these tags (a teacher or baseline run) is logged. Such runs are written whole under
    the study lock, so one still RUNNING there lost its worker mid-write (killed, machine gone): it is closed as
    KILLED and the caller logs the run again."""
    done = False
    for run_id in ctx.tracker.find(ctx.exp_id, tags):
        if ctx.tracker.status(run_id) != "RUNNING":
            done = True
            continue
        ctx.tracker.set_tags(run_id, {"fail_reason": "its worker died while logging it; logged again"})
        ctx.tracker.end(run_id, "KILLED")
    return done


def baseline_runs(ctx, cfg: Config, seeds: list[int], say: Callable[[str], None] | None = None, on_epoch=None) -> dict:
    """The no-teacher (alpha = 0) student of cfg trained with each of the given train seeds, cached per machine
    and seed: {"metrics": deployment metrics, "runs": {seed: accuracies and per-epoch history}}. `say` announces
    each training (default: the context's log), `on_epoch` follows its epochs."""
    key = student_key(cfg)
    path = baseline_file(key)
    with file_lock(f"baseline-{key}"):
        result = _cached(key)
        missing = [s for s in seeds if str(s) not in result["runs"]]
        for seed in missing:
            (say or ctx.log)(
                f"baseline {cfg.student.arch} width {cfg.student.width}: training without a teacher (seed {seed})"
            )
            r = distill_student(
                sweepfile.replace(cfg, {"kd.alpha": 0.0, "train.seed": seed}),
                ctx.ds,
                {},
                on_epoch=on_epoch,
                epoch_guard=cpu_room,
            )
            if "metrics" not in result:
                result["metrics"] = measure(r.model, ctx, cfg.student)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(r.model.state_dict(), baseline_file(key, seed))  # the baseline run's model
            result["runs"][str(seed)] = {
                "val_accuracy": r.val_accuracy,
                "test_accuracy": r.test_accuracy,
                "train_seconds": r.seconds,
                "train_steps": r.steps,
                "history": [dataclasses.asdict(h) for h in r.history],
            }
        if missing:
            atomic_write_text(path, json.dumps(result))
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value): the spread over seeds everywhere in kdtrain."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_stats(runs: list[dict], keys: tuple[str, ...] = ("val_accuracy", "test_accuracy")) -> dict:
    """Mean and spread (mean_std) of each key over runs as key and key_std, plus train_seconds summed and the
    number of seeds."""
    out = {"seeds": len(runs), "train_seconds": sum(r.get("train_seconds", 0.0) for r in runs)}
    for k in keys:
        out[k], out[f"{k}_std"] = mean_std([r[k] for r in runs])
    return out


def ensure_baseline(ctx, cfg: Config) -> dict:
    """The no-teacher baseline of this student over study.baseline_seeds seeds (train.seed, +1, ...): trained
    once per machine (cached), logged once per study with the seeds' mean accuracies and their spread."""
    seeds = [cfg.train.seed + i for i in range(ctx.cfg.study.baseline_seeds)]
    result = baseline_runs(ctx, cfg, seeds)
    metrics = {**result["metrics"], **seed_stats([result["runs"][str(s)] for s in seeds])}
    key = student_key(cfg)
    if ctx.tracker.down_since is not None:  # the tracking server away: logged before the next trial
        ctx.unlogged[key] = cfg
        return metrics
    try:
        log_baseline(ctx, cfg, key, seeds, result, metrics)
    except Exception as e:
        if not unreachable(e):
            raise
        ctx.tracker.down(e)  # the trial needs the numbers, not the run: logged before the next trial
        ctx.unlogged[key] = cfg
    return metrics


def log_baseline(ctx, cfg: Config, key: str, seeds: list[int], result: dict, metrics: dict) -> None:
    """The baseline's MLflow run, once per study (under the study's lock)."""
    with study_lock(ctx.study, ctx.study.study_name, f"baseline-{key}"):
        if not logged_whole(ctx, {"kdtrain.baseline_key": key}):
            run_name = f"baseline-{cfg.student.arch}-w{cfg.student.width}"
            run = ctx.tracker.start(
                ctx.exp_id,
                run_name,
                "baseline",
                ctx.parent_id,
                tags={"kdtrain.baseline_key": key},
                params={
                    **{k: v for k, v in flat_params(cfg).items() if not k.startswith("kd.")},
                    "kd.alpha": 0.0,
                    "seeds": ",".join(map(str, seeds)),
                },
            )
            # the curves are the seeds' mean per epoch, so that the last epoch's val_accuracy is the final mean
            curves = [
                EpochStats(
                    **{
                        k: epoch[0][k] if k in ("epoch", "epochs") else statistics.fmean(h[k] for h in epoch)
                        for k in epoch[0]
                    }
                )
                for epoch in zip(*(result["runs"][str(s)]["history"] for s in seeds), strict=False)
            ]
            ctx.tracker.log_inputs(run, ctx.inputs)
            model_id = ctx.log_model(
                run, run_name, baseline_model(ctx, cfg, key, seeds[0]), {"kdtrain.role": "baseline"}
            )
            steps = (
                {"train_steps": result["runs"][str(seeds[0])]["train_steps"]}
                if "train_steps" in result["runs"][str(seeds[0])]
                else {}
            )
            ctx.tracker.log_metrics(
                run,
                {**{k: v for k, v in metrics.items() if k != "seeds"}, **steps, **label_metrics(ctx.ds)},
                curves,
                model_id=model_id,
            )
            ctx.tracker.end(run)


def _cached(key: str) -> dict:
    """A baseline's cached results on this machine ({"runs": {}} before any seed)."""
    path = baseline_file(key)
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def baseline_file(key: str, seed: int | None = None) -> Path:
    """A baseline's cache file: its seeds' results (.json), or one seed's weights (-seed<s>.pt)."""
    return home() / "cache" / "baselines" / (f"{key}.json" if seed is None else f"{key}-seed{seed}.pt")


def baseline_model(ctx, cfg: Config, key: str, seed: int):
    """The no-teacher student of cfg (its baseline key) trained with this seed (weights cached by baseline_runs)."""
    model = models.from_config(cfg.student, ctx.ds.input_shape, ctx.ds.num_classes)
    model.load_state_dict(torch.load(baseline_file(key, seed), map_location="cpu", weights_only=True))
    return model


def gains(metrics: dict, baseline: dict, val_samples: int) -> dict:
    """A trial's distillation gain over the baseline's seed mean, on val and test, and on val in units of the
    baseline's seed spread (floored at one validation sample, so that equal seeds do not divide by zero)."""
    gain = metrics["val_accuracy"] - baseline["val_accuracy"]
    return {
        "baseline_val_accuracy": baseline["val_accuracy"],
        "baseline_val_accuracy_std": baseline["val_accuracy_std"],
        "baseline_test_accuracy": baseline["test_accuracy"],
        "baseline_test_accuracy_std": baseline["test_accuracy_std"],
        "kd_gain": gain,
        "kd_gain_test": metrics["test_accuracy"] - baseline["test_accuracy"],
        "kd_gain_sigma": gain / max(baseline["val_accuracy_std"], 1.0 / val_samples),
    }


def trial_config(tracker: Tracker, run_id: str) -> Config:
    """The full config a trial trained with, from its MLflow run (the config.yaml artifact)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = tracker.download(run_id, tmp, client.CONFIG_ARTIFACT).read_text()
    return sweepfile.from_dict(yaml.safe_load(text), f"run {run_id}: {client.CONFIG_ARTIFACT}")


def trial_student(tracker: Tracker, run_id: str):
    """(config, dataset, trained model) of a finished trial, from its MLflow run's artifacts."""
    cfg = trial_config(tracker, run_id)
    ds = datasets.load(cfg.data)
    return cfg, ds, trial_model(tracker, run_id, cfg, ds)


def trial_model(tracker: Tracker, run_id: str, cfg: Config, ds: datasets.Dataset):
    """The trained student of a finished trial whose config and data are known, from its run's model.pt."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(tracker.download(run_id, tmp, client.MODEL_ARTIFACT), map_location="cpu", weights_only=True)
    model = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
    model.load_state_dict(state)
    return model


def confirm_plan(ctx, trials: list, n_seeds: int) -> int:
    """How many trainings confirm(ctx, t, n_seeds) for these trials will run: the distilled seeds without a
    confirm run, and the baseline seeds this machine has not cached (a width's shared by its trials)."""
    students, baselines = 0, set()
    for trial in trials:
        cfg = trial_config(ctx.tracker, trial.user_attrs[search.T_RUN])
        key = student_key(cfg)
        have = _cached(key)["runs"]
        for seed in _confirm_seeds(cfg, n_seeds):
            students += (not _confirm_runs(ctx, trial, seed)) * (2 if features.pairs(cfg) else 1)
            if str(seed) not in have:
                baselines.add((key, seed))
    return students + len(baselines)


def _confirm_seeds(cfg: Config, n_seeds: int) -> list[int]:
    """The new seeds of kdtrain confirm: train.seed + 1, + 2, ..."""
    return [cfg.train.seed + 1 + i for i in range(n_seeds)]


def _confirm_tags(ctx, trial, seed: int) -> dict:
    return {"optuna.study": ctx.study.study_name, "optuna.trial": trial.number, "kdtrain.seed": seed}


def _confirm_runs(ctx, trial, seed: int) -> list[str]:
    """The confirm runs of this trial and seed logged before (reused, not retrained)."""
    return ctx.tracker.find(ctx.exp_id, {client.ROLE: "confirm", **_confirm_tags(ctx, trial, seed)})


def confirm(ctx, trial, n_seeds: int, say: Callable[[str], None] | None = None, on_epoch=None) -> dict:
    """Retrain a finished trial with n new seeds (train.seed + 1, + 2, ...; same settings otherwise), each
    paired with the no-teacher baseline of the same seed, and a trial with kd.features also with the same trial
    without its pairs (logit KD alone, same seed): feature_gain_test. Every retraining is a run (kdtrain.role=confirm)
    under the study's parent run; seeds confirmed before are reused, not retrained. `say` announces each
    training (a console.Countdown's step), `on_epoch` follows its epochs (the Countdown's epoch). Returns the summary: mean and spread of accuracies, and of the
    paired gains."""
    say = say or ctx.log
    cfg = trial_config(ctx.tracker, trial.user_attrs[search.T_RUN])
    seeds = _confirm_seeds(cfg, n_seeds)
    base = baseline_runs(ctx, cfg, seeds, say, on_epoch)["runs"]
    runs = []
    for seed in seeds:
        found = _confirm_runs(ctx, trial, seed)
        if found:
            runs.append(ctx.tracker.metrics(found[0]))
            continue
        say(f"trial {trial.number} distilled with seed {seed}")
        pool = ctx.need(cfg.kd_teachers) if cfg.kd.alpha > 0 else ctx.pool
        r = distill_student(
            sweepfile.replace(cfg, {"train.seed": seed}), ctx.ds, pool, on_epoch=on_epoch, epoch_guard=cpu_room
        )
        b = base[str(seed)]
        metrics = {
            "val_accuracy": r.val_accuracy,
            "test_accuracy": r.test_accuracy,
            "train_seconds": r.seconds,
            "baseline_val_accuracy": b["val_accuracy"],
            "baseline_test_accuracy": b["test_accuracy"],
            "kd_gain": r.val_accuracy - b["val_accuracy"],
            "kd_gain_test": r.test_accuracy - b["test_accuracy"],
        }
        if features.pairs(cfg):  # what the layer pairs add over logit KD alone: the same seed without them
            say(f"trial {trial.number} with logit KD alone (no feature pair), seed {seed}")
            lo = distill_student(
                sweepfile.replace(cfg, {"train.seed": seed, "kd.feature_pair": "none"}),
                ctx.ds,
                pool,
                on_epoch=on_epoch,
                epoch_guard=cpu_room,
            )
            metrics.update(
                {
                    "logit_kd_val_accuracy": lo.val_accuracy,
                    "logit_kd_test_accuracy": lo.test_accuracy,
                    "feature_gain": r.val_accuracy - lo.val_accuracy,
                    "feature_gain_test": r.test_accuracy - lo.test_accuracy,
                }
            )
        run = ctx.tracker.start(
            ctx.exp_id,
            f"confirm-{trial.number}-seed{seed}",
            "confirm",
            ctx.parent_id,
            tags=_confirm_tags(ctx, trial, seed),
            params={**flat_params(cfg), "train.seed": seed},
        )
        ctx.tracker.log_metrics(run, metrics, r.history)
        ctx.tracker.end(run)
        runs.append(metrics)
    keys = ("val_accuracy", "test_accuracy", "kd_gain_test") + (
        ("feature_gain_test",) if all("feature_gain_test" in m for m in runs) else ()
    )
    return {"trial": trial.number, **seed_stats(runs, keys)}
