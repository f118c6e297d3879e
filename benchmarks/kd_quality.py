"""Distillation quality, as the KD papers tabulate it: test accuracy of each loss, mean ± std over seeds.

    python benchmarks/kd_quality.py [--out FILE.json] [--quick] [--columns mnist1d/w4,digits/w2]

Rows: ``baseline`` (no teacher, kd.alpha 0), ``kd`` (Hinton), ``kd + standardize`` (logit standardisation),
``dkd`` (decoupled KD, kd.dkd_alpha 1, kd.dkd_beta 8 as in the paper and kdtrain's defaults), ``dist`` (DIST).
Columns: three student widths on each of two datasets; every student is distilled from one fixed teacher of
its dataset, trained (once, cached) through kdtrain's teacher pool.

- MNIST-1D: the quickstart setup (sweeps/quickstart.yaml: 5000 samples, 60 epochs, batch 256, Adam 0.01,
  one-cycle) with its ``cnn_wide`` teacher (cnn1d width 64, 26.8k params, about 98% test). Students: cnn1d widths
  3, 4 and 6 (about 70%, 84% and 90% test without a teacher, 1 seed): small enough that they sit well below the
  teacher, so a distillation gain has room to show; at width 8 and above the students approach the teacher.
- digits (scikit-learn's 8x8 digits, offline; 1150 train / 288 val / 359 test with val_fraction 0.2, chosen so
  that a validation sample is 0.35 points, not 0.7): teacher tiny_cnn width 32 (87k params, about 99% test);
  students tiny_cnn (the two-conv edge CNN, which suits 8x8 images) widths 1, 2 and 3 (192, 538 and 1048
  params; about 83%, 91% and 95% test without a teacher). Width 4 is already at 96%. 60 epochs, batch 64.

Each cell is the test accuracy, mean ± sample std over train.seed 0, 1, 2, at the grid point chosen **on
validation accuracy**: for every loss row, T in {2, 4, 8} x alpha in {0.5, 0.9} (nothing else varies), each point
trained with every seed, and the point of highest mean val accuracy over the seeds wins (ties: the first in grid
order). The baseline has no grid. The test set is only read for the chosen point: the JSON records every grid
point's val accuracies, and test accuracies only for the chosen one, so that nobody can select on test later.
The third table is the gain over the baseline's mean in points, marked ``(noise)`` when it is within two
standard errors of the difference (sqrt(s_a^2/n + s_b^2/n)): with 3 seeds that is a rough screen, not a test.

Cost: 3 baseline + 4 losses x 6 points x 3 seeds = 75 trainings per column, 450 in all. Measured on this 2-core
machine (1 thread, load average about 2 from other work beside it) by running single columns
(``--columns digits/w2``: 83 s; ``--columns mnist1d/w6``: 155 s, a 60-epoch MNIST-1D student 1.5-2 s, a digits
student about 1 s): three MNIST-1D columns about 7.5 min, three digits columns about 4 min, so **about 12 minutes**
for the full run (plus about 15 s to train the two teachers the first time; they are cached under $KDTRAIN_HOME,
default ./mlruns, and the MNIST-1D teacher is the same cache entry as the quickstart sweep's). Progress, with an
estimate of the time left, goes to stderr.

--quick runs a tiny version (2 epochs, small data, one width per dataset, 2 seeds, T 4 x alpha {0.5, 0.9}) so
that tests/unit/distill/test_kd_quality.py keeps the script working; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.deploy.profile import count_params
from kdtrain.distill import models
from kdtrain.distill.student import distill_student
from kdtrain.distill.teachers import load_pool
from kdtrain.sweep.baselines import mean_std

ROWS = {  # row label -> the kd settings that make it (the grid adds kd.temperature and kd.alpha)
    "baseline": {"kd.alpha": 0.0},
    "kd": {"kd.loss": "kd", "kd.standardize": False},
    "kd + standardize": {"kd.loss": "kd", "kd.standardize": True},
    "dkd": {"kd.loss": "dkd", "kd.standardize": False},
    "dist": {"kd.loss": "dist", "kd.standardize": False},
}

DIGITS_SWEEP = """
study: {name: kd-quality-digits}
data: {name: digits, val_fraction: 0.2, seed: 0}
teachers:
  - {name: tiny_cnn_w32, arch: tiny_cnn, width: 32, epochs: 60}
