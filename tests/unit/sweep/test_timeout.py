"""--timeout and study.timeout: a sweep stops asking for trials at its deadline, ends as a finished sweep does
(exit code 0) and says why it stopped."""

import re

import pytest
from support import load_study, run_cli, write_sweep
from support.progress import progress_lines

from kdtrain import config
from kdtrain.cli.commands import main


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
    """`kdtrain sweep` of 200 quick trials with study.timeout: 3s in the file."""
    root = tmp_path_factory.mktemp("stopearly")
    env = {"KDTRAIN_HOME": str(root / "home"), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(root, **{"trials: 3}": "trials: 200, timeout: 3s, pruner: none}"})
    return root, run_cli("sweep", p, "--no-report", env=env)


def assert_stopped_at_deadline(study, budget_s: float, requested: int = 200):
    """Fewer trials than requested, none left running, and none asked after the deadline: the deadline is set
    before the first trial is asked, so every trial started within budget_s of the first one."""
    states = [t.state.name for t in study.trials]
    assert set(states) == {"COMPLETE"}, states  # pruner none: each asked trial ran to its end
    assert 1 <= len(states) < requested
    starts = sorted(t.datetime_start for t in study.trials)
    assert (starts[-1] - starts[0]).total_seconds() < budget_s + 0.5
    return len(states)


def test_study_timeout_stops_the_sweep_early_with_exit_code_0(stopped_early):
    root, r = stopped_early
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    done = assert_stopped_at_deadline(load_study(root / "home"), 3)
    assert "study tiny: 0/200 trials done" in r.stdout
    last = progress_lines(r.stdout)[-1]
    assert (last["done"], last["target"], last["complete"], last["running"]) == (str(done), "200", str(done), "0")
    assert "pareto front of tiny" in r.stdout  # it ends as a finished sweep does


def test_a_sweep_stopped_by_its_timeout_says_so(stopped_early):
    root, r = stopped_early
    text = (r.stdout + r.stderr).replace(str(root), "<root>")
    assert re.search(r"time ?out|time limit|timed out|deadline", text, re.I), text[-2000:]


def test_timeout_flag_overrides_the_sweep_files(tmp_path, capsys):
    p = write_sweep(tmp_path, **{"trials: 3}": "trials: 200, timeout: 1h, pruner: none}"})
    assert config.load(p).study.timeout == "1h"
    assert main(["sweep", str(p), "--timeout", "2s", "--no-report"]) == 0
    assert_stopped_at_deadline(load_study(tmp_path / "home"), 2)
    bad = main(["sweep", str(p), "--timeout", "soon", "--no-report"])
    assert bad == 1 and "--timeout: not a duration" in capsys.readouterr().err
