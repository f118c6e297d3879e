"""Few labels (data.labels): which training rows keep their label, stratified by class and drawn with data.seed,
and which of them select (the validation split). Split from kdtrain.data.datasets, which loads and normalises."""

from __future__ import annotations

import numpy as np

from kdtrain.errors import DataError
from kdtrain.schema import DataConfig


def label_budget(labels: int | float, rows: int) -> int:
    """data.labels as a count of rows: a fraction of the training split's rows (at least 1), or the count."""
    return labels if type(labels) is int else max(1, round(labels * rows))


def scarce_split(y: np.ndarray, classes: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """data.labels: (val rows, train rows, which train rows keep their label). The labelled rows are stratified by
    class (each class in proportion, at least 2) and drawn with data.seed; the validation split is
    data.val_fraction of each class's labelled rows (at least 1, at most all but 1); every other row trains,
    unlabelled unless chosen."""
    n = len(y)
    budget = label_budget(cfg.labels, n)
    if budget > n:
        raise DataError(
            f"data.labels: {budget} labelled rows asked for, but the training split has {n} rows "
            "(give a count up to that, or a fraction in (0, 1])"
        )
    if budget < 2 * classes:
        raise DataError(
            f"data.labels: {budget} label(s) for {classes} classes; give at least {2 * classes}, two per "
            "class (one to train on, one to select on)"
        )
    perm = np.random.default_rng(cfg.seed).permutation(n)
    members = [perm[y[perm] == c] for c in range(classes)]
    counts = np.array([len(m) for m in members])
    if (counts < 2).any():
        c = int(np.argmin(counts))
        raise DataError(
            f"data.labels: class {c} has {counts[c]} training row(s); each class needs 2 to keep labels "
            "for training and selection"
        )
    ideal = budget * counts / n
    quota = np.minimum(counts, np.maximum(2, np.floor(ideal).astype(int)))
    while quota.sum() < budget:  # largest shortfall first, within each class's rows
        gap = np.where(quota < counts, ideal - quota, -np.inf)
        quota[int(np.argmax(gap))] += 1
    while quota.sum() > budget:  # the minimum of 2 overshot: take from the most over-served class
        over = np.where(quota > 2, quota - ideal, -np.inf)
        quota[int(np.argmax(over))] -= 1
    val, labelled = [], []
    for m, q in zip(members, quota, strict=False):
        v = min(q - 1, max(1, round(q * cfg.val_fraction)))
        val.append(m[:v])
        labelled.append(m[v:q])
    val_idx = np.concatenate(val)
    train_idx = perm[~np.isin(perm, val_idx)]
    return val_idx, train_idx, np.isin(train_idx, np.concatenate(labelled))
