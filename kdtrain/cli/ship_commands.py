"""`kdtrain confirm`, `kdtrain export` and `kdtrain register`: from a finished study to a shipped student. The
trials are named by --trial or taken from the Pareto front (--pareto, above --min-gain); confirm retrains them
with new seeds, export writes ONNX and TorchScript files, register puts their logged models in the MLflow Model
Registry."""

from __future__ import annotations

from pathlib import Path

from kdtrain.sweep.console import Countdown, table


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
    from kdtrain.report import build, study_data
    from kdtrain.study import search
    from kdtrain.sweep import confirm, session
    from kdtrain.sweep.console import confirm_rows

    preflight.check_tracking(args.tracking_uri)
    preflight.storage(args.storage)
    trials = _chosen(search.load(args.study, args.storage), args)  # a missing study or trial: before any teacher
    ctx = session.join(args.study, args.storage, args.tracking_uri, log=print)
    total = confirm.confirm_plan(ctx.runs, trials, args.seeds)
    print(
        f"confirm: {len(trials)} trial(s) x {args.seeds} new seed(s): {total} training(s) to run (each seed "
        "distilled, and the no-teacher baseline of each seed not trained on this machine before)"
    )
    countdown = Countdown(total, "confirm")
    rows = confirm_rows(
        [confirm.confirm(ctx.runs, t, args.seeds, ctx.need, countdown.step, countdown.epoch) for t in trials]
    )
    print(table(rows, list(rows[0])))
    if not args.no_report:
        d = study_data.load(args.study, ctx.tracker.uri, args.storage)  # with the confirm runs just logged
        folder = build.write([d], args.out)[0]
        print("\n" + "\n".join(build.summary_lines(d)))  # the report's headline, as it now reads
        print(f"\nreport: {folder / 'index.html'} (with the confirmed trials)")
    return 0


def cmd_export(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.deploy.export import export_model, make_card, need_onnx
    from kdtrain.ship import registry
    from kdtrain.study import search
    from kdtrain.tracking.client import Tracker
    from kdtrain.tracking.params import trial_student

    need_onnx()
    preflight.check_tracking(args.tracking_uri)
    study = search.load(args.study, args.storage, preflight.storage(args.storage))
    tracker = Tracker(search.tracking_uri(study, args.tracking_uri))
    chosen = registry.above_floor(tracker, args.study, _chosen(study, args), args.min_gain if args.pareto else None)
    rows = []
    for t in chosen:
        cfg, ds, model = trial_student(tracker, t.user_attrs.get(search.T_RUN))
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
