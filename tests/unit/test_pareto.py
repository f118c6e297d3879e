"""The Pareto pruner's rule, the hypervolume (against brute force) and their config (CPU only, no training)."""

import itertools
import random

import pytest

from kdtrain import config, pareto
from kdtrain.config import ConfigError
from kdtrain.pareto import Course, dominated_by
from kdtrain.study import space

ACC_PARAMS = {"val_accuracy": "maximize", "params": "minimize"}


def rule(curve, finished, costs=None, objectives=ACC_PARAMS, margin=0.02, warmup=1):
    return dominated_by(costs or {"params": 200}, curve, finished, objectives, margin, warmup)


# --------------------------------------------------------------------------- the rule


def test_prunes_a_trial_behind_a_cheaper_finished_one_and_reports_the_lead():
    cheap = Course(0, {"params": 100}, [0.5, 0.75, 0.875, 0.9375])
    hit = rule([0.25, 0.5, 0.5], [cheap])
    assert hit is not None
    course, lead = hit
    assert course is cheap and lead == pytest.approx(0.375)  # 0.875 at epoch 3 - best so far 0.5


def test_the_largest_lead_is_reported_and_equal_cost_counts_as_cheap():
    small = Course(0, {"params": 100}, [0.5, 0.625, 0.75])
    tie = Course(1, {"params": 200}, [0.5, 0.875, 0.875])  # same cost: ties count
    costly = Course(2, {"params": 300}, [1.0, 1.0, 1.0])  # more expensive: never prunes
    course, lead = rule([0.25, 0.5], [small, tie, costly])
    assert course is tie and lead == pytest.approx(0.375)
    assert rule([0.25, 0.5], [costly]) is None


def test_keeps_a_trial_cheaper_than_every_finished_one():
    finished = [Course(i, {"params": 100 + i}, [0.99] * 5) for i in range(3)]
    assert rule([0.01] * 4, finished, costs={"params": 50}) is None


def test_keeps_everything_during_the_warm_up():
    cheap = Course(0, {"params": 100}, [0.99] * 10)
    for epochs in range(4):
        assert rule([0.0] * epochs, [cheap], warmup=3) is None
    assert rule([0.0] * 4, [cheap], warmup=3) is not None  # the first epoch after it


def test_keeps_a_trial_when_the_lead_is_below_the_margin():
    cheap = Course(0, {"params": 100}, [0.5, 0.56, 0.9])
    assert rule([0.4, 0.55], [cheap], margin=0.02) is None  # leads by 0.01 at epoch 2
    assert rule([0.4, 0.55], [cheap], margin=0.005) is not None


def test_keeps_a_trial_whose_rival_did_not_end_ahead():
    faded = Course(0, {"params": 100}, [0.5, 0.9, 0.5])  # ahead at epoch 2, ended level with the trial
    assert rule([0.4, 0.5], [faded]) is None


def test_a_late_bloomer_seen_before_protects_a_slow_start():
    rival = Course(0, {"params": 100}, [0.5, 0.6, 0.8])
    assert rule([0.3, 0.4], [rival]) is not None  # 0.8 >= 0.4 + late gain 0.2 (the rival's own) + 0.02
    bloomer = Course(1, {"params": 500}, [0.1, 0.2, 0.9])  # gained 0.7 after epoch 2
    assert rule([0.3, 0.4], [rival, bloomer]) is None  # 0.4 + 0.7 could still beat the rival's 0.8


def test_uses_the_best_accuracy_so_far_not_the_last():
    cheap = Course(0, {"params": 100}, [0.5, 0.7, 0.8, 0.85])
    assert rule([0.3, 0.9, 0.4], [cheap]) is None  # dipped to 0.4 after 0.9: 0.8 does not beat 0.9
    assert rule([0.3, 0.4, 0.4], [cheap]) is not None


def test_cheaper_on_one_cost_but_dearer_on_another_does_not_prune():
    objectives = {"val_accuracy": "maximize", "params": "minimize", "latency_ms_p50": "minimize"}
    costs = {"params": 200, "latency_ms_p50": 1.0}
    mixed = Course(0, {"params": 100, "latency_ms_p50": 5.0}, [0.99] * 4)
    both = Course(1, {"params": 100, "latency_ms_p50": 0.5}, [0.99] * 4)
    assert rule([0.1] * 3, [mixed], costs=costs, objectives=objectives) is None
    assert rule([0.1] * 3, [mixed, both], costs=costs, objectives=objectives)[0] is both


def test_higher_throughput_counts_as_cheaper():
    objectives = {"val_accuracy": "maximize", "throughput": "maximize"}
    fast = Course(0, {"throughput": 1000.0}, [0.99] * 4)
    slow = Course(1, {"throughput": 100.0}, [0.99] * 4)
    mine = {"throughput": 500.0}
    assert rule([0.1] * 3, [fast], costs=mine, objectives=objectives)[0] is fast
    assert rule([0.1] * 3, [slow], costs=mine, objectives=objectives) is None


