"""kdtrain confirm: a finished trial retrained with new seeds (train.seed + 1, + 2, ...; same settings otherwise),
each paired with the no-teacher baseline of the same seed (kdtrain.sweep.baselines), and a trial with kd.features
also with the same trial without its pairs (logit KD alone, same seed). Every retraining is a run
(kdtrain.role=confirm) under the study's parent run; seeds confirmed before are reused, not retrained."""

from __future__ import annotations

from collections.abc import Callable

from kdtrain.config import sweepfile
from kdtrain.distill import features
from kdtrain.distill.student import distill_student
from kdtrain.schema import Config
from kdtrain.shared import cpu_room
from kdtrain.study import search
from kdtrain.sweep.baselines import StudyRuns, baseline_runs, cached, seed_stats, student_key
from kdtrain.tracking import client
from kdtrain.tracking.params import flat_params, trial_config

Teachers = Callable[[list[str]], dict]
"""The worker's teacher pool with these teachers in it (Context.need): one not loaded yet is fetched or trained."""


def confirm_plan(runs: StudyRuns, trials: list, n_seeds: int) -> int:
    """How many trainings confirm(runs, t, n_seeds, ...) for these trials will run: the distilled seeds without a
    confirm run, and the baseline seeds this machine has not cached (a width's shared by its trials)."""
    students, baselines = 0, set()
    for trial in trials:
        cfg = trial_config(runs.tracker, trial.user_attrs[search.T_RUN])
        key = student_key(cfg)
        have = cached(key)["runs"]
        for seed in confirm_seeds(cfg, n_seeds):
            students += (not confirm_runs(runs, trial, seed)) * (2 if features.pairs(cfg) else 1)
            if str(seed) not in have:
                baselines.add((key, seed))
    return students + len(baselines)


def confirm_seeds(cfg: Config, n_seeds: int) -> list[int]:
    """The new seeds of kdtrain confirm: train.seed + 1, + 2, ..."""
    return [cfg.train.seed + 1 + i for i in range(n_seeds)]


def confirm_tags(runs: StudyRuns, trial, seed: int) -> dict:
    return {"optuna.study": runs.study.study_name, "optuna.trial": trial.number, "kdtrain.seed": seed}


def confirm_runs(runs: StudyRuns, trial, seed: int) -> list[str]:
    """The confirm runs of this trial and seed logged before (reused, not retrained)."""
    return runs.tracker.find(runs.exp_id, {client.ROLE: "confirm", **confirm_tags(runs, trial, seed)})


def confirm(
    runs: StudyRuns,
    trial,
    n_seeds: int,
    need: Teachers,
    say: Callable[[str], None] | None = None,
    on_epoch=None,
) -> dict:
    """Retrain a finished trial with n new seeds, each paired with the no-teacher baseline of the same seed, and a
    trial with kd.features also with logit KD alone: feature_gain_test. `need` gives the teachers it distils from,
    `say` announces each training (a console.Countdown's step), `on_epoch` follows its epochs (the Countdown's
    epoch). Returns the summary: mean and spread of accuracies, and of the paired gains."""
    say = say or runs.log
    cfg = trial_config(runs.tracker, trial.user_attrs[search.T_RUN])
    seeds = confirm_seeds(cfg, n_seeds)
    base = baseline_runs(runs, cfg, seeds, say, on_epoch)["runs"]
    results = []
    for seed in seeds:
        found = confirm_runs(runs, trial, seed)
        if found:
            results.append(runs.tracker.metrics(found[0]))
            continue
        say(f"trial {trial.number} distilled with seed {seed}")
        pool = need(cfg.kd_teachers if cfg.kd.alpha > 0 else [])  # the pool as it is, without KD
        metrics, history = retrain(runs, trial, cfg, seed, pool, base[str(seed)], say, on_epoch)
        run = runs.tracker.start(
            runs.exp_id,
            f"confirm-{trial.number}-seed{seed}",
            "confirm",
            runs.parent_id,
            tags=confirm_tags(runs, trial, seed),
            params={**flat_params(cfg), "train.seed": seed},
        )
        runs.tracker.log_metrics(run, metrics, history)
        runs.tracker.end(run)
        results.append(metrics)
    keys = ("val_accuracy", "test_accuracy", "kd_gain_test") + (
        ("feature_gain_test",) if all("feature_gain_test" in m for m in results) else ()
    )
    return {"trial": trial.number, **seed_stats(results, keys)}


def retrain(
    runs: StudyRuns, trial, cfg: Config, seed: int, pool: dict, base: dict, say: Callable[[str], None], on_epoch
) -> tuple[dict, list]:
    """One seed of a confirmed trial: distilled, against its baseline `base` (the same seed's no-teacher run), and
    with kd.features also with logit KD alone (said with `say`). (its metrics, its per-epoch history)"""
    r = distill_student(
        sweepfile.replace(cfg, {"train.seed": seed}), runs.ds, pool, on_epoch=on_epoch, epoch_guard=cpu_room
    )
    metrics = {
        "val_accuracy": r.val_accuracy,
        "test_accuracy": r.test_accuracy,
        "train_seconds": r.seconds,
        "baseline_val_accuracy": base["val_accuracy"],
        "baseline_test_accuracy": base["test_accuracy"],
        "kd_gain": r.val_accuracy - base["val_accuracy"],
        "kd_gain_test": r.test_accuracy - base["test_accuracy"],
    }
    if features.pairs(cfg):  # what the layer pairs add over logit KD alone: the same seed without them
        say(f"trial {trial.number} with logit KD alone (no feature pair), seed {seed}")
        lo = distill_student(
            sweepfile.replace(cfg, {"train.seed": seed, "kd.feature_pair": "none"}),
            runs.ds,
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
    return metrics, r.history
