"""README claims that no other test covers, each checked against real components: real Optuna journals, real
MLflow SQLite stores in temporary folders, the real `kdtrain` command in subprocesses, real locks between real
processes and a real HTTP server on 127.0.0.1. Nothing of MLflow or Optuna is mocked.

Four claims were found false when these tests were written (a baseline's per-epoch curve, a sweep stopped by its
timeout saying nothing, the ETA's rate, credentials not sent to /health); the code or README was fixed and the
tests assert the fixed behaviour.
"""

import base64
import contextlib
import datetime
import io
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import optuna
import pytest
import torch
from support import TINY_SEARCH, load_study, mlflow_runs, refused, run_cli, write_sweep
from torch import nn

from kdtrain import config, pareto
from kdtrain.cli.commands import main
from kdtrain.config import KdtrainError, redact
from kdtrain.data import datasets
from kdtrain.deploy.export import export_model
from kdtrain.shared import cpu_room
from kdtrain.study import search, space
from kdtrain.sweep import baselines, worker
from kdtrain.sweep.console import SweepProgress
from kdtrain.tracking.client import Tracker, check_reachable

MULTI = "objectives: {val_accuracy: maximize, params: minimize}"
SINGLE = "objectives: {val_accuracy: maximize}"

# ------------------------------------------------------------------ one real sweep shared by claims 1, 3, 5, 6

TRIALS = 8
LATENCY_BOUND = 0.001  # ms: no batch-1 call of any model takes a microsecond, so every trial violates it
PARAMS_BOUND = 150


