"""The `kdtrain` command line: every subcommand's arguments (kdtrain.cli runs them)."""

from __future__ import annotations

import argparse
import os
import sys

from kdtrain import __version__


class _Parser(argparse.ArgumentParser):
    """Sub-commands that read a sweep file list the registries' allowed values under --help, filled in only when
    help is shown (the registries import torch)."""

    def format_help(self) -> str:
        if getattr(self, "registries", False) and self.epilog is None:
            from kdtrain.config.validate import allowed_values

            self.epilog = "allowed values:\n" + "\n".join(f"  {k}: {', '.join(v)}" for k, v in allowed_values().items())
        return super().format_help()

    def parse_known_args(self, args=None, namespace=None):
        """The study of a command is named as STUDY or as --study STUDY, alike for every command that takes one."""
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(self, "top", False) and hasattr(ns, "study_opt"):
            pos, opt = ns.study, ns.study_opt
            if pos and opt and pos != opt:
                self.error(f"{ns.command}: the study is named twice, {pos!r} and --study {opt!r}; name it once")
            ns.study = pos or opt
            if ns.study is None and ns.study_required:
                self.error(f"{ns.command}: name the study: kdtrain {ns.command} STUDY (or --study STUDY)")
            del ns.study_opt, ns.study_required
        return ns, rest

    def error(self, message: str):
        """A bad flag ends like every other bad input: one `kdtrain: error:` line (exit code 2), after the usage."""
        self.print_usage(sys.stderr)
        self.exit(2, f"kdtrain: error: {message} (see {self.prog} --help)\n")


def duration(flag: str, text: str | None) -> float | None:
    """A duration flag (8h, 30m, 90s) in seconds, None when not given; one clear error naming the flag."""
    from kdtrain.errors import KdtrainError
    from kdtrain.schema import parse_duration

    try:
        return parse_duration(text) if text is not None else None  # "" (an unset variable) is an error, not None
    except ValueError as e:
        raise KdtrainError(f"{flag}: {e}") from None


def study_name_problem(name: str) -> str | None:
    """What is wrong with a study name, or None: the name becomes an MLflow experiment, a folder of artifacts and
    one of reports, so it must be one folder name."""
    if not name.strip():
        return "must not be empty"
    if "/" in name or name in (".", ".."):
        return f"must be one folder name (no '/', not . or ..), got {name!r}"
    if not name.isprintable():
        return f"must not contain control characters, got {name!r}"
    if len(name.encode()) > 255:
        return f"must be at most 255 bytes (a folder name), got {len(name.encode())}"
    if "'" in name and '"' in name:  # MLflow's search matches a value in ' or " quotes, without escapes
        return f"must not hold both ' and \" (MLflow's search cannot match such a name), got {name!r}"
    return None


def _study(text: str) -> str:
    problem = study_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _text(text: str) -> str:
    """A name, path or URL: not empty (an unset shell variable), no control characters."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"must not contain control characters, got {text!r}")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _command(sub, name: str, help_: str):
    """A subcommand whose --help opens with what it does."""
    return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")


def _study_arg(sp, required: bool = True, what: str = "the study's name") -> None:
    """STUDY as an argument, --study STUDY as its alias (every command takes both)."""
    sp.add_argument("study", nargs="?", type=_study, metavar="STUDY", help=f"{what} (or --study STUDY)")
    sp.add_argument("--study", dest="study_opt", type=_study, metavar="STUDY", help="the same as the STUDY argument")
    sp.set_defaults(study_required=required)


def _choose(sp) -> None:
    """Which trials a command acts on: --trial N ... or --pareto (one of them)."""
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--trial", type=int, nargs="+", action="extend", help="trial number(s): --trial 3 7, or --trial 3 --trial 7"
    )
    which.add_argument("--pareto", action="store_true", help="every trial on the study's Pareto front")


def _floor(sp) -> None:
    """--min-gain: which front students --pareto leaves out (below the no-teacher baseline of their width)."""
    sp.add_argument(
        "--min-gain",
        type=_min_gain,
        default=0.0,
        metavar="POINTS",
        help="with --pareto, leave out students whose test gain over the no-teacher baseline of their "
        "width (kdtrain confirm's paired gain where it ran) is below POINTS (default 0: students a "
        "student trained alone beats); 'any' keeps the whole front",
    )


def _min_gain(text: str) -> float | None:
    """--min-gain: points (a float, may be negative) or any (no floor)."""
    if text.strip().lower() == "any":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of points (e.g. 0, 1.5, -2) or 'any'") from None


def _with_sweep(sub, name: str, help_: str):
    sp = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.registries = True
    sp.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting by its dotted key, e.g. --set kd.alpha=0.5 (repeatable)",
    )
    return sp


def _workers(text: str):
    """--workers: auto or a count >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of workers (0 or more), got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(
            f"must be auto or >= 0 (0: create the study and let kdtrain worker run it), got {n}"
        )
    return n


