"""`kdtrain sweep` and `kdtrain worker`: running a study. The sweep's pre-flight checks (everything that can fail
before any work), its workers (this process and local worker processes) and its closing words; a worker joining a
study from any machine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kdtrain.cli.args import duration, study_name_problem
from kdtrain.cli.train_commands import load_data
from kdtrain.shared import available_cpus, available_memory_gb, plan_workers
from kdtrain.sweep.console import beside_bar, front_table, teacher_progress


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


def _say_teachers(cfg, pool: dict) -> None:
    """One line per teacher: where it came from and how good it is, or that a trial trains it when it needs it."""
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


def _say_ready(storage: str, study, tracking_uri: str) -> None:
    """--workers 0: the study is made; the command that starts a worker elsewhere, without the password."""
    from kdtrain.paths import redact
    from kdtrain.study import search

    env = f"KDTRAIN_STORAGE='{redact(storage)}' " if search.is_rdb(storage) else ""
    if search.A_TRACKING not in study.user_attrs:  # else the study knows its MLflow server
        env += f"MLFLOW_TRACKING_URI='{redact(tracking_uri)}' "
    print(
        f"\nstudy {study.study_name} is ready; start workers on any machine that reaches the stores:\n"
        f"  {env}kdtrain worker --study {study.study_name}\n"
        + ("(with the real password: kdtrain never prints it)" if "***" in env else "")
    )


def cmd_sweep(args) -> int:
    from kdtrain.config import sweepfile
    from kdtrain.distill import teachers
    from kdtrain.paths import home, redact
    from kdtrain.study import recovery, search
    from kdtrain.sweep import processes, session, worker
    from kdtrain.tracking.client import Tracker, load_state_dict

    args.storage = args.storage or search.default_storage()
    cfg, storage, name, trials, timeout = _preflight(args)
    # the CPUs and GPUs split among the workers (this process the first), teachers trained with a worker's threads
    _, threads, envs = plan_workers(
        args.workers or 1, available_cpus(), processes.local_gpus(), cfg.train.threads, trials, available_memory_gb()
    )
    here = sweepfile.replace(cfg, {"train.threads": threads})  # the study keeps the file's own train.threads
    cfg, ds = load_data(cfg)
    # every teacher file is read before any teacher trains (a bad one stops here); the teachers trained from scratch
    # that the first trial does not need train when a trial first needs them (all now for --workers 0)
    teachers.check_weights(here, ds, [t.name for t in cfg.teachers], load_state_dict)
    first = [t.name for t in cfg.teachers] if args.workers == 0 else session.first_teachers(cfg)
    pool = session.load_pool(here, ds, first, on_epoch=teacher_progress())
    _say_teachers(cfg, pool)
    print("opening the study's stores; its parent and teacher runs go to MLflow (a few seconds the first time)")
    tracker = Tracker(args.tracking_uri)
    study = search.create_or_open(cfg, storage or search.open_storage(args.storage), name, trials)
    said = recovery.retarget(study, trials, _trials_source(args, cfg))
    if said:
        print(said)
    search.remember_tracking(study, tracker.uri)
    quiet = beside_bar if sys.stdout.isatty() else print  # trials' results: the bar says them
    ctx = session.open_context(study, tracker, cfg, ds=ds, pool=pool, threads=threads, sweep_file=args.sweep, log=quiet)
    recovered = worker.recover(ctx)
    print(
        f"study {name}: {search.counts(study)['DONE']}/{trials} trials done"
        + (f", {len(recovered)} interrupted trial(s) failed and re-queued: {recovered}" if recovered else "")
        + f"\noptuna storage: {redact(args.storage)}\nmlflow: {redact(tracker.uri)}  experiment {ctx.exp_id}"
    )
    if args.workers == 0:
        _say_ready(args.storage, study, tracker.uri)
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


def cmd_worker(args) -> int:
    import os
    import socket

    from kdtrain.cli import preflight
    from kdtrain.paths import redact
    from kdtrain.study import search
    from kdtrain.sweep import session, worker

    log = lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True)  # noqa: E731
    wait_s = duration("--wait", args.wait)
    preflight.check_tracking(args.tracking_uri)
    if not wait_s:  # a waiting worker may start before its journal exists
        preflight.storage(args.storage)
    ctx = session.join(args.study, args.storage, args.tracking_uri, args.threads, args.worker_index, wait_s, log)
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