@pytest.fixture(scope="module")
def sweep8(tmp_path_factory):
    """`kdtrain sweep` (one worker, output to a pipe, as under nohup): 8 trials, every one completes (pruner none),
    2 baseline seeds per width, a max_latency_ms and a max_params constraint; long enough (3000 samples, 30 epochs)
    for several progress lines."""
    root = tmp_path_factory.mktemp("claims")
    home = root / "home"
    env = {"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(
        root,
        **{
            "trials: 3}": f"trials: {TRIALS}, baseline_seeds: 2, pruner: none, seed: 3, constraints: "
            f"{{max_latency_ms: {LATENCY_BOUND}, max_params: {PARAMS_BOUND}}}}}",
            "size: 400": "size: 3000",
            "epochs: 4,": "epochs: 30,",
        },
    )
    r = run_cli("sweep", p, "--no-report", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return home, r, env, p


# ------------------------------------------------------------------ 1. gains over the seeded baseline


def test_each_trial_records_its_gain_over_the_baseline_runs_seed_mean(sweep8):
    home, _, _, p = sweep8
    cfg = config.load(p)
    seeds = [cfg.train.seed + i for i in range(cfg.study.baseline_seeds)]
    assert seeds == [0, 1]
    n_val = len(datasets.load(cfg.data).y_val)
    df = mlflow_runs(home, "tiny")
    base = df[df["tags.kdtrain.role"] == "baseline"].set_index("params.student.width")
    assert base.index.is_unique and (base["params.seeds"] == "0,1").all()
    students = df[df["tags.kdtrain.role"] == "student"]
    assert len(students) == TRIALS and set(students["params.student.width"]) == set(base.index)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    for _, t in students.iterrows():
        b = base.loc[t["params.student.width"]]
        # the baseline run's accuracies are the mean and sample std of its seeds' trainings (the per-seed cache)
        key = baselines.student_key(baselines.trial_config(tracker, t.run_id))
        runs = json.loads((home / "cache" / "baselines" / f"{key}.json").read_text())["runs"]
        assert sorted(runs) == ["0", "1"]
        for m in ("val_accuracy", "test_accuracy"):
            per_seed = [runs[str(s)][m] for s in seeds]
            assert b[f"metrics.{m}"] == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
            assert b[f"metrics.{m}_std"] == pytest.approx(statistics.stdev(per_seed), abs=1e-12)
            # ... and the trial carries exactly those numbers
            assert t[f"metrics.baseline_{m}"] == pytest.approx(b[f"metrics.{m}"], abs=1e-12)
            assert t[f"metrics.baseline_{m}_std"] == pytest.approx(b[f"metrics.{m}_std"], abs=1e-12)
        gain = t["metrics.val_accuracy"] - b["metrics.val_accuracy"]
        assert t["metrics.kd_gain"] == pytest.approx(gain, abs=1e-12)
        assert t["metrics.kd_gain_test"] == pytest.approx(
            t["metrics.test_accuracy"] - b["metrics.test_accuracy"], abs=1e-12
        )
        assert t["metrics.kd_gain_sigma"] == pytest.approx(
            gain / max(b["metrics.val_accuracy_std"], 1 / n_val), rel=1e-9, abs=1e-12
        )


def test_gain_sigma_is_floored_at_one_validation_sample():
    trial = {"val_accuracy": 0.90, "test_accuracy": 0.80}
    same_seeds = {"val_accuracy": 0.85, "val_accuracy_std": 0.0, "test_accuracy": 0.82, "test_accuracy_std": 0.0}
    g = baselines.gains(trial, same_seeds, 80)
    assert g["kd_gain"] == pytest.approx(0.05) and g["kd_gain_test"] == pytest.approx(-0.02)
    assert g["kd_gain_sigma"] == pytest.approx(0.05 * 80)  # std 0: divided by 1/80, not by zero
    spread = {**same_seeds, "val_accuracy_std": 0.02}  # wider than one sample (1/80 = 0.0125): the std itself
    assert baselines.gains(trial, spread, 80)["kd_gain_sigma"] == pytest.approx(0.05 / 0.02)
    narrow = {**same_seeds, "val_accuracy_std": 0.01}  # narrower than one sample: the floor
    assert baselines.gains(trial, narrow, 80)["kd_gain_sigma"] == pytest.approx(0.05 * 80)


def test_baseline_per_epoch_curve_is_the_seeds_mean(sweep8):
    home, _, _, _ = sweep8
    df = mlflow_runs(home, "tiny")
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    compared = 0
    for _, t in df[df["tags.kdtrain.role"] == "student"].iterrows():
        key = baselines.student_key(baselines.trial_config(tracker, t.run_id))
        runs = json.loads((home / "cache" / "baselines" / f"{key}.json").read_text())["runs"]
        first, second = ([h["val_accuracy"] for h in runs[s]["history"]] for s in ("0", "1"))
        if first == second:
            continue  # the seeds agree at every epoch: nothing to tell apart
        mean = [(a + b) / 2 for a, b in zip(first, second, strict=False)]
        [b] = tracker.find(t.experiment_id, {"kdtrain.baseline_key": key})
        curve = sorted((m.step, m.value) for m in tracker.client.get_metric_history(b, "val_accuracy") if m.step > 0)
        assert [v for _, v in curve] == pytest.approx(mean, abs=1e-9)
        compared += 1
    assert compared > 0


# ------------------------------------------------------------------ 2. --timeout / study.timeout


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


# ------------------------------------------------------------------ 3. progress lines in a log

PROGRESS = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) trials (?P<done>\d+)/(?P<target>\d+) \(complete (?P<complete>\d+), "
    r"pruned (?P<pruned>\d+), failed (?P<failed>\d+), running (?P<running>\d+); best val_accuracy "
    r"(?P<best>\d\.\d{4}|-)\)  elapsed (?P<elapsed>\d+m\d\ds)  ETA (?P<eta>\?|\d+m\d\ds)"
)


def progress_lines(stdout: str) -> list[re.Match]:
    lines = [line for line in stdout.splitlines() if " trials " in line and " elapsed " in line]
    matches = [PROGRESS.fullmatch(line) for line in lines]
    assert lines and all(matches), lines
    return matches


def seconds(text: str) -> int:
    m, s = text[:-1].split("m")
    return 60 * int(m) + int(s)