def _stores(sp, storage_help: str | None = None) -> None:
    sp.add_argument(
        "--storage",
        type=_text,
        help=storage_help
        or "Optuna storage: a journal file or an RDB URL such "
        "as postgresql://... (default $KDTRAIN_STORAGE, else mlruns/optuna.journal)",
    )
    sp.add_argument(
        "--tracking-uri",
        type=_text,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the "
        "server the study recorded, else mlruns/mlflow.db)",
    )


def _add_sweep(sub) -> None:
    sp = _with_sweep(sub, "sweep", "run an Optuna study over the sweep's search space; every trial a run in MLflow")
    sp.add_argument(
        "--trials", type=int, help="the study's total number of trials, complete and pruned (default: study.trials)"
    )
    sp.add_argument("--timeout", help="stop starting trials after this long, e.g. 8h, 30m (default: study.timeout)")
    sp.add_argument(
        "--workers",
        type=_workers,
        default=os.environ.get("KDTRAIN_WORKERS", "auto"),
        help="worker processes on this machine (this one is the first). auto (default, or "
        "$KDTRAIN_WORKERS): with GPUs up to "
        "4 per GPU, each given its own GPU; else one single-threaded worker per CPU this process may "
        "use (or per train.threads), no more than trials or free memory allow. A number: that many, "
        "sharing the CPU budget and the GPUs. 0 creates the study and its runs and exits, for "
        "workers started elsewhere with kdtrain worker",
    )
    sp.add_argument("--study", type=_study, help="study name (default: study.name)")
    sp.add_argument(
        "--new-study",
        action="store_true",
        help="start a fresh study (NAME-v2, -v3, ...) when NAME exists with other settings",
    )
    _stores(sp)
    sp.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    sp.add_argument("--report-dir", default="reports", help="where the report goes (default: reports/)")


def _add_worker(sub) -> None:
    wp = _command(sub, "worker", "join an existing study and run its trials (the sweep config is read from the study)")
    _study_arg(wp)
    _stores(wp)
    wp.add_argument(
        "--threads",
        type=int,
        help="CPU threads for training (default: train.threads, else the CPUs "
        "this process may use: its affinity mask and cgroup CPU quota)",
    )
    wp.add_argument(
        "--wait",
        metavar="DURATION",
        help="wait this long (e.g. 10m) for the study to be created "
        "and its teachers logged, for workers that start before the sweep (SLURM arrays, Kubernetes)",
    )
    wp.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # sampler seed offset of local workers
    wp.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


STORAGE_HELP = (
    "Optuna storage: a journal file or an RDB URL such as postgresql://... (default $KDTRAIN_STORAGE, "
    "else mlruns/optuna.journal)"
)


def _add_study_commands(sub) -> None:
    """The commands that read, ship or browse a finished study (in the order --help lists them)."""
    _add_reading(sub)
    _add_shipping(sub)
    _add_browsing(sub)


def _add_reading(sub) -> None:
    """kdtrain report and kdtrain status."""
    rp = _command(sub, "report", "Pareto plots and comparison reports (HTML, Markdown, CSV) of studies")
    rp.add_argument("studies", nargs="*", type=_text, metavar="STUDY", help="study names (default: every study)")
    rp.add_argument(
        "--study",
        dest="studies_opt",
        action="append",
        type=_text,
        metavar="STUDY",
        help="a study name, the same as a STUDY argument (repeatable)",
    )
    rp.add_argument("--out", default="reports", help="output folder (default: reports/)")
    rp.add_argument("--name", help="folder name of a comparison report (default: compare-A-vs-B)")
    _stores(rp)
    rp.add_argument("--no-mlflow", action="store_true", help="do not log the report to the parent runs")

    st = _command(sub, "status", "each study's trial counts, running trials and current Pareto front")
    _study_arg(st, required=False, what="one study (default: every study of the storage)")
    st.add_argument("--storage", type=_text, help=STORAGE_HELP)


