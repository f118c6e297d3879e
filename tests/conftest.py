"""The suite's fixtures and collection rules. Helpers that are not fixtures live in tests/support (imported as
`from support import ...`); nothing imports this file."""

import os
import textwrap
from pathlib import Path

import pytest
import support.sweep8
import torch
from support import TINY_SWEEP, MlflowServer, run_cli, write_sweep

TESTS = Path(__file__).resolve().parent

torch.set_num_threads(1)  # the suite runs on small CPUs; one thread keeps runs repeatable and quick
# the `mlflow server`s the tests start need none of MLflow 3's job runner (GenAI jobs): without it a server is
# 2 processes instead of 10 and ~10 s less CPU to start (`kdtrain ui` turns it off itself; a test of the ui checks)
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# `kdtrain sweep` runs one worker per CPU by default; the suite already runs one pytest worker per CPU, so its sweeps
# run one worker each (and repeat their trials exactly) unless a test asks for more (test_workers tests auto)
os.environ.setdefault("KDTRAIN_WORKERS", "1")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test gets its own kdtrain home (store and caches) and data root."""
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; keep it from leaking into later tests' subprocesses
    # (setenv first so that the undo removes a value mlflow sets during the test)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("KDTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KDTRAIN_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_sweep(tmp_path):
    """A sweep file on synthetic data that trains in about a second."""
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(TINY_SWEEP))
    return p


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One finished 3-trial sweep of the tiny sweep file, its report included: (root, sweep file, env, the
    sweep's CompletedProcess), the kdtrain home at root / "home". Shared by the sweep and gains tests (the tests
    that use it share an xdist group, so one worker builds it once). Tests add to it (a confirm, a second study, a
    rerun that runs nothing) and remove nothing."""
    root = tmp_path_factory.mktemp("tiny-study")
    env = {"KDTRAIN_HOME": str(root / "home"), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(root)
    r = run_cli("sweep", p, "--report-dir", root / "reports", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, p, env, r


@pytest.fixture(scope="session")
def sweep8(tmp_path_factory):
    """support.sweep8's eight-trial sweep with two baseline seeds and constraints (home, CompletedProcess, env,
    sweep file), read by the baselines, progress, search and export tests. Tests read it and add nothing."""
    return support.sweep8.build(tmp_path_factory.mktemp("sweep8"))


# --------------------------------------------------------------------------- MLflow servers


@pytest.fixture
def start_mlflow_server(tmp_path):
    """start(root=None, **options) -> a real `mlflow server` on 127.0.0.1 that answers /health (support's
    MlflowServer: options backend_store_uri, artifacts, tls=(cert, key), extra_args, env); every server it started
    is stopped when the test ends. For a server of the test's own: one it stops and restarts, or one with special
    flags (TLS, authentication)."""
    started = []

    def start(root: Path | None = None, **options) -> MlflowServer:
        folder = Path(root) if root else tmp_path / f"mlflow-server-{len(started)}"
        folder.mkdir(parents=True, exist_ok=True)
        server = MlflowServer(folder, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(grace=2)


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory):
    """One plain `mlflow server` (SQLite, proxied artifacts) for the tests that only log to a server and read back:
    each uses experiments and model names of its own. Started once per xdist worker that needs it (the tests that
    use it share an xdist group)."""
    with MlflowServer(tmp_path_factory.mktemp("shared-mlflow-server")) as server:
        yield server


# --------------------------------------------------------------------------- collection

FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "postgres": "postgres", "docs": "docs"}
"""A test under tests/<folder>/ gets the marker of each folder on its path (integration/postgres/: both)."""


def _shared_fixtures(item) -> list[str]:
    """The session-scoped fixtures of tests/ that item uses; without one, the module-scoped ones that no other such
    fixture it uses already needs (the mlflow server on PostgreSQL, not also the database it was started on)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    shared = {}
    for name in item.fixturenames:
        defs = info.name2fixturedefs.get(name)
        if not defs:
            continue
        fixturedef = defs[-1]
        code = getattr(fixturedef.func, "__code__", None)
        source = Path(code.co_filename).resolve() if code else None
        if fixturedef.scope in ("module", "session") and source and TESTS in source.parents:
            where = "" if fixturedef.scope == "session" else Path(item.fspath).stem + "::"
            shared[name] = (where + name, set(fixturedef.argnames))
    needed = set().union(*(args for _, args in shared.values())) if shared else set()
    tops = sorted(group for name, (group, _) in shared.items() if name not in needed)
    sessions = sorted(group for group, _ in shared.values() if "::" not in group)
    return sessions or tops  # a module's fixture built on a session's one goes where the session's one is


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Markers by folder; an xdist group per shared fixture: under `--dist loadgroup` the tests that use one
    module- or session-scoped fixture of tests/ (a finished sweep, a server) run on one pytest worker, which
    builds it once. Runs before pytest-xdist reads the groups."""
    for item in items:
        parts = Path(item.fspath).resolve().relative_to(TESTS).parts[:-1]
        for folder in parts:
            if folder in FOLDER_MARKERS:
                item.add_marker(FOLDER_MARKERS[folder])
        groups = _shared_fixtures(item)
        if groups:
            item.add_marker(pytest.mark.xdist_group("+".join(groups)))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Under `--dist loadgroup` pytest-xdist suffixes a grouped test's id with `@group`, which sends the group to
    one worker, so that its shared fixture (a finished sweep, a server) is built once. pytest 9.2 with xdist 3.8
    silently stopped doing it (every such fixture then ran on both workers); say so instead of running slower."""
    if getattr(session.config.option, "loadgroup", False) and hasattr(session.config, "workerinput"):
        lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist did not apply the xdist_group of {len(lost)} test(s) (e.g. "
                f"{lost[0]}): install the versions the test extra pins (pip install -e '.[test]')"
            )