def test_progress_is_timestamped_lines_with_counts_and_eta_when_not_a_terminal(sweep8):
    home, r, _, _ = sweep8
    lines = progress_lines(r.stdout)
    assert len(lines) >= 2
    stamps = [datetime.datetime.strptime(m["stamp"], "%Y-%m-%d %H:%M:%S") for m in lines]
    done = [int(m["done"]) for m in lines]
    elapsed = [seconds(m["elapsed"]) for m in lines]
    assert stamps == sorted(stamps) and elapsed == sorted(elapsed)
    assert done == sorted(done) and len(set(done)) >= 2 and done[-1] == TRIALS
    for m in lines:
        assert int(m["target"]) == TRIALS and m["failed"] == "0" and int(m["running"]) <= 1  # one worker
        assert int(m["complete"]) + int(m["pruned"]) == int(m["done"])
    states = [m.group(0).split(" ", 2)[2].split("  elapsed")[0] for m in lines[:-1]]
    assert all(a != b for a, b in itertools.pairwise(states))  # a line when something changed (the last: at the end)
    # ETA: '?' until a trial finished since the sweep started (on an empty study), then elapsed / trials
    # finished since the start * trials left
    for m, d, e in zip(lines, done, elapsed, strict=False):
        if d == 0:
            assert m["eta"] == "?"
            continue
        eta, new, left = seconds(m["eta"]), d, TRIALS - d
        assert e * left / new - 1 < eta <= (e + 1) * left / new, m.group(0)
    last = lines[-1]
    assert last["eta"] == "0m00s" and last["running"] == "0" and last["complete"] == str(TRIALS)
    best = max(t.values[0] for t in load_study(home).trials)
    assert last["best"] == f"{best:.4f}"


def test_eta_counts_every_trial_finished_since_the_sweep_started(tmp_path):
    cfg = config.load(write_sweep(tmp_path))
    journal = str(tmp_path / "j.journal")
    study = search.create_or_open(cfg, search.open_storage(journal), "tiny", 12)
    out = io.StringIO()  # not a terminal: timestamped lines
    progress = SweepProgress("tiny", journal, 12, cfg.study.objectives, stream=out)

    def one_trial_finishes():
        time.sleep(1.0)
        study.tell(study.ask(), [0.9, 100.0])

    one_trial_finishes()  # before the display's first tick, as when trials are quicker than 2 s
    progress.update()
    one_trial_finishes()
    progress.update()
    first, second = progress_lines(out.getvalue())
    assert first["done"] == "1" and second["done"] == "2"
    assert first["eta"] != "?"  # one trial finished in this sweep: there is a rate
    elapsed = seconds(second["elapsed"])  # >= 2: two trials took it, ten are left
    assert seconds(second["eta"]) <= 5 * (elapsed + 1), second.group(0)  # elapsed / 2 * 10, not elapsed / 1 * 10


# ------------------------------------------------------------------ 4. pruners and samplers


def sweep_cfg(tmp_path, objectives: str, **study) -> config.Config:
    study = {"pruner": "auto", **study}  # write_sweep turns pruning off unless the file names a pruner
    extra = "".join(f", {k}: {v}" for k, v in study.items())
    name = "-".join(f"{k}{v}" for k, v in study.items()) + f"-{len(objectives)}.yaml"
    return config.load(write_sweep(tmp_path, name=name, **{MULTI: objectives + extra}))


