"""Distil one student from a config and its teacher pool (used by `kdtrain train` and by trials)."""

from __future__ import annotations

from collections.abc import Callable

from kdtrain.data.datasets import Dataset
from kdtrain.distill import features, models
from kdtrain.distill.teachers import Teacher, stacked_logits
from kdtrain.distill.train import Distill, EpochStats, TrainResult, seed_all, train
from kdtrain.schema import Config


def make_distill(cfg: Config, pool: dict[str, Teacher]) -> Distill | None:
    """The teacher signal of cfg.kd, or None for a no-teacher run (alpha = 0)."""
    if cfg.kd.alpha == 0:
        return None
    names, kd = cfg.kd_teachers, cfg.kd
    # each teacher's logits mapped to the student's classes at this T (teachers[].classes); the online models see
    # the student's inputs as their own data's and return the same mapped logits
    online = all(pool[n].model is not None for n in names)
    pairs = features.pairs(cfg)  # kd.features: the teachers also run online, up to the hooked layers
    return Distill(
        temperature=kd.temperature,
        alpha=kd.alpha,
        ensemble=kd.ensemble,
        weights=kd.weights,
        logits=stacked_logits(pool, names, "train", kd.temperature),
        models=[pool[n].as_student_model(kd.temperature) for n in names] if online else None,
        loss=kd,
        features=features.for_pool(pairs, pool, kd.temperature) if pairs else None,
    )


def distill_student(
    cfg: Config,
    data: Dataset,
    pool: dict[str, Teacher],
    on_epoch: Callable[[EpochStats], None] | None = None,
    epoch_guard=None,
) -> TrainResult:
    """Build the student of cfg (seeded) and train it against cfg.kd's teachers."""
    seed_all(cfg.train.seed)
    student = models.from_config(cfg.student, data.input_shape, data.num_classes)
    return train(
        student,
        data,
        cfg.train,
        distill=make_distill(cfg, pool),
        augment_kinds=cfg.data.augment,
        on_epoch=on_epoch,
        epoch_guard=epoch_guard,
    )
