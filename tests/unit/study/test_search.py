"""Optuna behind kdtrain.study.search: the pruner and sampler a sweep file chooses, constraints as the sampler
reads them, the Optuna version kdtrain is declared for, and search as the only module that drives a trial."""

import optuna
import pytest
from support import TINY_SEARCH, load_study, mlflow_runs, write_sweep
from support.sweep8 import LATENCY_BOUND, PARAMS_BOUND, TRIALS

from kdtrain import config, pareto
from kdtrain.study import search, space
from kdtrain.sweep import session, worker

MULTI = "objectives: {val_accuracy: maximize, params: minimize}"


SINGLE = "objectives: {val_accuracy: maximize}"


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
    ctx = session.join("noprune", str(tmp_path / "j.journal"), None, threads=1, log=lambda s: None)
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


def test_optuna_is_declared_at_the_major_version_whose_api_kdtrain_calls():
    """pyproject said optuna>=4.0, but Trial.set_constraint exists only in Optuna 5 (on 4.9 every trial of a study
    with constraints failed with AttributeError)."""
    import optuna
    import tomllib
    from packaging.requirements import Requirement
    from support import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [Requirement(d).specifier for d in deps if Requirement(d).name == "optuna"]
    assert "4.9" not in spec and "5.0" in spec and "6.0" not in spec
    assert optuna.__version__ in spec and hasattr(optuna.Trial, "set_constraint")


def test_only_kdtrain_search_drives_optuna_trials():
    """The worker called trial.report, should_prune, set_user_attr and set_constraint itself; only kdtrain.study.search
    (and kdtrain.study.space's suggest, which search's trials are handed to) may call a trial's methods."""
    import ast

    from support import ROOT

    # the wings that once held worker.py, run.py, cli.py, report.py, ship.py and export.py, every module of them
    wings = ("sweep", "distill", "cli", "report", "ship", "deploy")
    modules = sorted(str(p.relative_to(ROOT / "kdtrain")) for w in wings for p in (ROOT / "kdtrain" / w).glob("*.py"))
    assert "sweep/worker.py" in modules and "distill/student.py" in modules and "deploy/export.py" in modules
    for module in modules:
        tree = ast.parse((ROOT / "kdtrain" / module).read_text())
        calls = [
            f"{module}:{n.lineno}: trial.{n.func.attr}()"
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "trial"
        ]
        imports = [
            f"{module}:{n.lineno}: imports optuna"
            for n in ast.walk(tree)
            if (isinstance(n, (ast.Import, ast.ImportFrom)) and any(a.name.split(".")[0] == "optuna" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "optuna")
        ]
        assert calls + imports == [], calls + imports
