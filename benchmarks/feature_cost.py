"""Cost of feature distillation: a trial with a kd.features pair vs a logit-KD trial of the same student.

    python benchmarks/feature_cost.py [--sweep sweeps/features.yaml] [--repeats 3] [--threads 1]

Trains the sweep's base student with each pair of kd.features and with none (logit KD from the cached teacher
logits, the fast path), interleaved, and prints the median seconds per epoch of each and their ratio to logit
KD. A feature trial runs the teacher online on every batch (under no_grad, stopped at its hooked layer) and
backpropagates the pair's loss (and a hint's regressor), which cached logits cannot spare it. The no-teacher
epoch is shown beside them (B2's reference).
"""

import argparse
import json
import statistics
import time

import torch

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.distill import features
from kdtrain.distill.student import distill_student
from kdtrain.distill.teachers import load_pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/features.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(args.sweep, [f"train.threads={args.threads}"])
    ds = datasets.load(cfg.data)
    pool = load_pool(cfg, ds)
    runs = {
        "logit_kd": config.replace(cfg, {"kd.feature_pair": "none"}),
        **{p.name: config.replace(cfg, {"kd.feature_pair": p.name}) for p in features.pairs(cfg, every=True)},
        "no_teacher": config.replace(cfg, {"kd.alpha": 0.0}),
    }
    per_epoch = {k: [] for k in runs}
    accuracy = {k: [] for k in runs}
    for c in runs.values():  # warm-up: first calls of each kernel
        distill_student(config.replace(c, {"train.epochs": 1}), ds, pool)
    for _ in range(args.repeats):
        for name, c in runs.items():
            t0 = time.perf_counter()
            r = distill_student(c, ds, pool)
            per_epoch[name].append((time.perf_counter() - t0) / c.train.epochs)
            accuracy[name].append(r.val_accuracy)
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    out = {
        "s_per_epoch": med,
        "over_logit_kd": {k: v / med["logit_kd"] for k, v in med.items()},
        "val_accuracy": {k: statistics.median(v) for k, v in accuracy.items()},
        "pairs": {
            p.name: f"{p.loss}: teacher {p.teacher_layer} -> student {p.student_layer}, weight {p.weight:g}"
            for p in features.pairs(cfg, every=True)
        },
        "threads": args.threads,
        "repeats": args.repeats,
        "student": f"{cfg.student.arch} width {cfg.student.width}",
        "teacher": f"{cfg.teachers[0].arch} width {cfg.teachers[0].width}",
        "epochs": cfg.train.epochs,
        "train_samples": len(ds.y_train),
        "batch_size": cfg.train.batch_size,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