def test_make_pruner_and_make_sampler_return_the_chosen_optuna_classes(tmp_path):
    hyper = sweep_cfg(tmp_path, SINGLE, pruner="hyperband")
    p = search.make_pruner(hyper)
    assert type(p) is optuna.pruners.HyperbandPruner
    assert (p._min_resource, p._max_resource) == (2, hyper.train.epochs)  # a report per epoch: resources are epochs
    study = search.create_or_open(hyper, search.open_storage(str(tmp_path / "j.journal")), "hyper", 3)
    search.configure(study, hyper)  # what every worker does to the study it joins
    assert type(study.pruner) is optuna.pruners.HyperbandPruner
    assert type(search.make_pruner(sweep_cfg(tmp_path, SINGLE, pruner="none"))) is optuna.pruners.NopPruner
    assert type(search.make_pruner(sweep_cfg(tmp_path, SINGLE, pruner="median"))) is optuna.pruners.MedianPruner
    auto = sweep_cfg(tmp_path, SINGLE)
    assert auto.study.resolved_pruner() == "median" and type(search.make_pruner(auto)) is optuna.pruners.MedianPruner
    multi = sweep_cfg(tmp_path, MULTI)  # kdtrain's own pareto rule; Optuna's pruner stays out of the way
    assert multi.study.resolved_pruner() == "pareto" and type(search.make_pruner(multi)) is optuna.pruners.NopPruner
    off = sweep_cfg(tmp_path, MULTI, pruner="none")
    assert off.study.resolved_pruner() == "none" and type(search.make_pruner(off)) is optuna.pruners.NopPruner

    for objectives in (SINGLE, MULTI):
        rnd = sweep_cfg(tmp_path, objectives, sampler="random", seed=11)
        assert type(search.make_sampler(rnd)) is optuna.samplers.RandomSampler

        def proposals(worker_index, rnd=rnd):
            s = optuna.create_study(sampler=search.make_sampler(rnd, worker_index))
            return [s.ask().suggest_float("x", 0, 1) for _ in range(4)]

        assert proposals(0) == proposals(0) != proposals(1)  # seeded: seed + worker index
    assert type(search.make_sampler(sweep_cfg(tmp_path, SINGLE))) is optuna.samplers.TPESampler  # the default


def test_single_objective_with_pruner_none_never_prunes_a_hopeless_trial(tmp_path):
    """The median pruner's test (test_sweep) with pruner none: the lr=1e-7 trial that median prunes runs all
    its epochs and completes."""
    text = TINY_SEARCH + "  train.lr: {type: float, low: 0.001, high: 0.05, log: true}\n"
    cfg = config.load(write_sweep(tmp_path, text, **{MULTI: SINGLE + ", pruner: none", "epochs: 4,": "epochs: 10,"}))
    storage = search.open_storage(str(tmp_path / "j.journal"))
    study = search.create_or_open(cfg, storage, "noprune", 5)
    for _ in range(3):
        study.enqueue_trial(space.base_params(cfg))
    study.enqueue_trial({**space.base_params(cfg), "train.lr": 1e-7})  # learns nothing
    ctx = worker.join("noprune", str(tmp_path / "j.journal"), None, threads=1, log=lambda s: None)
    assert type(ctx.study.pruner) is optuna.pruners.NopPruner
    worker.work(ctx)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    hopeless = study.trials[4]
    assert hopeless.params["train.lr"] == 1e-7
    assert sorted(hopeless.intermediate_values) == list(range(1, 11))  # reported every epoch, never stopped
    assert hopeless.value < min(t.value for t in study.trials[:4])  # below the median at the end
    run = ctx.tracker.client.get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "COMPLETE" and "prune_reason" not in run.data.tags
    assert run.info.status == "FINISHED"
    steps = [m.step for m in ctx.tracker.client.get_metric_history(run.info.run_id, "val_accuracy") if m.step > 0]
    assert sorted(steps) == list(range(1, 11))


# ------------------------------------------------------------------ 5. max_latency_ms constraints


