"""The `kdtrain` command."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

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


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class SweepProgress:
    """Trials done / running / pruned / failed, best so far, elapsed, ETA.

    A live line on a terminal; plain timestamped lines (one per change) otherwise."""

    def __init__(self, study_name: str, storage_url: str, target: int, objectives: dict, stream=sys.stdout):
        self.study_name, self.storage_url, self.target, self.objectives = study_name, storage_url, target, objectives
        self.stream, self.tty = stream, stream.isatty()
        self.start, self.last, self.printed = time.time(), None, 0.0
        self.done0 = None
        self.storage = None

    def line(self) -> str:
        import optuna

        from kdtrain.search import counts, open_storage

        if self.storage is None:  # opened once: an RDB storage holds a connection pool
            self.storage = open_storage(self.storage_url)
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        c = counts(study)
        done = c["COMPLETE"] + c["PRUNED"]
        if self.done0 is None:
            self.done0 = done
        metric, direction = next(iter(self.objectives.items()))
        vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        best = (max(vals) if direction == "maximize" else min(vals)) if vals else None
        elapsed = time.time() - self.start
        new = done - self.done0
        eta = _fmt_seconds(elapsed / new * max(0, self.target - done)) if new > 0 else "?"
        best_text = f"best {metric} {best:.4f}" if best is not None else f"best {metric} -"
        state = (f"trials {done}/{self.target} (complete {c['COMPLETE']}, pruned {c['PRUNED']}, "
                 f"failed {c['FAIL']}, running {c['RUNNING']})  {best_text}")
        return state, f"{state}  elapsed {_fmt_seconds(elapsed)}  ETA {eta}"

    def update(self, final: bool = False) -> None:
        try:
            state, text = self.line()
        except Exception:  # a read racing a writer: try again on the next tick
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self.stream.flush()
        elif state != self.last or final or time.time() - self.printed > 300:
            # a log file gets a line per change (and one every 5 minutes while a long trial runs)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=self.stream, flush=True)
            self.printed = time.time()
        self.last = state


def _monitor(progress: SweepProgress, stop, every: float = 2.0) -> None:
    while not stop.wait(every):
        progress.update()


def cmd_sweep(args) -> int:
    import os
    import subprocess
    import threading

    from kdtrain import config, data, search
    from kdtrain.config import ConfigError, KdtrainError, parse_duration, redact
    from kdtrain.teachers import load_pool
    from kdtrain.tracking import Tracker, check_reachable

    cfg = config.load(args.sweep, args.set)
    if not cfg.search:
        raise ConfigError(["search: the search space is empty; add a search: section, e.g. "
                           "kd.temperature: {type: float, low: 1, high: 20, log: true} "
                           "(kdtrain train runs the base settings alone)"], args.sweep)
    if args.workers < 0:
        raise KdtrainError("--workers must be >= 0 (0: create the study and let kdtrain worker run it)")
    if args.trials is not None and args.trials < 1:
        raise KdtrainError("--trials must be >= 1")
    try:
        timeout = parse_duration(args.timeout or cfg.study.timeout) if (args.timeout or cfg.study.timeout) else None
    except ValueError as e:
        raise KdtrainError(f"--timeout: {e}") from None
    storage_url = args.storage or search.default_storage()
    name = args.study or cfg.study.name
    trials = args.trials or cfg.study.trials

    # Reach the stores and check the study before any work: a wrong URL, a wrong password or a changed search
    # space fails in seconds, not after the teachers have trained, and nothing is written until then.
    storage = None
    if search.is_rdb(storage_url) or Path(storage_url).expanduser().exists():
        storage = search.open_storage(storage_url)
        if args.new_study:
            name = search.free_name(storage, name)
        search.check_study(cfg, storage, name)
    check_reachable(args.tracking_uri)
    ds = data.load(cfg.data)
    # load_pool reads every teacher checkpoint before training any: a bad one stops here, nothing trained
    pool = load_pool(cfg, ds, on_epoch=lambda n, s: EpochProgress(f"teacher {n}")(s))
    for t in pool.values():
        print(f"teacher {t.name}: {'cached' if t.cached else t.source}, val_acc {t.val_accuracy:.4f}, "
              f"{t.params:,} params")

    storage = storage or search.open_storage(storage_url)
    tracker = Tracker(args.tracking_uri)
    study = search.create_or_open(cfg, storage, name, trials)
    search.remember_tracking(study, tracker.uri)
    exp_id = tracker.experiment(name)
    parent = search.ensure_parent(tracker, exp_id, study, cfg, args.sweep)
    recovered = search.recover(study, tracker)
    c = search.counts(study)
    print(f"study {name}: {c['COMPLETE'] + c['PRUNED']}/{trials} trials done"
          + (f", {len(recovered)} interrupted trial(s) failed and re-queued: {recovered}" if recovered else ""))
    print(f"optuna storage: {redact(storage_url)}")
    print(f"mlflow: {redact(tracker.uri)}  experiment {exp_id}")
    if args.workers == 0:
        search.ensure_teacher_runs(search.Context(study, cfg, ds, pool, tracker, exp_id, parent, print))
        env = f"KDTRAIN_STORAGE='{redact(storage_url)}' " if search.is_rdb(storage_url) else ""
        if search.A_TRACKING not in study.user_attrs:  # else the study knows its MLflow server
            env += f"MLFLOW_TRACKING_URI='{redact(tracker.uri)}' "
        print(f"\nstudy {name} is ready; start workers on any machine that reaches the stores:\n"
              f"  {env}kdtrain worker --study {name}\n"
              + ("(with the real password: kdtrain never prints it)" if "***" in env else ""))
        return 0

    cores = os.cpu_count() or 1
    threads = cfg.train.threads or max(1, cores // args.workers)
    deadline = time.time() + timeout if timeout else None
    progress = SweepProgress(name, storage_url, trials, cfg.study.objectives)
    stop = threading.Event()
    interrupted = False
    logs = config.home() / "logs"
    procs = []
    try:
        if args.workers == 1:
            tcfg = config.replace(cfg, {"train.threads": threads})
            study.sampler, study.pruner = search.make_sampler(tcfg), search.make_pruner(tcfg)
            ctx = search.Context(study, tcfg, ds, pool, tracker, exp_id, parent,
                                 log=(lambda s: None) if sys.stdout.isatty() else print)
            search.ensure_teacher_runs(ctx)
            threading.Thread(target=_monitor, args=(progress, stop), daemon=True).start()
            search.work(ctx, deadline)
        else:
            search.ensure_teacher_runs(search.Context(study, cfg, ds, pool, tracker, exp_id, parent, print))
            logs.mkdir(parents=True, exist_ok=True)
            for i in range(args.workers):
                # the stores travel in the environment, not on the command line where ps would show a password
                cmd = [sys.executable, "-m", "kdtrain.cli", "worker", "--study", name, "--threads", str(threads)]
                if deadline:
                    cmd += ["--deadline", str(deadline)]
                env = {**os.environ, "KDTRAIN_STORAGE": storage_url, "MLFLOW_TRACKING_URI": tracker.uri}
                fh = open(logs / f"{name}-worker{i}.log", "a")
                procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), fh, i))
            print(f"{args.workers} workers, {threads} CPU thread(s) each; logs in {logs}")
            while any(p.poll() is None for p, _, _ in procs):
                progress.update()
                time.sleep(2)
    except KeyboardInterrupt:
        interrupted = True
        for p, _, _ in procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=60)
    finally:
        stop.set()
        for p, fh, _ in procs:
            fh.close()
    progress.update(final=True)
    failed_workers = [i for p, _, i in procs if p.returncode not in (0, None)]
    c = search.counts(study)
    done = c["COMPLETE"] + c["PRUNED"]
    tracker.end(parent, "KILLED" if interrupted else ("FINISHED" if done >= trials else "FAILED"))
    if interrupted:
        print(f"\nstopped: {done}/{trials} trials done; the running trial was marked failed and re-queued. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 130
    for i in failed_workers:
        tail = (logs / f"{name}-worker{i}.log").read_text().strip().splitlines()[-5:]
        print(f"worker {i} exited with an error:\n  " + "\n  ".join(tail), file=sys.stderr)
    print()
    print(_front_table(study))
    if not args.no_report and c["COMPLETE"]:
        from kdtrain import report

        folder = report.build([name], args.report_dir, tracker.uri, storage_url)[0]
        print(f"\nreport: {folder / 'index.html'} (also under the study's parent run in MLflow)")
    print(f"\nbrowse the runs: kdtrain ui  ->  {tracker.link(exp_id)}")
    return 1 if failed_workers else 0


def cmd_report(args) -> int:
    from kdtrain import report, search
    from kdtrain.config import KdtrainError

    studies = args.studies
    if not studies:
        import optuna

        studies = [s.study_name for s in optuna.get_all_study_summaries(search.existing_storage(args.storage), False)]
        if not studies:
            raise KdtrainError("no studies yet: run kdtrain sweep first")
    folders = report.build(studies, args.out, args.tracking_uri, args.storage, args.name,
                           log_to_mlflow=not args.no_mlflow)
    for f in folders:
        print(f"report: {f / 'index.html'}")
    return 0


def _front_table(study) -> str:
    from kdtrain.search import pareto

    names = study.user_attrs.get("kdtrain.objectives", [f"value{i}" for i in range(len(study.directions))])
    rows = []
    for t in sorted(pareto(study), key=lambda t: t.values):
        row = {"trial": t.number}
        row.update({n: f"{v:.4g}" for n, v in zip(names, t.values)})
        row.update({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in t.params.items()})
        rows.append(row)
    if not rows:
        return "no complete trials yet"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return f"pareto front of {study.study_name} ({len(rows)} trials):\n" + _table(rows, cols)


def cmd_worker(args) -> int:
    import os
    import socket

    from kdtrain import search
    from kdtrain.config import redact

    log = lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True)  # noqa: E731
    ctx = search.open_context(args.study, args.storage, args.tracking_uri, args.threads, log=log)
    log(f"worker pid {os.getpid()} on {socket.gethostname()} joined study {args.study} "
        f"(optuna: {redact(args.storage or search.default_storage())}, mlflow: {redact(ctx.tracker.uri)})")
    recovered = search.recover(ctx.study, ctx.tracker)
    if recovered:
        log(f"interrupted trial(s) {recovered} failed and re-queued")
    search.work(ctx, args.deadline)
    c = search.counts(ctx.study)
    target = ctx.study.user_attrs.get(search.A_TRIALS, ctx.cfg.study.trials)
    if c["COMPLETE"] + c["PRUNED"] >= target:
        ctx.tracker.end(ctx.parent_id, "FINISHED")  # the study is complete, whoever started it
    log(f"worker done: study {args.study} has {c['COMPLETE'] + c['PRUNED']}/{target} trials")
    return 0


def cmd_status(args) -> int:
    import datetime

    import optuna

    from kdtrain import search

    storage = search.existing_storage(args.storage)
    names = [args.study] if args.study else \
        [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    for name in names:
        study = search.load(name, args.storage, storage)
        c = search.counts(study)
        target = study.user_attrs.get(search.A_TRIALS, "?")
        print(f"study {name}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
              f"{c['RUNNING']} running, {c['WAITING']} waiting (target {target})")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            age = _fmt_seconds((datetime.datetime.now() - t.datetime_start).total_seconds()) \
                if t.datetime_start else "?"
            print(f"  trial {t.number} running for {age} on {t.user_attrs.get('kdtrain.host', '?')} "
                  f"(pid {t.user_attrs.get('kdtrain.pid', '?')})")
        print(_front_table(study))
        print()
    return 0


def cmd_ui(args) -> int:
    import os
    import subprocess

    from kdtrain.config import redact
    from kdtrain.tracking import default_uri

    uri = args.tracking_uri or default_uri()
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI for {redact(uri)} at {url}/#/experiments  (Ctrl-C to stop)")
    print(f"each study opens in the runs view: {url}/#/experiments/<id>/runs?workflowType=machine_learning")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port)]
    try:
        return subprocess.call(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    except KeyboardInterrupt:
        return 0


def _ladder(cfg) -> list[int]:
    """Student widths to profile: powers of two across the searched range (or around the base width)."""
    spec = cfg.search.get("student.width")
    if spec and spec.get("type") == "int":
        low, high = spec["low"], spec["high"]
    else:
        low, high = max(1, cfg.student.width // 4), cfg.student.width * 4
    widths, w = {low, high, cfg.student.width}, 1
    while w <= high:
        if w >= low:
            widths.add(w)
        w *= 2
    return sorted(widths)


def cmd_profile(args) -> int:
    import dataclasses

    from kdtrain import models
    from kdtrain.profile import model_identity, profile

    cfg, ds = _load(args)
    p = cfg.profile
    print(f"latency: batch 1, {p.threads} thread(s), {p.device}, {p.backend}; throughput: batch "
          f"{p.throughput_batch}; FLOPs per sample (a multiply-add counts 2)")
    entries = [(f"teacher {t.name}", t) for t in cfg.teachers]
    widths = [int(w) for w in args.widths.split(",")] if args.widths else _ladder(cfg)
    entries += [(f"student {cfg.student.arch}", dataclasses.replace(cfg.student, width=w)) for w in widths]
    rows, ref = [], None
    for label, m in entries:
        # cost does not depend on the weights, so untrained models are measured
        model = models.from_config(dataclasses.replace(m, **({"pretrained": False} if hasattr(m, "pretrained") else {})),
                                   ds.input_shape, ds.num_classes)
        r = profile(model, ds.input_shape, p, model_identity(m, ds.num_classes), log=print)
        ref = ref or r
        rows.append({"model": label, "width": m.width, "params": f"{r['params']:,}",
                     "size_kB": f"{r['size_bytes'] / 1024:.1f}", "flops": f"{r['flops']:,}",
                     "p50_ms": f"{r['latency_ms_p50']:.4f}", "p95_ms": f"{r['latency_ms_p95']:.4f}",
                     "cv": f"{r['latency_cv']:.0%}" + ("!" if r["latency_noisy"] else ""),
                     "samples/s": f"{r['throughput']:,.0f}",
                     "x smaller": f"{ref['params'] / r['params']:.1f}",
                     "x faster b1": f"{ref['latency_ms_p50'] / r['latency_ms_p50']:.2f}",
                     "x thrpt": f"{r['throughput'] / ref['throughput']:.2f}"})
    print(_table(rows, list(rows[0])))
    print(f"ratios against {entries[0][0]}; '!' marks a noisy latency (block spread > {p.max_cv:.0%})")
    return 0


def cmd_export(args) -> int:
    import tempfile

    import optuna
    import torch
    import yaml

    from kdtrain import config, data, models, search
    from kdtrain.config import KdtrainError
    from kdtrain.export import export_model, need_onnx
    from kdtrain.tracking import Tracker

    need_onnx()
    study = search.load(args.study, args.storage)
    done = {t.number: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    if args.pareto:
        chosen = search.pareto(study)
    else:
        missing = [n for n in args.trial if n not in done]
        if missing:
            raise KdtrainError(f"trial(s) {missing} of {args.study!r} are not complete "
                               f"(complete: {sorted(done)[:20]}{'...' if len(done) > 20 else ''})")
        chosen = [done[n] for n in args.trial]
    if not chosen:
        raise KdtrainError(f"study {args.study!r} has no complete trial to export")
    tracker = Tracker(search.tracking_uri(study, args.tracking_uri))
    rows = []
    for t in chosen:
        run_id = t.user_attrs.get("mlflow_run_id")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                folder = tracker.client.download_artifacts(run_id, "", tmp)
            except Exception as e:
                raise KdtrainError(f"trial {t.number}: cannot read its MLflow run {run_id} ({str(e)[:200]}); "
                                   "pass the --tracking-uri the sweep used") from None
            cfg = config.from_dict(yaml.safe_load(open(f"{folder}/config.yaml")))
            state = torch.load(f"{folder}/model.pt", map_location="cpu", weights_only=True)
        ds = data.load(cfg.data)
        model = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
        model.load_state_dict(state)
        card = {
            "study": args.study, "trial": t.number, "mlflow_run_id": run_id,
            "student": {"arch": cfg.student.arch, "width": cfg.student.width, "depth": cfg.student.depth},
            "distillation": {"temperature": cfg.kd.temperature, "alpha": cfg.kd.alpha,
                             "teachers": cfg.kd_teachers, "ensemble": cfg.kd.ensemble},
            "metrics": {k: t.user_attrs.get(k) for k in config.METRICS},
            "latency_measured": {"batch": 1, "backend": cfg.profile.backend, "threads": cfg.profile.threads,
                                 "device": cfg.profile.device},
            "preprocessing": {"input_shape": list(ds.input_shape), "dataset": cfg.data.name,
                              "scale": ds.scale, "mean": ds.mean, "std": ds.std,
                              "formula": "x = (raw * scale - mean[c]) / std[c], per channel c; batch first"},
            "classes": ds.class_names,
        }
        out = Path(args.out) / args.study / f"trial-{t.number}"
        export_model(model, ds.input_shape, out, ds.x_val[:64], card)
        rows.append({"trial": t.number, "val_acc": f"{t.user_attrs.get('val_accuracy', float('nan')):.4f}",
                     "params": f"{t.user_attrs.get('params', 0):,.0f}", "folder": str(out)})
    print(_table(rows, ["trial", "val_acc", "params", "folder"]))
    print("each folder: model.onnx, model.ts (TorchScript), card.json; outputs checked against PyTorch "
          "(max abs diff <= 1e-4 on 64 validation samples)")
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

    sp = with_sweep("sweep", "run an Optuna study over the sweep's search space; every trial a run in MLflow")
    sp.add_argument("--trials", type=int, help="trials for the study (default: study.trials)")
    sp.add_argument("--timeout", help="stop starting trials after this long, e.g. 8h, 30m (default: study.timeout)")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine (CPU threads split); 0 creates the study and its runs "
                    "and exits, for workers started elsewhere with kdtrain worker")
    sp.add_argument("--study", help="study name (default: study.name)")
    sp.add_argument("--new-study", action="store_true",
                    help="start a fresh study (NAME-v2, -v3, ...) when NAME exists with other settings")
    sp.add_argument("--storage", help="Optuna storage: a journal file or an RDB URL such as postgresql://... "
                    "(default $KDTRAIN_STORAGE, else mlruns/optuna.journal)")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    sp.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    sp.add_argument("--report-dir", default="reports", help="where the report goes (default: reports/)")
    sp.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="Pareto plots and comparison reports (HTML, Markdown, CSV) of studies")
    rp.add_argument("studies", nargs="*", metavar="STUDY", help="study names (default: every study)")
    rp.add_argument("--out", default="reports", help="output folder (default: reports/)")
    rp.add_argument("--name", help="folder name of a comparison report (default: compare-A-vs-B)")
    rp.add_argument("--storage")
    rp.add_argument("--tracking-uri")
    rp.add_argument("--no-mlflow", action="store_true", help="do not log the report to the parent runs")
    rp.set_defaults(func=cmd_report)

    wp = sub.add_parser("worker", help="join an existing study (the sweep config is read from the study)")
    wp.add_argument("--study", required=True)
    wp.add_argument("--storage", help="Optuna storage of the study (default $KDTRAIN_STORAGE, else "
                    "mlruns/optuna.journal)")
    wp.add_argument("--tracking-uri", help="MLflow tracking URI")
    wp.add_argument("--threads", type=int, help="CPU threads for training")
    wp.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    wp.set_defaults(func=cmd_worker)

    st = sub.add_parser("status", help="each study's trial counts and current Pareto front")
    st.add_argument("--study")
    st.add_argument("--storage")
    st.set_defaults(func=cmd_status)

    pp = with_sweep("profile", "params, size, FLOPs, latency and throughput of the teachers and a ladder of "
                    "student widths")
    pp.add_argument("--widths", help="comma-separated student widths (default: powers of two over the search range)")
    pp.set_defaults(func=cmd_profile)

    ep = sub.add_parser("export", help="export trials of a study to ONNX and TorchScript with a JSON card")
    ep.add_argument("--study", required=True)
    which = ep.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, nargs="+", help="trial number(s)")
    which.add_argument("--pareto", action="store_true", help="every trial on the study's Pareto front")
    ep.add_argument("--out", default="exports", help="output folder (default: exports/)")
    ep.add_argument("--storage")
    ep.add_argument("--tracking-uri")
    ep.set_defaults(func=cmd_export)

    up = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the local store")
    up.add_argument("--port", type=int, default=5000)
    up.add_argument("--tracking-uri")
    up.set_defaults(func=cmd_ui)
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