def test_finished_trials_with_shorter_curves_are_ignored():
    short = Course(0, {"params": 100}, [0.99, 0.99])
    assert rule([0.1] * 3, [short]) is None
    assert rule([0.1] * 2, [short]) is not None


def test_as_cheap_ignores_accuracy():
    assert pareto.as_cheap({"params": 1, "val_accuracy": 0.0}, {"params": 2, "val_accuracy": 1.0}, ACC_PARAMS)


# --------------------------------------------------------------------------- prunable


@pytest.mark.parametrize(
    "objectives, expected",
    [
        (ACC_PARAMS, True),
        ({"val_accuracy": "maximize", "params": "minimize", "throughput": "maximize"}, True),
        ({"val_accuracy": "maximize", "latency_ms_p95": "minimize"}, True),
        ({"val_accuracy": "maximize"}, False),
        ({"params": "minimize"}, False),
        ({"val_accuracy": "minimize", "params": "minimize"}, False),
        ({"val_accuracy": "maximize", "test_accuracy": "maximize"}, False),
        ({"val_accuracy": "maximize", "params": "minimize", "test_accuracy": "maximize"}, False),
        ({"params": "minimize", "latency_ms_p50": "minimize"}, False),
    ],
)
def test_prunable(objectives, expected):
    assert pareto.prunable(objectives) is expected


# --------------------------------------------------------------------------- hypervolume


def brute_force(points, reference):
    """Unit cells of the grid from 0 to the reference with a point at or below their lower corner."""
    return sum(
        any(all(p_i <= c_i for p_i, c_i in zip(p, cell, strict=False)) for p in points)
        for cell in itertools.product(*(range(r) for r in reference))
    )


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_hypervolume_matches_brute_force(dims, seed):
    rng = random.Random(seed)
    reference = [rng.randint(3, 7) for _ in range(dims)]
    points = [[rng.randint(0, r + 1) for r in reference] for _ in range(rng.randint(1, 9))]
    points += [list(points[0]), [r + 1 for r in reference]]  # a duplicate and a point beyond the reference
    points.append([min(x + 1, r + 1) for x, r in zip(points[0], reference, strict=False)])  # dominated by points[0]
    rng.shuffle(points)
    assert pareto.hypervolume(points, reference) == brute_force(points, reference)


def test_hypervolume_small_cases():
    assert pareto.hypervolume([], [5, 5]) == 0.0
    assert pareto.hypervolume([[3], [5], [12]], [10]) == 7
    assert pareto.hypervolume([[5, 5]], [5, 5]) == 0.0  # on the reference: adds nothing
    assert pareto.hypervolume([[1, 3], [3, 1]], [4, 4]) == 5  # two 3x1 strips overlapping in one cell


ACC_PARAMS_BOX = {"ideal": [1.0, 100.0], "reference": [0.0, 10000.0], "log": [False, True]}
"""Accuracy from 1 down to 0; params on a log scale from 100 to 10,000 (a decade is half the axis)."""


def test_normalize_puts_the_ideal_at_0_and_the_reference_at_1():
    assert pareto.normalize([1.0, 100.0], ACC_PARAMS_BOX) == pytest.approx([0.0, 0.0])
    assert pareto.normalize([0.0, 10000.0], ACC_PARAMS_BOX) == pytest.approx([1.0, 1.0])
    assert pareto.normalize([0.75, 1000.0], ACC_PARAMS_BOX) == pytest.approx([0.25, 0.5])  # one decade of two
    assert pareto.normalize([0.75, 50.0], ACC_PARAMS_BOX) == pytest.approx([0.25, 0.0])  # beyond the ideal


def test_study_hypervolume_of_one_point_and_a_dominated_one():
    assert pareto.study_hypervolume([(0.75, 1000)], ACC_PARAMS_BOX) == pytest.approx(0.75 * 0.5)
    two = [(0.75, 1000), (0.5, 5000)]  # the second is less accurate and costlier
    assert pareto.study_hypervolume(two, ACC_PARAMS_BOX) == pytest.approx(0.375)
    staircase = [(0.75, 1000), (0.5, 100)]  # 0.5 over the whole axis, + 0.25 over the upper half
    assert pareto.study_hypervolume(staircase, ACC_PARAMS_BOX) == pytest.approx(0.5 + 0.25 * 0.5)
    assert pareto.study_hypervolume([], ACC_PARAMS_BOX) == 0.0


