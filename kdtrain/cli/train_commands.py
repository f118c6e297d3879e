"""`kdtrain teachers`, `kdtrain train` and `kdtrain profile`: a sweep file's models trained or measured on this
machine, without a study; and the loading every command that reads a sweep file starts with (load_sweep,
load_data)."""

from __future__ import annotations

import time

from kdtrain.sweep.console import EpochProgress, table, teacher_progress


def load_sweep(args):
    from kdtrain.config import sweepfile
    from kdtrain.ship import study_teacher

    return load_data(study_teacher.resolve(sweepfile.load(args.sweep, args.set)))  # teachers[].from_study


def load_data(cfg):
    """The data of cfg, and every model of cfg that is not a registered family run once on it (torchvision: and
    python: archs): a file or model that does not fit is one error before any training. (cfg, dataset)"""
    from kdtrain.data import datasets
    from kdtrain.distill import features, models, teachers
    from kdtrain.distill.train import resolve_device
    from kdtrain.study import space

    resolve_device(cfg.train.device)  # cuda on a machine without CUDA: one line before any data loads
    t0 = time.perf_counter()
    ds = datasets.load(cfg.data)
    print(
        f"data {cfg.data.name}: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test, "
        f"input {tuple(ds.input_shape)}, {ds.num_classes} classes ({time.perf_counter() - t0:.1f}s)"
        + (f"; {ds.note}" if ds.note else "")
    )
    # a teacher with its own data, output or classes is run on its own data by teachers.check_weights instead
    built = [("student", cfg.student)] + [
        (f"teachers ({t.name})", t)
        for t in cfg.teachers
        if teachers.kind(t) in ("train", "weights") and t.data is None and t.output is None and t.classes is None
    ]
    models.check_fits(built, ds.input_shape, ds.num_classes)
    ends = space.extreme_students(cfg, "low") + space.extreme_students(cfg, "high")
    features.check_paths(cfg, ds, ends)  # kd.features: every layer found and joined before any training
    return cfg, ds


def cmd_teachers(args) -> int:
    from kdtrain.sweep.session import load_pool

    cfg, ds = load_sweep(args)
    if not cfg.teachers:
        print("the sweep file defines no teachers (add a teachers: list)")
        return 0
    pool = load_pool(cfg, ds, on_epoch=teacher_progress())
    rows = [
        {
            "name": t.name,
            "arch": t.arch,
            "width": t.width,
            "params": t.params_text,
            "val_acc": f"{t.val_accuracy:.4f}",
            "test_acc": f"{t.test_accuracy:.4f}",
            "own_test_acc": "-" if t.source_test_accuracy is None else f"{t.source_test_accuracy:.4f}",
            "status": "cached" if t.cached else t.source,
            "seconds": f"{t.seconds:.1f}",
        }
        for t in pool.values()
    ]
    # a teacher with its own data (teachers[].data): its test accuracy there beside the student's test split
    own = ["own_test_acc"] if any(t.source_test_accuracy is not None for t in pool.values()) else []
    print()
    print(table(rows, ["name", "arch", "width", "params", "val_acc", "test_acc", *own, "status", "seconds"]))
    if own:
        print(
            "\nval_acc, test_acc: on the student's splits (mapped to its classes); own_test_acc: on the test split "
            "of the teacher's own data (teachers[].data)"
        )
    made = [t.name for t in pool.values() if not t.cached]
    if made:
        print(
            f"\n{len(made)} of {len(pool)} teachers trained or loaded now ({', '.join(made)}); "
            f"cached under {next(iter(pool.values())).path.parent}"
        )
    else:
        print(f"\nall {len(pool)} teachers came from the cache: nothing trained")
    return 0


def cmd_train(args) -> int:
    from kdtrain.deploy.profile import count_params
    from kdtrain.distill.student import distill_student
    from kdtrain.sweep.session import load_pool

    cfg, ds = load_sweep(args)
    names = cfg.kd_teachers if cfg.kd.alpha > 0 else []
    pool = load_pool(cfg, ds, names, on_epoch=teacher_progress())
    for t in pool.values():
        print(f"teacher {t.name}: {'cached' if t.cached else t.source}, val_acc {t.val_accuracy:.4f}")
    what = (
        f"T={cfg.kd.temperature:g}, alpha={cfg.kd.alpha:g}, teachers={'+'.join(names)} ({cfg.kd.ensemble})"
        if names
        else "no teacher (alpha=0)"
    )
    print(f"student {cfg.student.arch} width {cfg.student.width}: distilling with {what}")
    result = distill_student(cfg, ds, pool, on_epoch=EpochProgress("student"))
    params = count_params(result.model)
    rows = [
        {
            "model": f"student ({cfg.student.arch}, width {cfg.student.width})",
            "params": f"{params:,}",
            "val_acc": f"{result.val_accuracy:.4f}",
            "test_acc": f"{result.test_accuracy:.4f}",
            "x smaller": "1.0",
        }
    ]
    for t in pool.values():
        rows.append(
            {
                "model": f"teacher {t.name} ({t.described})",
                "params": t.params_text,
                "val_acc": f"{t.val_accuracy:.4f}",
                "test_acc": f"{t.test_accuracy:.4f}",
                "x smaller": f"{t.params / params:.1f}" if t.params is not None else "?",
            }
        )
    print()
    print(table(rows, ["model", "params", "val_acc", "test_acc", "x smaller"]))
    print(f"\nstudent trained in {result.seconds:.1f}s on {result.device}")
    return 0


def cmd_profile(args) -> int:
    import dataclasses

    from kdtrain.deploy.profile import model_identity, profile, width_ladder
    from kdtrain.distill import models, teachers
    from kdtrain.errors import KdtrainError
    from kdtrain.sweep.console import profile_row

    cfg, ds = load_sweep(args)
    p = cfg.profile
    print(
        f"latency: batch 1, {p.threads} thread(s), {p.device}, {p.backend}; throughput: batch "
        f"{p.throughput_batch}; FLOPs per sample (a multiply-add counts 2)"
    )
    entries = [(f"teacher {t.name}", t) for t in cfg.teachers if teachers.kind(t) in ("train", "weights")]
    widths = width_ladder(cfg, args.widths)
    entries += [(f"student {cfg.student.arch}", dataclasses.replace(cfg.student, width=w)) for w in widths]
    built = []
    for label, m in entries:  # every model first: a width too large to build fails before any measurement is cached
        try:
            # cost does not depend on the weights, so untrained models are measured
            built.append(models.from_config(dataclasses.replace(m, pretrained=False), ds.input_shape, ds.num_classes))
        except (RuntimeError, OverflowError, MemoryError, TypeError, ValueError) as e:  # torch: no memory, or > int64
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise KdtrainError(
                f"{label} at width {m.width}: the model cannot be built ({reason}); profile smaller widths (--widths)"
            ) from None
    rows, ref = [], None
    for (label, m), model in zip(entries, built, strict=False):
        r = profile(model, ds.input_shape, p, model_identity(m, ds.num_classes), log=print)
        ref = ref or r
        rows.append(profile_row(label, m.width, r, ref))
    print(table(rows, list(rows[0])))
    print(f"ratios against {entries[0][0]}; '!' marks a noisy latency (block spread > {p.max_cv:.0%})")
    return 0
