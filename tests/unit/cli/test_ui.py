"""`kdtrain ui` (the MLflow UI over the study's runs): served on 127.0.0.1 alone without MLflow's job runner, one
SIGTERM ends it and its server, and a taken port fails at once."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support import free_port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of this machine: pid -> (parent pid, command line), as ps would list them."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                found[int(d.name)] = (ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line holds text (as ps would find them)."""
    return [pid for pid, (_, cmdline) in _processes().items() if text in cmdline]


def _descendants(pid: int) -> dict[int, str]:
    """The command line of every process below pid (children, their children, ...), by pid."""
    table, found, frontier = _processes(), {}, {pid}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier}
        found.update({p: table[p][1] for p in frontier})
    return found


def test_one_sigterm_to_kdtrain_ui_ends_its_mlflow_server_too(tmp_path):
    """SIGTERM to `kdtrain ui` left its `mlflow ui` child running, reparented to PID 1 and still answering. Also
    `kdtrain ui` on the default store (this test's kdtrain home), served on 127.0.0.1 alone, and without MLflow's job
    runner and its seven huey consumers (~1.5 GB kdtrain never uses)."""
    from kdtrain.tracking.client import Tracker, default_uri

    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
    }
    exp_id = Tracker(default_uri()).experiment("my-study")
    with open(tmp_path / "ui.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kdtrain.cli", "ui", "my-study", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.time() + 180
        while "my-study: http://" not in (tmp_path / "ui.log").read_text():  # the links: once the server answers
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(0.5)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        assert _processes_naming(f"--port {port}")  # the mlflow ui server (and its workers) are up
        below = _descendants(proc.pid)
        assert "--host 127.0.0.1" in " ".join(below.values())  # never on every interface
        assert [c for c in below.values() if "huey" in c or "job_runner" in c] == []
        assert len(below) <= 2, below  # MLflow's command and its one server worker, as docs/machines.md says
        # item 4: the exact link to the study's runs, on the port it serves
        assert f"my-study: http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?" in (tmp_path / "ui.log").read_text()
        proc.send_signal(signal.SIGTERM)  # once, to kdtrain ui alone
        assert proc.wait(timeout=30) == 0
        deadline = time.time() + 10
        while (_listening(port) or _processes_naming(f"--port {port}")) and time.time() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "the MLflow UI still answers"
        assert _processes_naming(f"--port {port}") == [], "a process of kdtrain ui outlived it"
    finally:  # a failed test leaves nothing running either
        for pid in {*_descendants(proc.pid), *_processes_naming(f"--port {port}")}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_kdtrain_ui_on_a_taken_port_fails_at_once_and_starts_nothing(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "kdtrain.cli", "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"port {port} on 127.0.0.1 is in use" in r.stderr and f"--port {port + 1}" in r.stderr
    assert "MLflow UI for" not in r.stdout and "Traceback" not in r.stderr
    assert _processes_naming(f"--port {port}") == []
