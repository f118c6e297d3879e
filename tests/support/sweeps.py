"""The tiny sweep the tests run, the real `kdtrain` command in a subprocess or in-process, and readers of what a
sweep left behind (its Optuna journal, its MLflow SQLite store)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import optuna

from kdtrain.cli.commands import main
from kdtrain.study import search

ROOT = Path(__file__).resolve().parents[2]
"""The repository: README.md, pyproject.toml, docs/, sweeps/, benchmarks/."""

QUICK_PROFILE = [
    "--set",
    "profile.blocks=2",
    "--set",
    "profile.calls=5",
    "--set",
    "profile.warmup=2",
    "--set",
    "profile.throughput_batch=8",
]
"""--set flags for a short latency measurement: a sweep's trials measured in a fraction of a second."""


@contextlib.contextmanager
def in_home(root: Path):
    """Inside: KDTRAIN_HOME and KDTRAIN_DATA under root and root the working directory, for a module's shared sweep
    run in-process (the per-test isolation fixture is function-scoped); both restored on the way out."""
    env = {"KDTRAIN_HOME": str(root / "home"), "KDTRAIN_DATA": str(root / "data")}
    old, cwd = {k: os.environ.get(k) for k in env}, os.getcwd()
    os.environ.update(env)
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


TINY_SWEEP = """
study: {name: tiny}
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers:
  - {name: big, arch: mlp, width: 64, epochs: 8}
  - {name: conv, arch: cnn1d, width: 8, epochs: 4}
student: {arch: mlp, width: 8}
train: {epochs: 4, batch_size: 64, lr: 0.01, threads: 1}
kd: {temperature: 4.0, alpha: 0.7, teachers: [big]}
"""

TINY_SEARCH = """
search:
  kd.temperature: {type: float, low: 1, high: 20, log: true}
  kd.alpha: {type: float, low: 0, high: 1}
  student.width: {type: int, low: 2, high: 16, log: true}
  kd.teachers: {type: subset, of: [big, conv]}
  kd.ensemble: {type: categorical, choices: [mean_probs, mean_logits, mean_kl]}
"""
"""The search space of the sweep tests, over TINY_SWEEP's pool."""


def write_sweep(folder: Path, extra: str = TINY_SEARCH, name="tiny.yaml", **subs) -> Path:
    """The tiny sweep as the two-objective, 3-trial study of the sweep tests (pruner none and study.spread off
    unless a test sets them),
    with `extra` as its search section and each `subs` key replaced by its value."""
    text = textwrap.dedent(TINY_SWEEP) + textwrap.dedent(extra)
    text = text.replace(
        "study: {name: tiny}", "study: {name: tiny, objectives: {val_accuracy: maximize, params: minimize}, trials: 3}"
    )
    for a, b in subs.items():
        text = text.replace(a, b)
    if "pruner:" not in text:  # these tests count complete trials: pruning only where a test asks for it
        text = text.replace("study: {name: tiny, ", "study: {name: tiny, pruner: none, ")
    if "spread:" not in text:  # and their trials are the sampler's (or steered teachers') unless a test spreads
        text = text.replace("study: {name: tiny, ", "study: {name: tiny, spread: false, ")
    p = folder / name
    p.write_text(text)
    return p


def _cli(args, env: dict | None) -> tuple[list[str], dict]:
    """The command line `python -m kdtrain.cli ARGS` and its environment: this process's, less MLFLOW_TRACKING_URI
    (mlflow.set_tracking_uri() exports it), with env on top."""
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return [sys.executable, "-m", "kdtrain.cli", *map(str, args)], {**inherited, **(env or {})}


def run_cli(*args, env=None, timeout=300):
    """Run the real `kdtrain` entry point (`python -m kdtrain.cli ARGS`) in a process of its own: forked from
    support/zygote.py's process, which has paid the imports once (set KDTRAIN_TEST_ZYGOTE=0 for a fresh
    interpreter each time, as before)."""
    command, full_env = _cli(args, env)
    if os.environ.get("KDTRAIN_TEST_ZYGOTE", "1") == "0":
        return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="kdtrain-cli-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        answer = _zygote_call(
            {
                "args": command[3:],
                "env": full_env,
                "cwd": os.getcwd(),
                "out": str(out),
                "err": str(err),
                "timeout": timeout,
            }
        )
        if answer.get("timeout"):
            raise subprocess.TimeoutExpired(command, timeout, out.read_bytes(), err.read_bytes())
        return subprocess.CompletedProcess(command, answer["returncode"], out.read_text(), err.read_text())


