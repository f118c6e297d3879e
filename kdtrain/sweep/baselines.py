"""What a trial's gain is measured against: the no-teacher baseline of each student (trained once per machine and
seed, cached, logged once per study) and the gain over it. Its functions take StudyRuns, the few things of a worker
that a baseline run needs (kdtrain.sweep.session's Context hands them over as ctx.runs); kdtrain confirm
(kdtrain.sweep.confirm) pairs its retrainings with these baselines."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kdtrain.config import sweepfile
from kdtrain.data import datasets
from kdtrain.deploy.measure import Bench, measure
from kdtrain.distill import models
from kdtrain.distill.student import distill_student
from kdtrain.distill.train import EpochStats
from kdtrain.paths import home
from kdtrain.schema import Config
from kdtrain.shared import atomic_write_text, content_key, cpu_room, file_lock
from kdtrain.study import space
from kdtrain.study.storage import study_lock
from kdtrain.tracking.client import Tracker
from kdtrain.tracking.outbox import unreachable
from kdtrain.tracking.params import flat_params, logged_whole


@dataclass(frozen=True)
class StudyRuns:
    """Where a worker's baseline and confirm runs go and what they train on: the study (its name and its lock), its
    MLflow experiment and parent run, the data with its MLflow dataset inputs, the bench that measures a model, the
    study's baseline_seeds and the worker's log."""

    study: object
    """The Optuna study (only kdtrain.study.search looks inside)."""
    tracker: Tracker
    exp_id: str
    parent_id: str
    ds: datasets.Dataset
    inputs: list
    """The data as MLflow dataset inputs (train, validation, test), logged with every run."""
    bench: Bench
    baseline_seeds: int
    log: Callable[[str], None]

    def log_model(self, run_id: str, name: str, model, tags: dict) -> str | None:
        """A run's model as an MLflow logged model (see Tracker.log_model), named after its run; two validation
        samples as the models take them are its input example and signature."""
        example = self.ds.x_val[:2].cpu().numpy()
        return self.tracker.log_model(
            run_id, self.exp_id, name, model, example, {"optuna.study": self.study.study_name, **tags}
        )


def student_key(cfg: Config) -> str:
    """The baseline cache key: what shapes a no-teacher student (its seeds are entries of the cache file)."""
    sig = space.signature(cfg)
    train = {k: v for k, v in sig["train"].items() if k != "seed"}
    return content_key(
        {"student": dataclasses.asdict(cfg.student), "train": train, "data": sig["data"], "format": 3}
    )  # 3: each seed's weights beside the results


def label_metrics(ds: datasets.Dataset) -> dict:
    """How many labels a run used: to train on (labelled_rows), to select on (val_rows), and the rows that enter
    the distillation term only (unlabelled_rows: the unlabelled training rows plus the transfer set)."""
    return {"labelled_rows": ds.labelled_rows, "unlabelled_rows": ds.unlabelled_rows, "val_rows": len(ds.y_val)}


def baseline_runs(
    runs: StudyRuns, cfg: Config, seeds: list[int], say: Callable[[str], None] | None = None, on_epoch=None
) -> dict:
    """The no-teacher (alpha = 0) student of cfg trained with each of the given train seeds, cached per machine
    and seed: {"metrics": deployment metrics, "runs": {seed: accuracies and per-epoch history}}. `say` announces
    each training (default: the worker's log), `on_epoch` follows its epochs."""
    key = student_key(cfg)
    path = baseline_file(key)
    with file_lock(f"baseline-{key}"):
        result = cached(key)
        missing = [s for s in seeds if str(s) not in result["runs"]]
        for seed in missing:
            (say or runs.log)(
                f"baseline {cfg.student.arch} width {cfg.student.width}: training without a teacher (seed {seed})"
            )
            r = distill_student(
                sweepfile.replace(cfg, {"kd.alpha": 0.0, "train.seed": seed}),
                runs.ds,
                {},
                on_epoch=on_epoch,
                epoch_guard=cpu_room,
            )
            if "metrics" not in result:
                result["metrics"] = measure(r.model, cfg.student, runs.bench)
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


def seed_stats(results: list[dict], keys: tuple[str, ...] = ("val_accuracy", "test_accuracy")) -> dict:
    """Mean and spread (mean_std) of each key over the seeds' results as key and key_std, plus train_seconds
    summed and the number of seeds."""
    out = {"seeds": len(results), "train_seconds": sum(r.get("train_seconds", 0.0) for r in results)}
    for k in keys:
        out[k], out[f"{k}_std"] = mean_std([r[k] for r in results])
    return out


def ensure_baseline(runs: StudyRuns, cfg: Config, unlogged: dict[str, Config]) -> dict:
    """The no-teacher baseline of this student over study.baseline_seeds seeds (train.seed, +1, ...): trained
    once per machine (cached), logged once per study with the seeds' mean accuracies and their spread. With the
    tracking server away its run waits in `unlogged` (by baseline key; log_unlogged logs it once it answers): the
    trial needs the numbers, not the run."""
    seeds = [cfg.train.seed + i for i in range(runs.baseline_seeds)]
    result = baseline_runs(runs, cfg, seeds)
    metrics = {**result["metrics"], **seed_stats([result["runs"][str(s)] for s in seeds])}
    key = student_key(cfg)
    if runs.tracker.down_since is not None:  # the tracking server away: logged before the next trial
        unlogged[key] = cfg
        return metrics
    try:
        log_baseline(runs, cfg, key, seeds, result, metrics)
    except Exception as e:
        if not unreachable(e):
            raise
        runs.tracker.down(e)  # the trial needs the numbers, not the run: logged before the next trial
        unlogged[key] = cfg
    return metrics


def log_unlogged(runs: StudyRuns, unlogged: dict[str, Config]) -> None:
    """The baseline runs that waited for the tracking server (ensure_baseline's `unlogged`), logged now; one that
    finds it away again waits on."""
    for cfg in list(unlogged.values()):
        ensure_baseline(runs, unlogged.pop(student_key(cfg)), unlogged)


def log_baseline(runs: StudyRuns, cfg: Config, key: str, seeds: list[int], result: dict, metrics: dict) -> None:
    """The baseline's MLflow run, once per study (under the study's lock)."""
    with study_lock(runs.study, runs.study.study_name, f"baseline-{key}"):
        if logged_whole(runs.tracker, runs.exp_id, {"kdtrain.baseline_key": key}):
            return
        run_name = f"baseline-{cfg.student.arch}-w{cfg.student.width}"
        run = runs.tracker.start(
            runs.exp_id,
            run_name,
            "baseline",
            runs.parent_id,
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
        runs.tracker.log_inputs(run, runs.inputs)
        model_id = runs.log_model(
            run, run_name, baseline_model(runs.ds, cfg, key, seeds[0]), {"kdtrain.role": "baseline"}
        )
        first = result["runs"][str(seeds[0])]
        steps = {"train_steps": first["train_steps"]} if "train_steps" in first else {}
        runs.tracker.log_metrics(
            run,
            {**{k: v for k, v in metrics.items() if k != "seeds"}, **steps, **label_metrics(runs.ds)},
            curves,
            model_id=model_id,
        )
        runs.tracker.end(run)


def cached(key: str) -> dict:
    """A baseline's cached results on this machine ({"runs": {}} before any seed)."""
    path = baseline_file(key)
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def baseline_file(key: str, seed: int | None = None) -> Path:
    """A baseline's cache file: its seeds' results (.json), or one seed's weights (-seed<s>.pt)."""
    return home() / "cache" / "baselines" / (f"{key}.json" if seed is None else f"{key}-seed{seed}.pt")


def baseline_model(ds: datasets.Dataset, cfg: Config, key: str, seed: int):
    """The no-teacher student of cfg (its baseline key) trained with this seed (weights cached by baseline_runs)."""
    model = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
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
