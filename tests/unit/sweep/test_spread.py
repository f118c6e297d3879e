"""study.spread: the trials after the base trial train the base settings at sizes spread across the searched range,
so that the front spans the sizes from its first trials (what B7 measures), and a resumed study does not train them
again."""

import optuna
import pytest
from support import ROOT, TINY_SEARCH, run_cli, write_sweep

from kdtrain.config import sweepfile
from kdtrain.study import first_trials, search, space


def _quickstart(**values):
    return sweepfile.replace(sweepfile.load(ROOT / "sweeps" / "quickstart.yaml"), values)


def test_the_quickstart_spreads_its_widths_about_a_doubling_of_parameters_apart_smallest_first():
    cfg = _quickstart()
    # width 2..32 on a log scale, a factor sqrt(2) apart: 2, 3, 4, 6, 8 (the base trial's), 11, 16, 23, 32; a third
    # of 20 trials caps them at 6
    assert space.spread_points(cfg) == [{"student.width": w} for w in (2, 3, 4, 6, 11, 16)]
    assert len(space.spread_points(_quickstart(**{"study.trials": 9}))) == 3
    assert space.spread_points(_quickstart(**{"study.trials": 2})) == []


@pytest.mark.parametrize(
    "values",
    [
        {"study.spread": False},
        {"study.objectives": {"val_accuracy": "maximize"}},  # no cost: nothing to spread along
    ],
)
def test_no_spread_when_turned_off_or_without_a_cost_objective(values):
    assert space.spread_points(_quickstart(**values)) == []


def test_width_and_depth_searched_together_are_spread_at_the_same_quantile():
    cfg = _quickstart(**{"student.arch": "mlp"})
    raw = cfg.to_dict()
    raw["search"]["student.depth"] = {"type": "int", "low": 1, "high": 4}
    points = space.spread_points(sweepfile.from_dict(raw))
    assert points[0] == {"student.width": 2, "student.depth": 1}
    widths = [p["student.width"] for p in points]
    depths = [p["student.depth"] for p in points]
    assert widths == sorted(widths) and depths == sorted(depths) and depths[-1] > 1


def test_a_sweep_trains_the_spread_sizes_at_the_base_settings_once_even_when_resumed(tmp_path):
    env = {"KDTRAIN_HOME": str(tmp_path / "home"), "KDTRAIN_DATA": str(tmp_path / "data")}
    p = write_sweep(tmp_path, TINY_SEARCH, **{"trials: 3": "trials: 6, spread: true"})
    cfg = sweepfile.load(p)
    points = space.spread_points(cfg)
    assert points == [{"student.width": 2}, {"student.width": 3}]  # 2..16: 2, 3, 4, 6, 8 (base), ...; 6 // 3 = 2
    r = run_cli("sweep", p, "--workers", "1", "--no-report", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    storage = search.open_storage(str(tmp_path / "home" / "optuna.journal"))
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    base = space.base_params(cfg)
    assert [t.params for t in trials[:3]] == [base, {**base, **points[0]}, {**base, **points[1]}]
    assert [t.user_attrs[search.T_REFERENCE] for t in trials[1:3]] == [first_trials.SPREAD] * 2
    assert trials[3].user_attrs.get(search.T_REFERENCE) != first_trials.SPREAD  # the sampler's, or a steered teacher's
    # resumed for more trials: the spread sizes are not trained again
    r = run_cli("sweep", p, "--trials", "8", "--workers", "1", "--no-report", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 8
    assert sum(t.user_attrs.get(search.T_REFERENCE) == first_trials.SPREAD for t in study.trials) == 2


def test_a_spread_size_asked_by_one_worker_is_not_given_to_another(tmp_path):
    """A worker asks its trial under the study's lock but suggests its params after: a trial that is RUNNING without
    params yet still holds its spread size (its queued params), so the next worker gets the next size."""
    from types import SimpleNamespace

    cfg = _quickstart()
    study = search.create_or_open(cfg, search.open_storage(str(tmp_path / "j.journal")), "q", 20)
    ctx = SimpleNamespace(cfg=cfg, study=study)
    fixed, why = first_trials.steer(ctx)
    assert fixed["student.width"] == 2 and why == first_trials.SPREAD
    study.enqueue_trial(fixed, user_attrs={search.T_REFERENCE: why})
    study.ask(), study.ask()  # the base trial, then the spread one: both RUNNING, neither has suggested yet
    assert first_trials.steer(ctx)[0]["student.width"] == 3