def _add_shipping(sub) -> None:
    """kdtrain export, confirm and register: chosen trials of a study (--trial or --pareto)."""
    ep = _command(sub, "export", "export trials of a study to ONNX and TorchScript with a JSON card")
    _study_arg(ep)
    _choose(ep)
    _floor(ep)
    ep.add_argument("--out", default="exports", help="output folder (default: exports/)")
    _stores(ep)

    cp = _command(
        sub,
        "confirm",
        "retrain chosen trials with new seeds, paired with the no-teacher baseline "
        "of each seed: the check before shipping a student",
    )
    _study_arg(cp)
    _choose(cp)
    cp.add_argument("--seeds", type=_positive, default=3, metavar="N", help="new seeds per trial (default 3)")
    cp.add_argument("--out", default="reports", help="where the updated report goes (default: reports/)")
    cp.add_argument("--no-report", action="store_true", help="do not rewrite the study's report")
    _stores(cp)

    gp = _command(
        sub,
        "register",
        "register chosen students in the MLflow Model Registry, each version's description its deployment card",
    )
    _study_arg(gp)
    _choose(gp)
    _floor(gp)
    gp.add_argument("--name", type=_text, required=True, help="the registered model's name, e.g. mnist1d-student")
    gp.add_argument(
        "--alias",
        type=_text,
        help="an alias (e.g. champion) for the most accurate of the chosen "
        "versions (by the mean val accuracy over kdtrain confirm's new seeds where it ran, else by val "
        "accuracy): models:/NAME@ALIAS",
    )
    _stores(gp)


def _add_browsing(sub) -> None:
    """kdtrain dashboard, schema and ui."""
    dp = _command(
        sub, "dashboard", "optuna-dashboard on the study's storage, on 127.0.0.1 (pip install 'kdtrain[dashboard]')"
    )
    _study_arg(dp, required=False, what="open at this study (default: the list of studies)")
    dp.add_argument("--storage", type=_text, help=STORAGE_HELP)
    dp.add_argument("--port", type=int, default=8080, help="the port on 127.0.0.1 (default 8080)")

    sc = _command(
        sub,
        "schema",
        "print the sweep file's JSON Schema (editors complete and check keys with it; see docs/sweep.schema.json)",
    )
    sc.add_argument(
        "--markdown", action="store_true", help="print the sweep-file reference (docs/reference.md) instead"
    )
    up = _command(sub, "ui", "start the MLflow UI on 127.0.0.1 against the local store (or --tracking-uri)")
    _study_arg(up, False, "the study whose runs to link (default: a link per study in the store)")
    up.add_argument("--port", type=int, default=5000, help="the port on 127.0.0.1 (default 5000)")
    up.add_argument(
        "--tracking-uri",
        type=_text,
        help="the MLflow store to browse (default $MLFLOW_TRACKING_URI, else mlruns/mlflow.db)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kdtrain",
        description="Knowledge-distillation sweeps: Optuna search, MLflow tracking, accuracy-vs-size reports.",
    )
    p.top = True  # names the study of every subcommand alike (parse_known_args)
    p.add_argument("--version", action="version", version=f"kdtrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _with_sweep(sub, "teachers", "train or load the sweep's teacher pool (cached) and print a table")
    _with_sweep(sub, "train", "distil one student with the sweep file's base settings")
    _with_sweep(
        sub,
        "layers",
        "the teachers' and the student's module paths with their output shapes for one "
        "batch of the data (to pick kd.features pairs)",
    )
    _add_sweep(sub)
    _add_worker(sub)
    pp = _with_sweep(
        sub, "profile", "params, size, FLOPs, latency and throughput of the teachers and a ladder of student widths"
    )
    pp.add_argument("--widths", help="comma-separated student widths (default: powers of two over the search range)")
    _add_study_commands(sub)
    return p
