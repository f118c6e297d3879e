"""`python -m kdtrain.cli ARGS` without paying the imports every time: this process imports kdtrain's command line
and the libraries it loads (torch, MLflow, Optuna; ~4 s of CPU per process, most of a short command's cost) once,
then forks one child per request. The child is a real process of its own, as `python -m kdtrain.cli` would be: its
own environment, working directory, stdout and stderr files, exit code (a traceback and 1 on an uncaught exception,
atexit handlers run), and it runs kdtrain/cli/__main__.py with runpy as `-m` does.

Protocol, one JSON line each way over stdin/stdout: {"args", "env", "cwd", "out", "err", "timeout"} ->
{"returncode": int} or {"timeout": true} (the child was killed); with "spawn": true (and "new_session") ->
{"pid": int} at once, then {"wait": pid, "timeout": seconds or null} -> {"returncode": int} or {"running": true}.
Used by support.run_cli and support.spawn_cli."""

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import signal
import sys
import time
import traceback

import matplotlib
import mlflow  # noqa: F401
import optuna  # noqa: F401
import pandas  # noqa: F401
import sqlalchemy  # noqa: F401
import torch  # noqa: F401

import kdtrain.cli.commands  # noqa: F401 - the command line and what it imports at module level

matplotlib.use("Agg")  # what the report sets itself; set before pyplot loads in a child

PRELOAD = (
    # what a sweep imports on the way (measured with -X importtime in a child: ~3.5 s of a tiny sweep's 10 s):
    # the first optimizer imports torch._dynamo, a logged model torch.export and torch.onnx, the report's
    # importances Optuna's fANOVA (scikit-learn), the first store MLflow's SQLAlchemy store
    "torch._dynamo",
    "torch.export",
    "torch.export._trace",
    "torch.onnx",
    "torch._inductor.ir",
    "sympy.tensor.tensor",
    "optuna.importance._fanova._fanova",
    "sklearn.ensemble",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.db.utils",
    "mlflow.pytorch",
    "mlflow.pyfunc.loaders",
    "mlflow.tracing.processor.base_mlflow",
    "git",
    "matplotlib.pyplot",
    "sqlalchemy.dialects.sqlite",
    "kdtrain.config",
    "kdtrain.distill.teachers",
    "kdtrain.sweep.session",
    "kdtrain.sweep.worker",
    "kdtrain.sweep.processes",
    "kdtrain.study.recovery",
    "kdtrain.report.build",
    "kdtrain.ship.study_teacher",
    "kdtrain.cli.preflight",
)
for name in PRELOAD:  # a module missing here is imported (or missed) by the child as it would be anyway
    with contextlib.suppress(ImportError):
        importlib.import_module(name)
with contextlib.suppress(Exception):  # a logged model's pip requirements: MLflow maps every installed package's
    # modules once per process (importlib.metadata.packages_distributions, ~1 s), then keeps the map
    from mlflow.utils import requirements_utils

    requirements_utils._init_packages_to_modules_map()


def child(request: dict) -> None:
    """In the forked child: become `python -m kdtrain.cli ARGS` and exit as it would."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if request.get("new_session"):
        os.setsid()  # as Popen(start_new_session=True): a group of its own, for killpg
    for fd, path in ((1, request["out"]), (2, request["err"])):
        if fd == 2 and path == request["out"]:  # stderr=STDOUT: one file, one offset
            os.dup2(1, 2)
            continue
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.dup2(f, fd)  # the request pipe's end there is closed by it
        os.close(f)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    sys.argv = [sys.executable, *request["args"]]
    sys.path[0] = os.getcwd()  # as -m puts the working directory first (a python: factory module found there)
    try:
        runpy.run_module("kdtrain.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:  # what the interpreter makes of sys.exit's argument
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter does with any uncaught exception
        traceback.print_exc()
        code = 1
    # the interpreter's exit without its teardown of every module: in a fork of this process that teardown touches
    # (and so copies) every page and takes seconds; atexit handlers (logging, MLflow) and the streams still run
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def wait(pid: int, timeout: float | None, kill: bool) -> dict:
    """The child's exit code once it exits within timeout (None: however long); past it, killed (kill) or said
    to be running."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if deadline is not None and time.monotonic() > deadline:
            if not kill:
                return {"running": True}
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


def serve() -> None:
    """Requests: a command to run and wait for ({"args", ...}: its exit code), or to start ({"spawn": true}: its
    pid at once), and {"wait": pid, "timeout": seconds or null} for a started one (its exit code, or "running")."""
    gc.freeze()  # the imports' objects stay out of the children's collections (no copy of their pages)
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            answer = wait(request["wait"], request["timeout"], kill=False)
        else:
            pid = os.fork()
            if pid == 0:
                child(request)
            answer = {"pid": pid} if request.get("spawn") else wait(pid, request["timeout"], kill=True)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
    os._exit(0)  # its pytest worker is gone (stdin closed): no teardown of every module either
