"""Cost of distilling: a KD epoch with cached teacher logits vs a no-teacher epoch of the same student.

    python benchmarks/kd_cost.py [--sweep sweeps/quickstart.yaml] [--repeats 5] [--threads 1]

Trains the sweep's student both ways, interleaved, and prints the median
seconds per epoch and their ratio (ideal: 1.0; the teacher is paid once).
"""

import argparse
import json
import statistics
import time

import torch

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.distill.student import distill_student
from kdtrain.distill.teachers import load_pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(args.sweep, [f"train.threads={args.threads}"])
    ds = datasets.load(cfg.data)
    pool = load_pool(cfg, ds)
    runs = {"kd": config.replace(cfg, {"kd.alpha": 0.7}), "scratch": config.replace(cfg, {"kd.alpha": 0.0})}
    per_epoch = {k: [] for k in runs}
    distill_student(runs["kd"], ds, pool)  # warm-up
    for _ in range(args.repeats):
        for name, c in runs.items():
            t0 = time.perf_counter()
            distill_student(c, ds, pool)
            per_epoch[name].append((time.perf_counter() - t0) / c.train.epochs)
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    out = {
        "kd_s_per_epoch": med["kd"],
        "scratch_s_per_epoch": med["scratch"],
        "kd_over_scratch": med["kd"] / med["scratch"],
        "threads": args.threads,
        "student": f"{cfg.student.arch} width {cfg.student.width}",
        "epochs": cfg.train.epochs,
        "train_samples": len(ds.y_train),
        "batch_size": cfg.train.batch_size,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
