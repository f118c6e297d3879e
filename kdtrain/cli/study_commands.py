"""`kdtrain report`, `kdtrain status`, `kdtrain ui`, `kdtrain dashboard` and `kdtrain schema`: reading a study
(its report, its progress, its runs in the MLflow UI, its trials in optuna-dashboard) and the sweep file's keys."""

from __future__ import annotations


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


def cmd_status(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.study import search
    from kdtrain.sweep.console import status_lines

    storage = preflight.storage(args.storage) or search.existing_storage(args.storage)
    for name in [args.study] if args.study else search.study_names(storage):
        print("\n".join(status_lines(search.load(name, args.storage, storage))) + "\n")
    return 0


def cmd_ui(args) -> int:
    from kdtrain.ship import registry
    from kdtrain.tracking.client import default_uri

    return registry.mlflow_ui(args.tracking_uri or default_uri(), args.port, args.study)


def cmd_dashboard(args) -> int:
    from kdtrain.cli import preflight
    from kdtrain.ship import registry

    preflight.storage(args.storage)
    return registry.dashboard(args.storage, args.study, args.port)


def cmd_schema(args) -> int:
    from kdtrain.schema_docs import json_schema_text, markdown_reference

    print(markdown_reference() if args.markdown else json_schema_text(), end="")
    return 0