def test_max_latency_constraint_reaches_the_sampler_as_p50_minus_the_bound(sweep8):
    home, _, _, _ = sweep8
    study = load_study(home)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == TRIALS
    runs = mlflow_runs(home, "tiny").set_index("run_id")
    for t in complete:
        p50 = t.user_attrs["latency_ms_p50"]
        assert p50 == pytest.approx(runs.loc[t.user_attrs["mlflow_run_id"], "metrics.latency_ms_p50"], abs=1e-12)
        assert t.constraints == {"max_latency_ms": p50 - LATENCY_BOUND, "max_params": t.values[1] - PARAMS_BOUND}
        assert t.constraints["max_latency_ms"] > 0  # violated by every trial ...
    assert study.best_trials == []  # ... so Optuna, which reads them, finds no feasible trial for the front
    # the rule in general: max_<metric> is metric - bound, min_<metric> is bound - metric (<= 0: satisfied)
    assert pareto.constraint_values(
        {"max_latency_ms": 0.5, "min_throughput": 1000.0},
        {"latency_ms_p50": 0.2, "latency_ms_p95": 9.0, "throughput": 1500.0},
    ) == {"max_latency_ms": pytest.approx(-0.3), "min_throughput": -500.0}


# ------------------------------------------------------------------ 6. export


class _Linear16(nn.Module):
    """A 16 -> 4 linear layer; subclasses choose how their forward pass exports."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)


class OnnxDiffers(_Linear16):
    """Computes y in PyTorch and in TorchScript, y + 1 in the ONNX file (a module that special-cases ONNX export)."""

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


class TraceDiffers(_Linear16):
    """Data-dependent control flow: tracing on zeros freezes the negative branch into both exported files."""

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if bool(x.sum() > 0) else -y


@pytest.mark.parametrize("module, bad", [(OnnxDiffers, {"onnx"}), (TraceDiffers, {"onnx", "torchscript"})])
def test_export_refuses_a_model_whose_export_disagrees_with_pytorch(tmp_path, module, bad):
    torch.manual_seed(0)
    out = tmp_path / "out"
    with pytest.raises(KdtrainError) as e:
        export_model(module().eval(), (1, 16), out, torch.rand(64, 1, 16) + 0.1, {"trial": 7})
    msg = str(e.value)
    assert msg.startswith("exported model disagrees with PyTorch (max abs diff {") and "nothing written" in msg
    named = set(re.findall(r"'(onnx|torchscript)': ", msg))
    assert named == bad, msg
    assert not [f.name for f in out.iterdir()]  # no model.onnx, no model.ts, no card.json


def test_export_of_chosen_trials_writes_checked_files(sweep8, tmp_path):
    import onnx
    import onnxruntime as ort

    home, _, env, _ = sweep8
    r = run_cli("export", "--study", "tiny", "--trial", "0", "5", "--out", tmp_path / "exp", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "exp" / "tiny").iterdir()) == ["trial-0", "trial-5"]
    assert "max abs diff <= 1e-4 on 64 validation samples" in r.stdout
    assert "Warning" not in r.stderr, r.stderr  # torch's TorchScript deprecation notice, once per file, no more
    study = load_study(home)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    for n in (0, 5):
        folder = tmp_path / "exp" / "tiny" / f"trial-{n}"
        assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx", "model.ts"]
        assert str(folder) in r.stdout
        trial = study.trials[n]
        card = json.loads((folder / "card.json").read_text())
        assert card["trial"] == n and card["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert (
            card["metrics"]["params"] == trial.values[1] and card["student"]["width"] == trial.params["student.width"]
        )
        assert card["check"]["samples"] == 64 and card["files"] == {"onnx": "model.onnx", "torchscript": "model.ts"}
        assert max(card["check"]["max_abs_diff"].values()) <= 1e-4
        graph = onnx.load(str(folder / "model.onnx")).graph
        assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        # both files agree with the trial's student as MLflow stored it, at a batch size other than the traced one
        _, ds, model = baselines.trial_student(tracker, trial.user_attrs["mlflow_run_id"])
        x = ds.x_test[:5]
        with torch.no_grad():
            ref = model.eval()(x)
            ts = torch.jit.load(str(folder / "model.ts"))(x)
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert float((torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]) - ref).abs().max()) <= 1e-4
        assert float((ts - ref).abs().max()) <= 1e-4


# ------------------------------------------------------------------ 7. passwords and a server that says 401


@pytest.mark.parametrize(
    "text, shown",
    [
        ("postgresql://kd:s3cret@db-host/optuna", "postgresql://kd:***@db-host/optuna"),
        ("postgresql://kd:p@ss:w0rd@db-host:5432/optuna", "postgresql://kd:***@db-host:5432/optuna"),
        ("http://someone:s3cret@mlflow-host:5000", "http://someone:***@mlflow-host:5000"),
        ("postgresql://db-host/optuna?user=kd&password=s3cret", "postgresql://db-host/optuna?user=kd&password=***"),
        (
            "postgresql://db-host/optuna?password=s3cret&sslmode=require",
            "postgresql://db-host/optuna?password=***&sslmode=require",
        ),
        ("http://mlflow-host:5000/?PASSWORD=s3cret", "http://mlflow-host:5000/?PASSWORD=***"),
        ("mysql://h/db?pwd=s3cret", "mysql://h/db?pwd=***"),
        ("mysql://h/db?passwd=s3cret", "mysql://h/db?passwd=***"),
        (
            "cannot open 'postgresql://kd:s3cret@h/db' nor http://h/?password=s3cret (timeout)",
            "cannot open 'postgresql://kd:***@h/db' nor http://h/?password=*** (timeout)",
        ),
        ("postgresql://kd@db-host/optuna", "postgresql://kd@db-host/optuna"),  # no password: unchanged
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ],
)
def test_redact_hides_user_info_and_query_passwords(text, shown):
    assert redact(text) == shown
    assert "s3cret" not in redact(text) and "p@ss" not in redact(text)


@pytest.fixture
def clean_env(monkeypatch):
    """check_reachable moves URL credentials into MLflow's variables: undo that after the test; keep any proxy
    away from 127.0.0.1."""
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(k, "127.0.0.1,localhost")


@contextlib.contextmanager
def http_server(status_for):
    """A real HTTP server on 127.0.0.1 in a thread; status_for(headers) -> the status of every GET."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            code = status_for(self.headers)
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("status", [401, 403])
def test_a_tracking_server_refusing_credentials_is_one_line_without_the_password(clean_env, status):
    with http_server(lambda headers: status) as (host, seen):
        for url in (f"http://kd:{SECRET}@{host}", f"http://{host}/?password={SECRET}"):
            with pytest.raises(KdtrainError) as e:
                check_reachable(url)
            msg = str(e.value)
            assert "\n" not in msg and SECRET not in msg, msg
            assert f"the MLflow tracking server http://{host}" in msg and f"(HTTP {status})" in msg
            assert "refused the credentials" in msg and "MLFLOW_TRACKING_USERNAME" in msg
    assert len(seen) == 2 and seen[0][0] == "/health" and seen[1][0].endswith("/health")  # one request each
    # the user:pass of the first URL went to MLflow's own variables, not into any message
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "kd" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET


