"""Where distillation earns its keep: the three sweep files of the README's "When labels are scarce, or the domain
or the task differs", each swept and its pick confirmed, as a user would run them.

    python benchmarks/where_kd_pays.py [--out FILE.json] [--sweeps few_labels,domain_shift,coarse_task]

For each sweep file, in a fresh kdtrain home (so teacher training, MNIST-1D generation and the baselines are
included in the timings):

1. ``kdtrain sweep sweeps/<name>.yaml`` (12 trials, one worker, the pareto pruner on), timed;
2. the val-chosen best trial: the highest val accuracy, ties to the fewer parameters (the front's most accurate
   student: what the report and a user would pick);
3. ``kdtrain confirm <study> --trial <best> --seeds 3``, timed: the trial retrained with train.seed 1, 2, 3, each
   paired with the no-teacher baseline of the same seed (trained on the same labelled rows for as many
   optimizer steps).

Printed per sweep: the labels used (to train on / to select on / unlabelled), the baseline's test accuracy mean
± sample std over those 3 seeds, the distilled student's, the gain and the gain in baseline stds, the teacher's
test accuracy on its own data and on the student's (its source-only score), and the wall times. The acceptance of
issue 21: few_labels beats the baseline by >= 15 points and >= 2 baseline stds, domain_shift by >= 5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ("few_labels", "domain_shift", "coarse_task")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def one(name: str, home: Path) -> dict:
    os.environ["KDTRAIN_HOME"] = str(home)
    from kdtrain import config
    from kdtrain.cli.commands import main
    from kdtrain.tracking.client import Tracker

    sweep = ROOT / "sweeps" / f"{name}.yaml"
    study = config.load(sweep).study.name
    t0 = time.perf_counter()
    assert main(["sweep", str(sweep), "--no-report"]) == 0
    sweep_s = time.perf_counter() - t0
    tracker = Tracker(f"sqlite:///{home}/mlflow.db")
    runs, _ = tracker.runs_frame(study)
    role = runs["tag:kdtrain.role"]
    students = runs[(role == "student") & (runs["tag:optuna.state"] == "COMPLETE")]
    best = students.sort_values(["val_accuracy", "params"], ascending=[False, True]).iloc[0]
    trial = int(best["tag:optuna.trial"])
    t0 = time.perf_counter()
    assert main(["confirm", study, "--trial", str(trial), "--seeds", "3", "--no-report"]) == 0
    confirm_s = time.perf_counter() - t0
    runs, _ = tracker.runs_frame(study)
    confirms = runs[(runs["tag:kdtrain.role"] == "confirm") & (runs["tag:optuna.trial"] == str(trial))]
    teacher = runs[runs["tag:kdtrain.role"] == "teacher"].iloc[0]
    base_m, base_s = mean_std(list(confirms["baseline_test_accuracy"]))
    kd_m, kd_s = mean_std(list(confirms["test_accuracy"]))
    return {
        "sweep": name,
        "study": study,
        "trial": trial,
        "student_width": int(float(best["student.width"])),
        "labelled_rows": int(best["labelled_rows"]),
        "val_rows": int(best["val_rows"]),
        "unlabelled_rows": int(best["unlabelled_rows"]),
        "seeds": len(confirms),
        "baseline_test": base_m,
        "baseline_test_std": base_s,
        "distilled_test": kd_m,
        "distilled_test_std": kd_s,
        "gain_points": 100 * (kd_m - base_m),
        "gain_in_baseline_stds": (kd_m - base_m) / base_s if base_s else None,
        "teacher_source_test": teacher.get("source_test_accuracy"),
        "teacher_target_test": teacher["test_accuracy"],
        "sweep_s": sweep_s,
        "confirm_s": confirm_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated sweep names under sweeps/")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one sweep in this process, its row as JSON
    args = ap.parse_args()
    if args.one:  # MLflow keeps process-wide state (its tracking URI): one store per process
        os.chdir(os.environ["KDTRAIN_HOME"])  # reports and logs stay in the temporary home
        row = one(args.one, Path(os.environ["KDTRAIN_HOME"]))
        print("ROW " + json.dumps(row))
        return 0
    rows = []
    for name in args.sweeps.split(","):
        with tempfile.TemporaryDirectory(prefix=f"kdtrain-{name}-") as home:
            done = subprocess.run(
                [sys.executable, __file__, "--one", name],
                env={**os.environ, "KDTRAIN_HOME": home},
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.split("ROW ", 1)[1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(
        "\n| sweep | labels (train / select / unlabelled) | no teacher, test % | distilled, test % | gain (points) "
        "| teacher on its data / on the student's, test % | sweep + confirm |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        stds = f", {r['gain_in_baseline_stds']:.1f} baseline stds" if r["gain_in_baseline_stds"] else ""
        src = f"{100 * r['teacher_source_test']:.1f}" if r["teacher_source_test"] == r["teacher_source_test"] else "-"
        print(
            f"| `{r['sweep']}` (trial {r['trial']}, width {r['student_width']}) | {r['labelled_rows']} / "
            f"{r['val_rows']} / {r['unlabelled_rows']:,} | {100 * r['baseline_test']:.1f} ± "
            f"{100 * r['baseline_test_std']:.1f} | {100 * r['distilled_test']:.1f} ± {100 * r['distilled_test_std']:.1f} "
            f"| {r['gain_points']:+.1f}{stds} | {src} / {100 * r['teacher_target_test']:.1f} | "
            f"{r['sweep_s'] / 60:.1f} + {r['confirm_s'] / 60:.1f} min |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
