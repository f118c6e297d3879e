"""The study's database going away mid-sweep and coming back (issue 22, item 13): a real PostgreSQL of the test's
own, stopped and started under a running sweep (the tracking server's outage: test_tracking_outage.py).

The PostgreSQL is a private cluster (initdb into a temporary folder, its own port), so that stopping it does
not touch the server the other integration tests share; it needs Debian's PostgreSQL binaries, which
`.ci/postgres` installs."""

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from support import free_port
from support.outages import (
    QUICKSTART,
    one_outage_line,
    output,
    paused,
    states,
    sweep_file,
    sweeping,
    wait_for_running,
)


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone: initdb, start, stop (fast: clients cut off), start again."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            if os.environ.get("KDTRAIN_REQUIRE_INTEGRATION") == "1":
                pytest.fail("no PostgreSQL binaries under /usr/lib/postgresql: run .ci/postgres")
            pytest.skip("no PostgreSQL binaries (Debian's postgresql package; see .ci/postgres)")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="kdtrain-pg-"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "kd", "--no-sync")
        self.url = f"postgresql+psycopg://kd@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres():
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.remove()


def test_a_database_outage_inside_the_patience_window_costs_a_warning_not_the_sweep(postgres, tmp_path):
    sweep = sweep_file(tmp_path, "pg-blip", trials=2, patience="2m", epochs=30, **QUICKSTART)
    with sweeping(sweep, postgres.url, tmp_path) as proc:
        wait_for_running(postgres.url, "pg-blip", proc)
        time.sleep(1)  # a heartbeat recorded, the trial training
        with paused(proc):  # the database goes while the trial trains
            postgres.stop()
        time.sleep(6)
        postgres.start()
        assert proc.wait(timeout=300) == 0, output(proc)
    out = output(proc)
    one_outage_line(out)
    assert "answers again" in out, out
    # nothing failed, nothing re-queued: the epochs whose pruning check met the database away went unchecked
    assert set(states(postgres.url, "pg-blip").values()) <= {"COMPLETE", "PRUNED"}, out
    assert len(states(postgres.url, "pg-blip")) == 2, out


def test_a_database_outage_past_the_patience_window_stops_with_one_line_and_the_next_run_recovers(postgres, tmp_path):
    sweep = sweep_file(tmp_path, "pg-gone", trials=2, patience="4s", epochs=20)
    with sweeping(sweep, postgres.url, tmp_path) as proc:
        victim = wait_for_running(postgres.url, "pg-gone", proc)
        with paused(proc):  # the database goes while the trial trains
            postgres.stop()
        rc = proc.wait(timeout=300)
    out = output(proc)
    assert rc != 0, out
    one_outage_line(out)
    errors = [line for line in out.splitlines() if line.startswith("kdtrain: error:")]
    assert len(errors) == 1 and "storage_patience" in errors[0], out
    postgres.start()
    assert states(postgres.url, "pg-gone")[victim] == "RUNNING"  # left for recovery, as a killed worker's
    time.sleep(4)  # past study.grace_period (3 s) without a heartbeat
    with sweeping(sweep, postgres.url, tmp_path) as again:
        assert again.wait(timeout=300) == 0, output(again)
    final = optuna.load_study(study_name="pg-gone", storage=postgres.url).get_trials(deepcopy=False)
    failed = [t for t in final if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [victim], output(again)
    assert "no heartbeat" in failed[0].user_attrs["fail_reason"]
    assert sum(t.state.name == "COMPLETE" for t in final) == 2
    assert any(t.user_attrs.get("kdtrain.requeued_from") == victim for t in final)  # its settings ran again