class CliProcess:
    """A `python -m kdtrain.cli ARGS` started by spawn_cli and running beside the test: pid, poll(), wait(), and its
    output (stdout and stderr together) in the file `log`, as subprocess.Popen gives them."""

    def __init__(self, command: list[str], log: Path, pid: int, popen: subprocess.Popen | None = None):
        self.args, self.log, self.pid, self.popen, self.returncode = command, log, pid, popen, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if self.popen is not None:
                self.returncode = self.popen.wait(timeout)
            else:
                answer = _zygote_call({"wait": self.pid, "timeout": timeout})
                if answer.get("running"):
                    raise subprocess.TimeoutExpired(self.args, timeout)
                self.returncode = answer["returncode"]
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text()


def spawn_cli(*args, log: Path, env=None, new_session=False) -> CliProcess:
    """Start the real `kdtrain` entry point (`python -m kdtrain.cli ARGS`) as run_cli does (forked from the zygote;
    KDTRAIN_TEST_ZYGOTE=0 for a fresh interpreter) without waiting for it: stdout and stderr go to `log`;
    new_session as Popen's start_new_session (a process group of its own, for os.killpg)."""
    command, full_env = _cli(args, env)
    log.write_text("")  # there from the start, as a Popen's pipe is
    if os.environ.get("KDTRAIN_TEST_ZYGOTE", "1") == "0":
        with open(log, "a") as out:
            popen = subprocess.Popen(
                command, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session
            )
        return CliProcess(command, log, popen.pid, popen)
    request = {"args": command[3:], "env": full_env, "cwd": os.getcwd(), "out": str(log), "err": str(log)}
    answer = _zygote_call({**request, "spawn": True, "new_session": new_session})
    return CliProcess(command, log, answer["pid"])


_ZYGOTE: dict = {}
_ZYGOTE_LOCK = threading.Lock()


def _zygote_call(request: dict) -> dict:
    """One request to this process's zygote, started on first use (a pytest worker's own; it ends with it)."""
    with _ZYGOTE_LOCK:
        proc = _ZYGOTE.get("proc")
        if proc is None or proc.poll() is not None:
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            proc = _ZYGOTE["proc"] = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("zygote.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tempfile.gettempdir(),
            )
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"support/zygote.py exited with {proc.wait()}"
        return json.loads(line)


def mlflow_runs(home: Path, experiment: str):
    """Every MLflow run of an experiment in a kdtrain home's SQLite store, as mlflow.search_runs gives them."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment])


def load_study(home: Path, name="tiny"):
    """A study of a kdtrain home's default journal store."""
    return optuna.load_study(study_name=name, storage=search.open_storage(str(home / "optuna.journal")))


# --------------------------------------------------------------------------- bad input

SEARCH = """
search:
  kd.temperature: {type: float, low: 1, high: 20, log: true}
  kd.alpha: {type: float, low: 0, high: 1}
"""
"""The small search section of the bad-input tests."""


def snapshot(root: Path) -> dict[str, int]:
    """Every file under root (but the dataset cache) with its size."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "data"
    }


def sweep_file(tmp_path: Path, text: str | None = None, extra: str = SEARCH) -> Path:
    """tmp_path / sweep.yaml holding text, or the tiny sweep with `extra` as its search section."""
    p = tmp_path / "sweep.yaml"
    p.write_text(text if text is not None else textwrap.dedent(TINY_SWEEP) + textwrap.dedent(extra))
    return p


def refused(tmp_path, capsys, args, code=None, says=(), secret=None, command=("sweep", "--no-report")):
    """Run `kdtrain sweep ARGS` (or another command); check the exit code, the one message and that nothing was
    written. A bad flag ends in argparse's exit (SystemExit) rather than a return code."""
    before = snapshot(tmp_path)
    try:
        rc = main([command[0], *map(str, args), *command[1:]])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert rc != 0 and (code is None or rc == code), (rc, out, err)
    assert err.count("kdtrain: error:") == 1 and "Traceback" not in err + out, err
    for s in says:
        assert s in err, (s, err)
    if secret:
        assert secret not in out + err
    assert snapshot(tmp_path) == before, "something was written"
    assert not (tmp_path / "home").exists()  # no journal, no MLflow store, no cache, no lock
    return err
