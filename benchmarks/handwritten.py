"""B7's other side: the study an engineer writes by hand instead of using kdtrain.

Written the way optuna-examples' `pytorch_simple.py` and the common distillation notebooks do it, for the task of
`sweeps/quickstart.yaml`: MNIST-1D (5,000 rows, mnist1d's own train/test split, 10% of train held out for
validation), a `cnn1d` width-64 teacher trained once for 60 epochs, `cnn1d` students of width 2 to 32, Adam at
lr 0.01 with a one-cycle schedule, 60 epochs, batch 256, the classic KD loss
(alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE) with the teacher run on every batch, and Optuna's
multi-objective TPE over T (1-8, log), alpha (0.3-1) and width (2-32, log), maximising validation accuracy and
minimising parameters. Every trial is an MLflow run through optuna-integration's MLflowCallback.

It imports nothing of kdtrain (the models are the same layers as kdtrain's cnn1d, so a width has the same
parameter count on both sides). Usage:

    python benchmarks/handwritten.py --out DIR [--trials 20] [--seed 0]

DIR receives the Optuna journal (study `handwritten`, test accuracy and parameters as user attributes of each
trial) and the MLflow store; benchmarks/b7.py reads them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

T0 = time.time()  # the process's start, before the imports below (they are part of its time)

import mlflow
import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna_integration.mlflow import MLflowCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS, BATCH, LR = 60, 256, 0.01


def load_data(seed: int = 0):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 5000, seed
    d = make_dataset(args)
    x, y = d["x"].astype(np.float32)[:, None, :], d["y"].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[: len(y) // 10], perm[len(y) // 10 :]
    mean, std = x[train].mean(), x[train].std() + 1e-8
    t = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731
    return (
        (t(x[train]), torch.from_numpy(y[train])),
        (t(x[val]), torch.from_numpy(y[val])),
        (t(d["x_test"].astype(np.float32)[:, None, :]), torch.from_numpy(d["y_test"].astype(np.int64))),
    )


class AvgMax(nn.Module):
    def forward(self, x):
        return torch.cat([x.mean(-1), x.amax(-1)], dim=1)


def cnn1d(width: int, classes: int = 10) -> nn.Module:
    layers, prev = [], 1
    for i in range(3):
        layers += [
            nn.Conv1d(prev, width, 5 if i == 0 else 3, stride=1 if i == 0 else 2, padding=2 if i == 0 else 1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        ]
        prev = width
    return nn.Sequential(*layers, AvgMax(), nn.Linear(2 * width, classes))


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def fit(model, train, teacher=None, T=1.0, alpha=0.0, seed=0):
    loader = DataLoader(
        TensorDataset(*train),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * len(loader))
    model.train()
    for _ in range(EPOCHS):
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean")
                loss = alpha * T * T * kd + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = load_data()

    torch.manual_seed(0)
    teacher = fit(cnn1d(64), train).eval()
    print(f"teacher: val {accuracy(teacher, *val):.4f}, {time.time() - T0:.1f}s", flush=True)

    def objective(trial: optuna.Trial):
        T = trial.suggest_float("kd.temperature", 1, 8, log=True)
        alpha = trial.suggest_float("kd.alpha", 0.3, 1)
        width = trial.suggest_int("student.width", 2, 32, log=True)
        torch.manual_seed(trial.number)
        student = fit(cnn1d(width), train, teacher, T, alpha, seed=trial.number)
        params = sum(p.numel() for p in student.parameters())
        trial.set_user_attr("test_accuracy", accuracy(student, *test))
        trial.set_user_attr("params", params)
        return accuracy(student, *val), params

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.log")))
    study = optuna.create_study(
        study_name="handwritten",
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=a.seed),
    )
    study.set_user_attr("t0", T0)
    study.optimize(
        objective,
        n_trials=a.trials,
        callbacks=[MLflowCallback(metric_name=["val_accuracy", "params"], create_experiment=True)],
    )
    print(f"{len(study.trials)} trials, {time.time() - T0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
