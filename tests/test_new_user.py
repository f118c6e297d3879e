"""What a new user met from report to shipped student (issue 24), each with a test that failed before its fix."""

import contextlib
import os
import re
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

    port = _free_port()
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


def test_after_confirm_the_report_terminal_and_registry_use_the_confirmed_numbers(tiny_sweep, tmp_path, capsys):
    """After `kdtrain confirm` the report still gave the single-seed verdict, asked for the confirm just done, and
    `register --alias` ranked by single-seed val accuracy."""
    from mlflow import MlflowClient

    from kdtrain.cli.commands import main

    # trial 0 (the enqueued base) distils nothing (kd.alpha 0): confirmed, it ties its baselines exactly
    text = tiny_sweep.read_text().replace("study: {name: tiny}", "study: {name: tiny, trials: 3, seed: 1}")
    tiny_sweep.write_text(
        text.replace("alpha: 0.7", "alpha: 0.0") + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n"
    )
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # item 4: no assumed port for a local store; kdtrain ui prints the link for the port it serves
    assert "127.0.0.1:5000" not in last and last.startswith("browse the runs: kdtrain ui tiny ("), last
    assert main(["confirm", "tiny", "--trial", "0", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    # item 5: its size up front (seeds 1 and 2 distilled; their baselines are the sweep's, seeds 0-2), k/N, ETA
    total = int(re.search(r"confirm: 1 trial\(s\) x 2 new seed\(s\): (\d+) training\(s\) to run", out).group(1))
    assert total == 2 and re.findall(r"confirm (\d)/2: trial 0 distilled .*ETA", out) == ["1", "2"], out
    # issue 33 item 10: "ETA ?" through the whole first training; its first epoch now gives the pace and an ETA
    first = re.search(r"confirm 1/2: epoch 1/(\d+), ([\d.]+)s/epoch  ETA ~(\d+m\d\ds)", out)
    assert first and out.index("confirm 1/2: trial 0") < first.start() < out.index("confirm 2/2: trial 0"), out
    assert out.count("report: ") == 1
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    page = (tmp_path / "reports" / "tiny" / "index.html").read_text()
    for where in (out, summary, page):
        assert "--trial 0)" not in where  # no request for the confirm that was done
    assert "127.0.0.1:5000" not in page and "<code>kdtrain ui tiny</code>" in page
    head = summary.split("\n## ", 1)[0]
    assert (
        "the largest test gain of a best trial is +0.0 ± 0.0 points on test, paired with the baseline of each "
        "seed, confirmed over 2 new seeds (width 8, trial 0), within 2 x its own spread over the new seeds"
    ) in head
    verdict = next(line for line in head.splitlines() if "Distillation" in line)
    assert verdict[2:] in out  # the terminal prints the headline the report now has

    capsys.readouterr()
    assert main(["register", "tiny", "--trial", "0", "1", "2", "--name", "tiny-student", "--alias", "champion"]) == 0
    out = capsys.readouterr().out
    assert "alias champion: version 1 (trial 0), the highest mean val accuracy over kdtrain confirm's new seeds" in out
    assert "unconfirmed trial(s) 1, 2 not ranked" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/home/mlflow.db")
    champion = client.get_model_version_by_alias("tiny-student", "champion")
    assert champion.tags["optuna.trial"] == "0" and "confirmed over 2 new seeds" in champion.description


def test_every_subcommand_says_what_it_does_and_every_option_has_help():
    """worker, status, export, confirm, register, dashboard and ui had no description; --study, --storage and
    --port had no help in status, dashboard and ui."""
    import argparse

    from kdtrain.cli.args import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        assert parser.description, f"kdtrain {name} --help has no description"
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                assert action.help, f"kdtrain {name}: {action.option_strings or action.dest} has no help"


def test_the_study_is_named_the_same_way_in_every_command(capsys):
    """export took --study while report, confirm and register took the study as an argument."""
    from kdtrain.cli.args import build_parser

    parse = build_parser().parse_args
    for command in ("export", "confirm", "register", "worker", "status", "dashboard"):
        extra = {"export": ["--pareto"], "confirm": ["--pareto"], "register": ["--pareto", "--name", "m"]}.get(
            command, []
        )
        assert parse([command, "s1", *extra]).study == parse([command, "--study", "s1", *extra]).study == "s1"
    assert parse(["report", "a", "--study", "b"]).studies_opt == ["b"]
    try:
        parse(["confirm", "a", "--study", "b", "--pareto"])
    except SystemExit as e:
        assert e.code == 2
    assert "the study is named twice, 'a' and --study 'b'" in capsys.readouterr().err


def test_a_misspelt_key_or_model_gets_a_suggestion(tmp_path, capsys):
    from kdtrain.cli.commands import main

    (tmp_path / "s.yaml").write_text(
        "data: {name: synthetic, size: 200}\nstudent: {arch: mlp}\nkd: {temprature: 3.0, alpha: 0}\n"
    )
    assert main(["train", str(tmp_path / "s.yaml")]) == 2
    assert "kd.temprature: unknown key; did you mean temperature?" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("data: {name: synthetic, size: 200}\nstudent: {arch: 'torchvision:resnet181'}\n")
    assert main(["train", str(tmp_path / "s.yaml")]) == 2
    assert "torchvision has no classification model 'resnet181'; did you mean resnet18?" in capsys.readouterr().err
    from kdtrain.config import allowed_values

    archs = allowed_values()["student.arch, teachers[].arch"]
    assert any(a.startswith("torchvision:NAME") for a in archs) and "python:package.module:function" in archs


def test_a_trial_that_does_not_exist_is_named_so(tiny_sweep, capsys):
    """`--trial 99` on a study without trial 99 said "not complete"."""
    from kdtrain.cli.commands import main

    tiny_sweep.write_text(
        tiny_sweep.read_text().replace("study: {name: tiny}", "study: {name: tiny, trials: 1}")
        + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n"
    )
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0
    capsys.readouterr()
    assert main(["confirm", "tiny", "--trial", "99", "--seeds", "1"]) == 1
    err = capsys.readouterr().err
    assert "no such trial in 'tiny': 99 (it has trials 0..0)" in err and "not complete" not in err
