"""What the tests share that is not a fixture: the tiny sweep and ways to run it, readers of a finished sweep,
real servers on 127.0.0.1. Imported as `from support import ...` (pyproject's pytest `pythonpath` puts tests/
on the path); the fixtures built on these live in tests/conftest.py."""

from support.servers import MlflowServer, chromium_driver, free_port, stop_group, wait_for_http
from support.sweeps import (
    QUICK_PROFILE,
    ROOT,
    SEARCH,
    TINY_SEARCH,
    TINY_SWEEP,
    in_home,
    load_study,
    mlflow_runs,
    refused,
    run_cli,
    snapshot,
    spawn_cli,
    sweep_file,
    write_sweep,
)

__all__ = [
    "QUICK_PROFILE",
    "ROOT",
    "SEARCH",
    "TINY_SEARCH",
    "TINY_SWEEP",
    "MlflowServer",
    "chromium_driver",
    "free_port",
    "in_home",
    "load_study",
    "mlflow_runs",
    "refused",
    "run_cli",
    "snapshot",
    "spawn_cli",
    "stop_group",
    "sweep_file",
    "wait_for_http",
    "write_sweep",
]