student: {arch: tiny_cnn, width: 2}
train: {epochs: 60, batch_size: 64, optimizer: adam, lr: 0.01, schedule: onecycle}
kd: {temperature: 4.0, alpha: 0.7, teachers: [tiny_cnn_w32]}
"""

FULL = {
    "datasets": {"mnist1d": {"widths": [3, 4, 6], "overrides": []}, "digits": {"widths": [1, 2, 3], "overrides": []}},
    "grid": {"temperature": [2.0, 4.0, 8.0], "alpha": [0.5, 0.9]},
    "seeds": [0, 1, 2],
}
QUICK = {
    "datasets": {
        "mnist1d": {"widths": [4], "overrides": ["data.size=600", "teachers.cnn_wide.epochs=2", "train.epochs=2"]},
        "digits": {"widths": [2], "overrides": ["data.limit=200", "teachers.tiny_cnn_w32.epochs=2", "train.epochs=2"]},
    },
    "grid": {"temperature": [4.0], "alpha": [0.5, 0.9]},
    "seeds": [0, 1],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_config(name: str, overrides: list[str]) -> config.Config:
    """The dataset's setup, one thread, its first teacher as the only one distilled from."""
    overrides = [*overrides, "train.threads=1"]
    if name == "mnist1d":
        return config.load(ROOT / "sweeps" / "quickstart.yaml", [*overrides, "kd.teachers=[cnn_wide]"])
    return config.from_dict(yaml.safe_load(DIGITS_SWEEP), "kd_quality.py:DIGITS_SWEEP", overrides)


class Counter:
    """Trainings run so far, for the progress lines and the final count."""

    def __init__(self, total: int):
        self.done, self.total, self.start = 0, total, time.perf_counter()

    def eta(self) -> str:
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(1, self.done) * (self.total - self.done)
        return f"{self.done}/{self.total} trainings, {elapsed / 60:.1f} min elapsed, ~{left / 60:.1f} min left"


def train_seeds(cfg: config.Config, ds, pool, seeds: list[int], values: dict, what: str, counter: Counter):
    """Train cfg with `values` set, once per seed: the per-seed (val, test) accuracies."""
    out = []
    for seed in seeds:
        r = distill_student(config.replace(cfg, {**values, "train.seed": seed}), ds, pool)
        counter.done += 1
        log(f"  {what} seed {seed}: val {r.val_accuracy:.4f} ({r.seconds:.1f} s) [{counter.eta()}]")
        out.append((r.val_accuracy, r.test_accuracy))
    return out


def run_cell(cfg, ds, pool, row: str, grid: list[dict], seeds: list[int], counter: Counter) -> dict:
    """One table cell: the row's grid searched on val (mean over seeds), test reported for the chosen point."""
    fixed = ROWS[row]
    if row == "baseline":
        runs = train_seeds(cfg, ds, pool, seeds, fixed, "baseline", counter)
        chosen, points = {"temperature": None, "alpha": None}, None
    else:
        points = []
        for g in grid:
            runs_g = train_seeds(
                cfg,
                ds,
                pool,
                seeds,
                {**fixed, "kd.temperature": g["temperature"], "kd.alpha": g["alpha"]},
                f"T={g['temperature']:g} alpha={g['alpha']:g}",
                counter,
            )
            val = [v for v, _ in runs_g]
            points.append({**g, "val_accuracy": val, "val_mean": statistics.fmean(val), "_runs": runs_g})
        best = max(points, key=lambda p: p["val_mean"])  # max keeps the first of equals: grid order breaks ties
        runs, chosen = best["_runs"], {"temperature": best["temperature"], "alpha": best["alpha"]}
        for p in points:
            del p["_runs"]  # test accuracies of the points not chosen are not kept
        log(f"  chosen on val: T={best['temperature']:g} alpha={best['alpha']:g} (val mean {best['val_mean']:.4f})")
    val, test = [v for v, _ in runs], [t for _, t in runs]
    mean, std = mean_std(test)
    return {
        "mean": mean,
        "std": std,
        "test_accuracy": test,
        "val_accuracy": val,
        "val_mean": statistics.fmean(val),
        **chosen,
        "grid": points,
    }


def gain(cell: dict, base: dict) -> dict:
    """Gain over the baseline's mean, and whether it stands out of the seeds' noise (2 standard errors)."""
    n = len(cell["test_accuracy"])
    diff = cell["mean"] - base["mean"]
    se = math.sqrt((cell["std"] ** 2 + base["std"] ** 2) / n)
    return {"gain": diff, "gain_se": se, "beyond_noise": abs(diff) > 2 * se}


