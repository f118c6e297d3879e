"""The `kdtrain` command."""

from __future__ import annotations

import argparse
import sys
import time

from kdtrain import __version__


def _table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    fmt = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


class EpochProgress:
    """Per-epoch progress: a live line on a terminal, a line every ~10% of epochs otherwise."""

    def __init__(self, label: str, stream=sys.stdout):
        self.label, self.stream = label, stream
        self.tty = stream.isatty()

    def __call__(self, s) -> None:
        text = (f"{self.label} epoch {s.epoch:>3}/{s.epochs}  loss {s.train_loss:.4f} "
                f"(kd {s.kd_loss:.4f}, ce {s.ce_loss:.4f})  val_acc {s.val_accuracy:.4f}  {s.seconds:.2f}s/epoch")
        if self.tty:
            end = "\n" if s.epoch == s.epochs else ""
            self.stream.write("\r\033[K" + text + end)
            self.stream.flush()
        elif s.epoch == 1 or s.epoch == s.epochs or s.epoch % max(1, s.epochs // 10) == 0:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)


def _load(args):
    from kdtrain import config, data

    cfg = config.load(args.sweep, args.set)
    t0 = time.perf_counter()
    ds = data.load(cfg.data)
    print(f"data {cfg.data.name}: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test, "
          f"input {tuple(ds.input_shape)}, {ds.num_classes} classes ({time.perf_counter() - t0:.1f}s)")
    return cfg, ds


def cmd_teachers(args) -> int:
    from kdtrain.teachers import load_pool

    cfg, ds = _load(args)
    if not cfg.teachers:
        print("the sweep file defines no teachers (add a teachers: list)")
        return 0
    pool = load_pool(cfg, ds, on_epoch=lambda name, s: EpochProgress(f"teacher {name}")(s))
    rows = [{"name": t.name, "arch": t.config.arch, "width": t.config.width, "params": f"{t.params:,}",
             "val_acc": f"{t.val_accuracy:.4f}", "test_acc": f"{t.test_accuracy:.4f}",
             "status": "cached" if t.cached else t.source, "seconds": f"{t.seconds:.1f}"} for t in pool.values()]
    print()
    print(_table(rows, ["name", "arch", "width", "params", "val_acc", "test_acc", "status", "seconds"]))
    made = [t.name for t in pool.values() if not t.cached]
    if made:
        print(f"\n{len(made)} of {len(pool)} teachers trained or loaded now ({', '.join(made)}); "
              f"cached under {next(iter(pool.values())).path.parent}")
    else:
        print(f"\nall {len(pool)} teachers came from the cache: nothing trained")
    return 0


def cmd_train(args) -> int:
    from kdtrain import models
    from kdtrain.run import distill_student
    from kdtrain.teachers import load_pool

    cfg, ds = _load(args)
    names = cfg.kd_teachers if cfg.kd.alpha > 0 else []
    pool = load_pool(cfg, ds, names, on_epoch=lambda name, s: EpochProgress(f"teacher {name}")(s))
    for t in pool.values():
        print(f"teacher {t.name}: {'cached' if t.cached else t.source}, val_acc {t.val_accuracy:.4f}")
    what = (f"T={cfg.kd.temperature:g}, alpha={cfg.kd.alpha:g}, teachers={'+'.join(names)} ({cfg.kd.ensemble})"
            if names else "no teacher (alpha=0)")
    print(f"student {cfg.student.arch} width {cfg.student.width}: distilling with {what}")
    result = distill_student(cfg, ds, pool, on_epoch=EpochProgress("student"))
    params = models.count_params(result.model)
    rows = [{"model": f"student ({cfg.student.arch}, width {cfg.student.width})", "params": f"{params:,}",
             "val_acc": f"{result.val_accuracy:.4f}", "test_acc": f"{result.test_accuracy:.4f}", "x smaller": "1.0"}]
    for t in pool.values():
        rows.append({"model": f"teacher {t.name} ({t.config.arch}, width {t.config.width})",
                     "params": f"{t.params:,}", "val_acc": f"{t.val_accuracy:.4f}",
                     "test_acc": f"{t.test_accuracy:.4f}", "x smaller": f"{t.params / params:.1f}"})
    print()
    print(_table(rows, ["model", "params", "val_acc", "test_acc", "x smaller"]))
    print(f"\nstudent trained in {result.seconds:.1f}s on {result.device}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdtrain", description="Knowledge-distillation sweeps: Optuna search, "
                                "MLflow tracking, accuracy-vs-size reports.")
    p.add_argument("--version", action="version", version=f"kdtrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_sweep(name: str, help_: str):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting by its dotted key, e.g. --set kd.alpha=0.5 (repeatable)")
        return sp

    with_sweep("teachers", "train or load the sweep's teacher pool (cached) and print a table").set_defaults(
        func=cmd_teachers)
    with_sweep("train", "distil one student with the sweep file's base settings").set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    from kdtrain.config import KdtrainError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KdtrainError as e:
        print(f"kdtrain: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nkdtrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
