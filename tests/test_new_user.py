"""What a new user met from report to shipped student (issue 24), each with a test that failed before its fix."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line holds text (as ps would find them)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_one_sigterm_to_kdtrain_ui_ends_its_mlflow_server_too(tmp_path):
    """SIGTERM to `kdtrain ui` left its `mlflow ui` child running, reparented to PID 1 and still answering."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(tmp_path / "ui.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kdtrain.cli", "ui", "--port", str(port),
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(0.5)
        assert _processes_naming(f"--port {port}")  # the mlflow ui server (and its workers) are up
        proc.send_signal(signal.SIGTERM)  # once, to kdtrain ui alone
        assert proc.wait(timeout=30) == 0
        deadline = time.time() + 10
        while (_listening(port) or _processes_naming(f"--port {port}")) and time.time() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "the MLflow UI still answers"
        assert _processes_naming(f"--port {port}") == [], "a process of kdtrain ui outlived it"
    finally:
        for pid in _processes_naming(f"--port {port}"):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