def markdown(res: dict) -> str:
    cols, rows, cells = res["columns"], res["rows"], res["cells"]
    head = "| | " + " | ".join(f"{c['dataset']} {c['arch']} w{c['width']} ({c['params']:,} p)" for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)

    def table(fmt) -> list[str]:
        return [head, sep] + [f"| {r} | " + " | ".join(fmt(r, c["key"]) for c in cols) + " |" for r in rows]

    def acc(r, k):
        c = cells[r][k]
        return f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"

    def choice(r, k):
        c = cells[r][k]
        return "—" if c["temperature"] is None else f"T={c['temperature']:g}, α={c['alpha']:g}"

    def gains(r, k):
        if r == "baseline":
            return "—"
        g = cells[r][k]
        return f"{100 * g['gain']:+.1f}" + ("" if g["beyond_noise"] else " (noise)")

    teachers = "; ".join(
        f"{d}: {t['arch']} w{t['width']} ({t['params']:,} p), test {100 * t['test_accuracy']:.1f}"
        for d, t in res["teachers"].items()
    )
    n = len(res["seeds"])
    return "\n".join(
        [
            (f"Test accuracy (%), mean ± sample std over {n} seeds; T and α chosen on val. Teachers: {teachers}."),
            "",
            *table(acc),
            "",
            "Chosen on validation accuracy:",
            "",
            *table(choice),
            "",
            ("Gain over the baseline's mean (points); (noise): within 2 standard errors:"),
            "",
            *table(gains),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write every number as JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny version, to keep the script working")
    ap.add_argument("--columns", help="only these columns, comma-separated (e.g. mnist1d/w4,digits/w2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = QUICK if args.quick else FULL
    grid = [{"temperature": t, "alpha": a} for t in spec["grid"]["temperature"] for a in spec["grid"]["alpha"]]
    seeds = spec["seeds"]
    wanted = set(args.columns.split(",")) if args.columns else None
    plan = [
        (name, w)
        for name, d in spec["datasets"].items()
        for w in d["widths"]
        if wanted is None or f"{name}/w{w}" in wanted
    ]
    if not plan:
        raise SystemExit(f"no column matches --columns {args.columns}")
    per_column = len(seeds) * (1 + (len(ROWS) - 1) * len(grid))
    counter = Counter(per_column * len(plan))
    log(f"{len(plan)} columns x {per_column} trainings = {counter.total} trainings")

    res = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "quick": args.quick,
        "grid": spec["grid"],
        "seeds": seeds,
        "rows": list(ROWS),
        "columns": [],
        "epochs": {},
        "teachers": {},
        "data": {},
        "cells": {r: {} for r in ROWS},
    }
    for name in dict.fromkeys(n for n, _ in plan):
        cfg = base_config(name, spec["datasets"][name]["overrides"])
        ds = datasets.load(cfg.data)
        tname = cfg.kd_teachers[0]
        log(f"{name}: teacher {tname} (trained once, cached under {config.home()})")
        pool = load_pool(cfg, ds, [tname], log=log)
        t = pool[tname]
        res["epochs"][name] = cfg.train.epochs
        res["teachers"][name] = {
            "name": tname,
            "arch": t.config.arch,
            "width": t.config.width,
            "params": t.params,
            "epochs": t.config.epochs,
            "val_accuracy": t.val_accuracy,
            "test_accuracy": t.test_accuracy,
        }
        res["data"][name] = {"train": len(ds.y_train), "val": len(ds.y_val), "test": len(ds.y_test)}
        for width in [w for n, w in plan if n == name]:
            c = config.replace(cfg, {"student.width": width})
            key = f"{name}/w{width}"
            params = count_params(models.from_config(c.student, ds.input_shape, ds.num_classes))
            res["columns"].append(
                {"key": key, "dataset": name, "arch": c.student.arch, "width": width, "params": params}
            )
            for row in ROWS:
                log(f"[{key} | {row}]")
                res["cells"][row][key] = run_cell(c, ds, pool, row, grid, seeds, counter)
            base = res["cells"]["baseline"][key]
            for row in list(ROWS)[1:]:
                res["cells"][row][key].update(gain(res["cells"][row][key], base))

    res["trainings"] = counter.done
    res["wall_s"] = time.perf_counter() - counter.start
    print(markdown(res))
    print(
        f"\n{res['trainings']} trainings in {res['wall_s'] / 60:.1f} min ({res['wall_s']:.0f} s); "
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