def test_box_spans_the_cheapest_to_the_costliest_student():
    objectives = {"val_accuracy": "maximize", "params": "minimize", "throughput": "maximize"}
    b = pareto.box(objectives, {"params": 110, "throughput": 1000.0}, {"params": 1000, "throughput": 11.0})
    assert b["ideal"] == pytest.approx([1.0, 100.0, 1100.0])
    assert b["reference"] == pytest.approx([0.0, 1100.0, 10.0])
    assert b["log"] == [False, True, True]
    # the cheapest and the costliest students both add volume
    assert pareto.study_hypervolume([(0.5, 1000, 11.0)], b) > 0
    assert pareto.normalize([0.5, 110, 1000.0], b)[1:] == pytest.approx(
        [0.0397, 0.0203], abs=1e-3
    )  # ln 1.1 / ln 11, ln 1.1 / ln 110


def test_history_accumulates_compute_and_never_loses_volume():
    runs = [(10.0, (0.5, 5000)), (5.0, None), (20.0, (0.75, 1000)), (3.0, (0.25, 9000)), (None, (0.5, 100))]
    out = pareto.history(runs, ACC_PARAMS_BOX)
    assert [c for c, _ in out] == pytest.approx([10, 15, 35, 38, 38])
    volumes = [v for _, v in out]
    assert volumes[0] > 0 and volumes[1] == volumes[0]  # pruned: compute, no volume
    assert volumes[2] == pytest.approx(0.375) and volumes[3] == pytest.approx(volumes[2])  # dominated: nothing added
    assert volumes[4] == pytest.approx(0.5 + 0.25 * 0.5)
    assert all(a <= b for a, b in itertools.pairwise(volumes))


# --------------------------------------------------------------------------- config and the space


def sweep(study=None, search=None, **student):
    return config.from_dict(
        {
            "data": {"name": "synthetic"},
            "teachers": [{"name": "t", "arch": "mlp"}],
            "student": {"arch": "mlp", **student},
            "study": study or {},
            "search": search or {},
        }
    )


@pytest.mark.parametrize(
    "objectives, expected",
    [
        ({"val_accuracy": "maximize"}, "median"),
        ({"params": "minimize"}, "median"),
        (ACC_PARAMS, "pareto"),
        ({"val_accuracy": "maximize", "flops": "minimize", "throughput": "maximize"}, "pareto"),
        ({"params": "minimize", "latency_ms_p50": "minimize"}, "none"),
        ({"val_accuracy": "minimize", "params": "minimize"}, "none"),
    ],
)
def test_auto_pruner_resolves_by_objectives(objectives, expected):
    assert sweep({"objectives": objectives}).study.resolved_pruner() == expected


def test_explicit_pruners_are_kept():
    assert sweep({"objectives": ACC_PARAMS, "pruner": "pareto"}).study.resolved_pruner() == "pareto"
    assert sweep({"objectives": ACC_PARAMS, "pruner": "none"}).study.resolved_pruner() == "none"
    assert sweep({"pruner": "hyperband"}).study.resolved_pruner() == "hyperband"


@pytest.mark.parametrize(
    "study, text",
    [
        ({"pruner": "pareto"}, "study.pruner: pareto needs val_accuracy (maximize) plus cost objectives"),
        ({"pruner": "pareto", "objectives": {"params": "minimize", "flops": "minimize"}}, "study.pruner: pareto"),
        (
            {"pruner": "median", "objectives": ACC_PARAMS},
            "study.pruner: median prunes single-objective studies only; this study has 2 objectives",
        ),
        ({"pruner": "hyperband", "objectives": ACC_PARAMS}, "study.pruner: hyperband prunes single-objective"),
    ],
)
def test_pruners_that_do_not_fit_the_objectives_are_refused(study, text):
    with pytest.raises(ConfigError) as e:
        sweep(study)
    assert text in str(e.value) and e.value.exit_code == 2


def test_prune_warmup():
    assert sweep().study.prune_warmup(60) == 12
    assert sweep().study.prune_warmup(3) == 1  # never below one epoch by default
    assert sweep({"prune_warmup_epochs": 5}).study.prune_warmup(60) == 5
    assert sweep({"prune_warmup_epochs": 0}).study.prune_warmup(60) == 0


def test_extreme_students_take_the_ends_of_the_searched_width():
    cfg = sweep(search={"student.width": {"type": "int", "low": 2, "high": 32}}, width=8)
    assert space.extreme_students(cfg, "high") == [{"student.arch": "mlp", "student.width": 32}]
    assert space.extreme_students(cfg, "low") == [{"student.arch": "mlp", "student.width": 2}]
    assert space.extreme_students(sweep(), "high") == [{"student.arch": "mlp"}]


def test_extreme_students_give_one_override_per_searched_arch():
    cfg = sweep(
        search={
            "student.arch": {"type": "categorical", "choices": ["mlp", "cnn1d"]},
            "student.width": {"type": "categorical", "choices": [16, 64, 8]},
        }
    )
    assert space.extreme_students(cfg, "high") == [
        {"student.arch": "mlp", "student.width": 64},
        {"student.arch": "cnn1d", "student.width": 64},
    ]
    assert space.extreme_students(cfg, "low")[1] == {"student.arch": "cnn1d", "student.width": 8}
