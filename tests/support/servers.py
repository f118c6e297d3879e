"""Servers the tests start for real on 127.0.0.1: a free port, an `mlflow server` that is up once /health answers,
ending a server's whole process group, headless Chromium."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 5) -> None:
    """End a server started with start_new_session=True: SIGTERM to its process group, then SIGKILL after
    `grace` seconds (uvicorn can wait on a half-open connection; a test has no reason to wait for it)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still there (workers of a stopped server)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180, context=None) -> None:
    """Poll url until it answers 200; fail with the end of the server's log if the server exits or `seconds` pass."""
    deadline = time.time() + seconds
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2, context=context).status == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, one worker, started with start() (which returns once /health answers)
    and stopped with stop(); start() again serves the same store on the same port (the outage tests restart it).

    backend_store_uri: SQLite in root by default (a PostgreSQL URL, or another kdtrain home's mlflow.db, where a test
    needs it); artifacts: proxied to root / "artifacts" unless False; tls: (certificate, key) for https; extra_args
    (e.g. `--app-name basic-auth`) and env (e.g. the auth app's settings) go to the server's command."""

    def __init__(self, root: Path, *, backend_store_uri=None, artifacts=True, tls=None, extra_args=(), env=None):
        self.root, self.port, self.proc = Path(root), free_port(), None
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifacts, self.tls, self.extra_args, self.env = artifacts, tls, list(extra_args), env or {}
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mlflow", "server", *self.extra_args]
        cmd += ["--backend-store-uri", str(self.backend_store_uri)]
        if self.artifacts:
            cmd += ["--artifacts-destination", str(self.root / "artifacts")]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if self.tls:
            cert, key = self.tls
            cmd += ["--uvicorn-opts", f"--ssl-keyfile {key} --ssl-certfile {cert}"]
        return cmd

    def start(self, seconds: float = 180) -> "MlflowServer":
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        try:
            wait_for_http(self.url + "/health", self.proc, self.log_path, seconds, context)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace)
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=2)


def chromium_driver(tmp_path):
    """Debian's headless Chromium through Selenium (never a downloaded browser); skipped where it is not installed,
    failed in CI, where .ci/run installs it."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed by .ci/run")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download a browser or driver
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=1280,2400",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
