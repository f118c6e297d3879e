"""The `kdtrain` command: pre-flight checks and what each subcommand does and prints (cmd_<name>; their
arguments are in kdtrain.cli.args).

The work itself lives elsewhere: kdtrain.sweep.worker runs trials, kdtrain.study.search is the Optuna side,
kdtrain.tracking.client the MLflow side, kdtrain.sweep.console the tables and progress bars.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kdtrain.cli.args import build_parser, duration, study_name_problem
from kdtrain.cli.layer_table import cmd_layers  # noqa: F401 - `kdtrain layers`, run by main() like the cmd_ below
from kdtrain.shared import available_cpus, available_memory_gb, plan_workers
from kdtrain.sweep.console import Countdown, EpochProgress, beside_bar, front_table, table, teacher_progress


def _load(args):
    from kdtrain.config import sweepfile
    from kdtrain.ship import study_teacher

    return _load_data(study_teacher.resolve(sweepfile.load(args.sweep, args.set)))  # teachers[].from_study


def _load_data(cfg):
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
    from kdtrain.sweep.worker import load_pool

    cfg, ds = _load(args)
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
    from kdtrain.sweep.worker import load_pool

    cfg, ds = _load(args)
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


def _preflight(args):
    """What can be checked before any work (sweep file, flags, storage, the study of that name, tracking server),
    so that a bad setting fails in seconds with nothing written. (config, storage | None, name, trials, timeout)"""
    from kdtrain.cli import preflight
    from kdtrain.config import sweepfile
    from kdtrain.errors import ConfigError, UsageError
    from kdtrain.ship import study_teacher
    from kdtrain.study import recovery, search
    from kdtrain.tracking.client import check_reachable

    cfg = study_teacher.resolve(sweepfile.load(args.sweep, args.set), args.storage, args.tracking_uri)
    if not cfg.search:
        raise ConfigError(
            [
                (
                    "search: the search space is empty; add a search: section, e.g. "
                    "kd.temperature: {type: float, low: 1, high: 20, log: true} "
                    "(kdtrain train runs the base settings alone)"
                )
            ],
            args.sweep,
        )
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {args.trials}): the study's total number of trials")
    timeout = (
        duration("--timeout", args.timeout)
        if args.timeout is not None
        else duration("study.timeout", cfg.study.timeout)
    )
    name = args.study or cfg.study.name  # --study is checked by its argparse type
    if not args.study and study_name_problem(name):
        raise ConfigError([f"study.name: {study_name_problem(name)}"], args.sweep)
    preflight.check_tracking(args.tracking_uri)
    storage = preflight.storage(args.storage, create=True)
    if storage is not None:
        if args.new_study:
            name = search.free_name(storage, name)
        study = search.check_study(cfg, storage, name)
        if study is not None:  # a lower target while another process runs the study: refused before any work
            recovery.retarget(study, args.trials or cfg.study.trials, _trials_source(args, cfg), check_only=True)
    check_reachable(args.tracking_uri)
    return cfg, storage, name, args.trials or cfg.study.trials, timeout


def _trials_source(args, cfg) -> str:
    return (
        f"--trials {args.trials}" if args.trials is not None else f"the sweep file's study.trials: {cfg.study.trials}"
    )


def cmd_sweep(args) -> int:
    from kdtrain.config import sweepfile
    from kdtrain.distill import teachers
    from kdtrain.paths import home, redact
    from kdtrain.study import recovery, search
    from kdtrain.sweep import processes, worker
    from kdtrain.tracking.client import Tracker, load_state_dict

    args.storage = args.storage or search.default_storage()
    cfg, storage, name, trials, timeout = _preflight(args)
    # the CPUs and GPUs split among the workers (this process the first), teachers trained with a worker's threads
    _, threads, envs = plan_workers(
        args.workers or 1, available_cpus(), processes.local_gpus(), cfg.train.threads, trials, available_memory_gb()
    )
    here = sweepfile.replace(cfg, {"train.threads": threads})  # the study keeps the file's own train.threads
    cfg, ds = _load_data(cfg)
    # every teacher file is read before any teacher trains (a bad one stops here); the teachers trained from scratch
    # that the first trial does not need train when a trial first needs them (all now for --workers 0)
    teachers.check_weights(here, ds, [t.name for t in cfg.teachers], load_state_dict)
    first = [t.name for t in cfg.teachers] if args.workers == 0 else worker.first_teachers(cfg)
    pool = worker.load_pool(here, ds, first, on_epoch=teacher_progress())
    for t in cfg.teachers:
        print(
            f"teacher {t.name}: "
            + (
                f"{'cached' if pool[t.name].cached else pool[t.name].source}, val_acc "
                f"{pool[t.name].val_accuracy:.4f}, {pool[t.name].params_text} params"
                if t.name in pool
                else "trained when a trial first needs it (the first trials draw among the teachers ready)"
            )
        )
    print("opening the study's stores; its parent and teacher runs go to MLflow (a few seconds the first time)")
    tracker = Tracker(args.tracking_uri)
    study = search.create_or_open(cfg, storage or search.open_storage(args.storage), name, trials)
    said = recovery.retarget(study, trials, _trials_source(args, cfg))
    if said:
        print(said)
    search.remember_tracking(study, tracker.uri)
    quiet = beside_bar if sys.stdout.isatty() else print  # trials' results: the bar says them
    ctx = worker.open_context(study, tracker, cfg, ds=ds, pool=pool, threads=threads, sweep_file=args.sweep, log=quiet)
    recovered = worker.recover(ctx)
    print(
        f"study {name}: {search.counts(study)['DONE']}/{trials} trials done"
        + (f", {len(recovered)} interrupted trial(s) failed and re-queued: {recovered}" if recovered else "")
        + f"\noptuna storage: {redact(args.storage)}\nmlflow: {redact(tracker.uri)}  experiment {ctx.exp_id}"
    )
    if args.workers == 0:
        env = f"KDTRAIN_STORAGE='{redact(args.storage)}' " if search.is_rdb(args.storage) else ""
        if search.A_TRACKING not in study.user_attrs:  # else the study knows its MLflow server
            env += f"MLFLOW_TRACKING_URI='{redact(tracker.uri)}' "
        print(
            f"\nstudy {name} is ready; start workers on any machine that reaches the stores:\n"
            f"  {env}kdtrain worker --study {name}\n"
            + ("(with the real password: kdtrain never prints it)" if "***" in env else "")
        )
        return 0
    deadline = time.time() + timeout if timeout else None
    failed, interrupted = processes.run_local(ctx, args.storage, trials, threads, envs, deadline, home() / "logs")
    return _finish_sweep(args, ctx, trials, failed, interrupted, deadline)


def _finish_sweep(
    args, ctx, trials: int, failed_logs: list[Path], interrupted: bool, deadline: float | None = None
) -> int:
    from kdtrain.study import search

    c = search.counts(ctx.study)
    done = c["DONE"]
    timed_out = done < trials and deadline is not None and time.time() >= deadline
    ctx.tracker.end(
        ctx.parent_id, "KILLED" if interrupted else ("FINISHED" if done >= trials or timed_out else "FAILED")
    )
    if timed_out and not interrupted:
        print(
            f"\nstopped at the time limit (--timeout / study.timeout): {done}/{trials} trials done. Run the "
            "same command again (with a new --timeout) to go on."
        )
    if interrupted:
        print(
            f"\nstopped: {done}/{trials} trials done; a trial that was running is marked failed and queued again. "
            f"Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    for log in failed_logs:
        tail = log.read_text().strip().splitlines()[-5:]
        print(f"{log.stem} exited with an error:\n  " + "\n  ".join(tail), file=sys.stderr)
    print()
    print(front_table(ctx.study))
    if not args.no_report and c["COMPLETE"]:
        from kdtrain.report import build

        folder = build.build([ctx.study.study_name], args.report_dir, ctx.tracker.uri, args.storage)[0]
        print(f"\nreport: {folder / 'index.html'} (also under the study's parent run in MLflow)")
    where = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    print(
        "\nbrowse the runs: "
        + (
            ctx.tracker.link(ctx.exp_id)
            or f"kdtrain ui {ctx.study.study_name}{where} (serves the "
            "store on 127.0.0.1, --port 5000 by default, and prints the link to its runs)"
        )
    )
    return 1 if failed_logs else 0


def cmd_report(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.errors import KdtrainError
    from kdtrain.report import build
    from kdtrain.study import search

    preflight.check_tracking(args.tracking_uri)
    storage = preflight.storage(args.storage) or search.existing_storage(args.storage)  # None: no journal yet
    studies = list(dict.fromkeys((args.studies or []) + (args.studies_opt or []))) or search.study_names(storage)
    if not studies:
        raise KdtrainError("no studies yet: run kdtrain sweep first")
    if not (args.studies or args.studies_opt) and len(studies) > 1:
        print(
            f"no study named: reporting every study in the store ({', '.join(studies)}), each alone, and "
            "comparing them all; name the studies to compare (kdtrain report A B)"
        )
    folders = build.build(
        studies, args.out, args.tracking_uri, args.storage, args.name, log_to_mlflow=not args.no_mlflow
    )
    for f in folders:
        print(f"report: {f / 'index.html'}")
    return 0


def cmd_worker(args) -> int:
    import os
    import socket

    from kdtrain.cli import preflight
    from kdtrain.paths import redact
    from kdtrain.study import search
    from kdtrain.sweep import worker

    log = lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True)  # noqa: E731
    wait_s = duration("--wait", args.wait)
    preflight.check_tracking(args.tracking_uri)
    if not wait_s:  # a waiting worker may start before its journal exists
        preflight.storage(args.storage)
    ctx = worker.join(args.study, args.storage, args.tracking_uri, args.threads, args.worker_index, wait_s, log)
    log(
        f"worker pid {os.getpid()} on {socket.gethostname()} joined study {args.study} "
        f"(optuna: {redact(args.storage or search.default_storage())}, mlflow: {redact(ctx.tracker.uri)})"
    )
    recovered = worker.recover(ctx)
    if recovered:
        log(f"interrupted trial(s) {recovered} failed and re-queued")
    worker.work(ctx, args.deadline)
    done = worker.finish(ctx)
    log(f"worker done: study {args.study} has {done}/{search.target(ctx.study, ctx.cfg)} trials")
    return 0


def cmd_status(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.study import search
    from kdtrain.sweep.console import status_lines

    storage = preflight.storage(args.storage) or search.existing_storage(args.storage)
    for name in [args.study] if args.study else search.study_names(storage):
        print("\n".join(status_lines(search.load(name, args.storage, storage))) + "\n")
    return 0


def cmd_schema(args) -> int:
    from kdtrain.schema import json_schema_text, markdown_reference

    print(markdown_reference() if args.markdown else json_schema_text(), end="")
    return 0


def cmd_ui(args) -> int:
    from kdtrain.ship import registry
    from kdtrain.tracking.client import default_uri

    return registry.mlflow_ui(args.tracking_uri or default_uri(), args.port, args.study)


def cmd_profile(args) -> int:
    import dataclasses

    from kdtrain.deploy.profile import model_identity, profile, width_ladder
    from kdtrain.distill import models, teachers
    from kdtrain.errors import KdtrainError
    from kdtrain.sweep.console import profile_row

    cfg, ds = _load(args)
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


def cmd_export(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.deploy.export import export_model, make_card, need_onnx
    from kdtrain.ship import registry
    from kdtrain.study import search
    from kdtrain.sweep import baselines
    from kdtrain.tracking.client import Tracker

    need_onnx()
    preflight.check_tracking(args.tracking_uri)
    study = search.load(args.study, args.storage, preflight.storage(args.storage))
    tracker = Tracker(search.tracking_uri(study, args.tracking_uri))
    chosen = registry.above_floor(tracker, args.study, _chosen(study, args), args.min_gain if args.pareto else None)
    rows = []
    for t in chosen:
        cfg, ds, model = baselines.trial_student(tracker, t.user_attrs.get(search.T_RUN))
        out = Path(args.out) / args.study / f"trial-{t.number}"
        export_model(
            model,
            ds.input_shape,
            out,
            ds.x_val[:64],
            make_card(cfg, ds, args.study, t.number, t.user_attrs.get(search.T_RUN), t.user_attrs),
        )
        rows.append(
            {
                "trial": t.number,
                "val_acc": f"{t.user_attrs.get('val_accuracy', float('nan')):.4f}",
                "params": f"{t.user_attrs.get('params', 0):,.0f}",
                "folder": str(out),
            }
        )
    print(table(rows, ["trial", "val_acc", "params", "folder"]))
    print(
        "each folder: model.onnx, model.ts (TorchScript), card.json; outputs checked against PyTorch "
        "(max abs diff <= 1e-4 on 64 validation samples)"
    )
    return 0


def _chosen(study, args) -> list:
    """The complete trials named by --trial, or the Pareto front (--pareto); one clear error otherwise."""
    from kdtrain.errors import KdtrainError
    from kdtrain.study import search

    done = {t.number: t for t in search.trials(study, "COMPLETE")}
    states = {t.number: t.state.name for t in study.trials}
    complete = f"(complete: {sorted(done)[:20]}{'...' if len(done) > 20 else ''})"
    unknown = [n for n in args.trial or [] if n not in states]
    if unknown:
        raise KdtrainError(
            f"no such trial in {study.study_name!r}: {', '.join(map(str, unknown))} (it has trials "
            f"0..{len(states) - 1}) {complete}"
        )
    missing = [f"{n} ({states[n]})" for n in args.trial or [] if n not in done]
    if missing:
        raise KdtrainError(f"trial(s) {', '.join(missing)} of {study.study_name!r} are not complete {complete}")
    chosen, reason = search.front_or_reason(study) if args.pareto else ([done[n] for n in args.trial], "")
    if not chosen:
        raise KdtrainError(reason or f"study {study.study_name!r} has no complete trial yet")
    return chosen


def cmd_confirm(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.report import build
    from kdtrain.study import search
    from kdtrain.sweep import baselines, worker
    from kdtrain.sweep.console import confirm_rows

    preflight.check_tracking(args.tracking_uri)
    preflight.storage(args.storage)
    trials = _chosen(search.load(args.study, args.storage), args)  # a missing study or trial: before any teacher
    ctx = worker.join(args.study, args.storage, args.tracking_uri, log=print)
    total = baselines.confirm_plan(ctx, trials, args.seeds)
    print(
        f"confirm: {len(trials)} trial(s) x {args.seeds} new seed(s): {total} training(s) to run (each seed "
        "distilled, and the no-teacher baseline of each seed not trained on this machine before)"
    )
    countdown = Countdown(total, "confirm")
    rows = confirm_rows([baselines.confirm(ctx, t, args.seeds, countdown.step, countdown.epoch) for t in trials])
    print(table(rows, list(rows[0])))
    if not args.no_report:
        folder = build.build([args.study], args.out, ctx.tracker.uri, args.storage)[0]
        head = (folder / "summary.md").read_text().split("\n## ", 1)[0]  # the report's headline, as it now reads
        print("\n" + "\n".join(line[2:] for line in head.splitlines() if line.startswith("- ")))
        print(f"\nreport: {folder / 'index.html'} (with the confirmed trials)")
    return 0


def cmd_register(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.ship import registry
    from kdtrain.study import search
    from kdtrain.tracking.client import Tracker, check_reachable

    preflight.check_tracking(args.tracking_uri)
    study = search.load(args.study, args.storage, preflight.storage(args.storage))
    uri = search.tracking_uri(study, args.tracking_uri)
    check_reachable(uri)
    tracker = Tracker(uri)
    chosen = registry.above_floor(tracker, args.study, _chosen(study, args), args.min_gain if args.pareto else None)
    rows, ranked_by = registry.register(tracker, args.study, chosen, args.name, args.alias)
    print(table(rows, ["trial", "val_acc", "confirmed_val_acc", "version", "model", "alias"]))
    if args.alias:
        print(f"\nalias {args.alias}: {ranked_by}")
        print(f"\nmodels:/{args.name}@{args.alias} loads with mlflow.pyfunc.load_model (torch alone, no kdtrain)")
    return 0


def cmd_dashboard(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.ship import registry

    preflight.storage(args.storage)
    return registry.dashboard(args.storage, args.study, args.port)


def main(argv: list[str] | None = None) -> int:
    import signal

    from kdtrain.errors import KdtrainError, Terminated

    args = build_parser().parse_args(argv)

    def terminated(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)  # what schedulers and `timeout` send: handled like Ctrl-C
    try:
        return globals()[f"cmd_{args.command}"](args)
    except KdtrainError as e:
        print(f"kdtrain: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"\nkdtrain: {'stopped by SIGTERM' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as e:  # a database that went away outside a trial (kdtrain status, a report): one line too
        from kdtrain.study.storage import lost_connection, unreachable

        if not lost_connection(e, context=False):
            raise
        print(f"kdtrain: error: {unreachable(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