def test_kdtrain_sweep_stops_before_writing_when_the_server_says_401(tmp_path, capsys, clean_env):
    p = write_sweep(tmp_path)
    with http_server(lambda headers: 401) as (host, _):
        err = refused(
            tmp_path,
            capsys,
            [p, "--tracking-uri", f"http://kd:{SECRET}@{host}"],
            1,
            [f"kdtrain: error: the MLflow tracking server http://{host} refused the credentials (HTTP 401)"],
            secret=SECRET,
        )
    assert len(err.strip().splitlines()) == 1


def test_correct_credentials_pass_the_reachability_check(clean_env):
    good = "Basic " + base64.b64encode(f"kd:{SECRET}".encode()).decode()
    with http_server(lambda headers: 200 if headers.get("Authorization") == good else 401) as (host, _):
        check_reachable(f"http://kd:{SECRET}@{host}")


# ------------------------------------------------------------------ 8. threads split between workers


def test_two_workers_each_get_half_the_threads(tmp_path):
    p = write_sweep(tmp_path, **{"lr: 0.01, threads: 1}": "lr: 0.01}", "trials: 3}": "trials: 4, pruner: none}"})
    assert config.load(p).train.threads == 0  # the file leaves the threads to kdtrain
    home = tmp_path / "home"
    r = run_cli(
        "sweep",
        p,
        "--workers",
        "2",
        "--no-report",
        env={"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(tmp_path / "data")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert f"2 worker(s), {expected} CPU thread(s) each; this process and 1 more, logs in {home / 'logs'}" in r.stdout
    log = (home / "logs" / "tiny-worker1.log").read_text()  # the sweep's own process is worker 0
    m = re.search(r"worker pid (\d+) on \S+ joined study tiny", log)
    assert m, log
    study = load_study(home)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 4 and len({t.user_attrs[search.T_PID] for t in done} - {int(m[1])}) <= 1  # two workers
    df = mlflow_runs(home, "tiny")
    trained = df[df["tags.kdtrain.role"].isin(["student", "baseline"])]
    assert len(trained) >= 5 and (trained["params.train.threads"] == str(expected)).all()


# ------------------------------------------------------------------ 9. epochs wait for a latency measurement

HOLDER = """
import sys, time
from kdtrain.shared import cpu_room
with cpu_room(exclusive=True):
    print("held", flush=True)
    time.sleep(1.5)
    print(repr(time.time()), flush=True)  # the last moment inside: released right after
"""

TRAINER = """
import contextlib, json, sys, time
from pathlib import Path
from kdtrain import config, data
from kdtrain.distill.student import distill_student
from kdtrain.shared import cpu_room

cfg = config.replace(config.load(sys.argv[1]), {"kd.alpha": 0.0, "train.epochs": 1000000})
ds, stop, intervals, began = data.load(cfg.data), Path(sys.argv[2]), [], time.time()

@contextlib.contextmanager
def guard():  # the worker's per-epoch guard, with the time spent inside it recorded
    with cpu_room():
        start = time.time()
        yield
        intervals.append((start, time.time()))

class Stop(Exception):
    pass

def on_epoch(s):
    if len(intervals) == 1:
        print("training", flush=True)
    # stop once an epoch has started after the measurement ended (or after 2 minutes, whatever happens)
    if (stop.exists() and intervals[-1][0] >= float(stop.read_text())) or time.time() - began > 120:
        raise Stop

try:
    distill_student(cfg, ds, {}, on_epoch=on_epoch, epoch_guard=guard)
except Stop:
    pass
print(json.dumps(intervals), flush=True)
"""


def test_an_epoch_guard_waits_while_another_process_measures(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "held"
        with cpu_room():  # what every training epoch enters
            entered = time.time()
        released = float(holder.stdout.readline())
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert entered >= released


def test_training_epochs_of_another_process_are_held_during_a_measurement(tmp_path):
    p = write_sweep(tmp_path)
    stop = tmp_path / "stop"
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(p), str(stop)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    held = []

    def measure():
        with cpu_room(exclusive=True):  # what a latency measurement takes
            held.append(time.time())
            time.sleep(1.0)
            held.append(time.time())

    try:
        assert trainer.stdout.readline().strip() == "training"  # epochs are running back to back
        m = threading.Thread(target=measure, daemon=True)
        m.start()
        m.join(timeout=60)
        assert not m.is_alive(), "the measurement never got the cores: the turnstile let epochs starve it"
        tmp = tmp_path / "stop.tmp"
        tmp.write_text(repr(held[1]))
        os.replace(tmp, stop)
        out, _ = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert trainer.returncode == 0
    intervals = json.loads(out.strip().splitlines()[-1])
    start, end = held
    before = [iv for iv in intervals if iv[1] <= start]
    after = [iv for iv in intervals if iv[0] >= end]
    assert before and after  # training before the measurement, and again after it
    assert len(before) + len(after) == len(intervals), "an epoch ran while the measurement held the cores"
