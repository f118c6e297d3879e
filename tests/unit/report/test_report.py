import itertools

import numpy as np
import pandas as pd
import pytest

from kdtrain.cli.commands import main
from kdtrain.pareto import front_mask
from kdtrain.report import build


def pareto_mask(values, directions):
    return np.array(front_mask(np.asarray(values).tolist(), directions), dtype=bool)


def brute_force(points, directions):
    """Textbook definition, one pair at a time."""

    def better_or_equal(a, b, d):
        return a >= b if d == "maximize" else a <= b

    def strictly_better(a, b, d):
        return a > b if d == "maximize" else a < b

    front = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if (
                i != j
                and all(better_or_equal(q[k], p[k], d) for k, d in enumerate(directions))
                and any(strictly_better(q[k], p[k], d) for k, d in enumerate(directions))
            ):
                dominated = True
                break
        front.append(not dominated)
    return np.array(front)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_matches_brute_force_on_random_points(k, seed):
    g = np.random.default_rng(seed)
    for directions in itertools.product(["maximize", "minimize"], repeat=k):
        # small integer grids make ties and exact duplicates common
        pts = g.integers(0, 6, size=(int(g.integers(1, 40)), k)).astype(float)
        assert (pareto_mask(pts, list(directions)) == brute_force(pts.tolist(), directions)).all()


def test_duplicates_are_all_on_the_front():
    pts = [[0.9, 100], [0.9, 100], [0.8, 200]]
    assert pareto_mask(pts, ["maximize", "minimize"]).tolist() == [True, True, False]


def test_empty():
    assert pareto_mask(np.zeros((0, 2)), ["maximize", "minimize"]).tolist() == []


# ------------------------------------------------------------------ the headline's numbers

TEACHERS = [  # name, val_accuracy, params, latency_ms_p50, throughput
    ("wide", 0.9625, 120_000, 0.80, 9_000.0),
    ("conv", 0.9000, 8_000, 0.30, 30_000.0),
]
STUDENTS = [  # trial, val, test, params, latency_ms_p50, throughput, width, kd_gain_test, baseline_test_accuracy_std
    (0, 0.9000, 0.8900, 1_200, 0.05, 200_000.0, 4, 0.01, 0.01),  # below 95% of the best teacher (0.914375)
    (1, 0.9250, 0.9100, 4_500, 0.07, 150_000.0, 8, 0.09, 0.01),  # keeps 95%; not its width's best on val
    (2, 0.9375, 0.9300, 4_500, 0.08, 140_000.0, 8, 0.04, 0.01),  # as small as trial 1 and more accurate
    (3, 0.9500, 0.9400, 16_000, 0.10, 90_000.0, 16, -0.01, 0.01),
    (4, 0.9750, 0.9600, 130_000, 0.90, 8_000.0, 64, 0.10, 0.06),  # the most accurate, but larger than the teacher
    (5, 0.9625, 0.9500, 60_000, 0.40, 20_000.0, 32, 0.06, 0.02),  # the most accurate smaller than the teacher
]


def headline_study(students=STUDENTS, teachers=TEACHERS, name="hl") -> build.StudyData:
    """A StudyData shaped as report.load builds it from MLflow: metrics under their names, the profile params as
    MLflow's strings, the teacher's run name with its prefix, baselines with their seeds."""
    s = pd.DataFrame(
        students,
        columns=[
            "trial",
            "val_accuracy",
            "test_accuracy",
            "params",
            "latency_ms_p50",
            "throughput",
            "student.width",
            "kd_gain_test",
            "baseline_test_accuracy_std",
        ],
    )
    s["trial"] = s["trial"].astype("Int64")
    s["run_id"] = [f"{t:02d}" + "ab" * 15 for t in s["trial"]]
    s["kd_gain"] = s["kd_gain_test"]
    s["baseline_test_accuracy"] = s["test_accuracy"] - s["kd_gain_test"]
    s["kd_gain_sigma"] = s["kd_gain"] / s["baseline_test_accuracy_std"]
    s["profile.throughput_batch"], s["profile.backend"] = "64", "onnxruntime"
    t = pd.DataFrame(teachers, columns=["name", "val_accuracy", "params", "latency_ms_p50", "throughput"])
    t["tag:mlflow.runName"] = "teacher-" + t.pop("name")
    baselines = pd.DataFrame({"student.width": sorted(set(s["student.width"])), "seeds": "0,1,2"})
    return build.StudyData(
        name, {"val_accuracy": "maximize", "params": "minimize"}, s, t, baselines, {}, 0.0, {}, pd.DataFrame(), "", None
    )


def test_headline_states_the_smallest_and_the_best_smaller_student_with_their_numbers():
    d = headline_study()
    # expected, row by row from the tables above (not through report's pandas code)
    best_t = max(TEACHERS, key=lambda r: r[1])
    name, t_val, t_params, t_lat, t_thr = best_t
    keep = [r for r in STUDENTS if r[1] >= 0.95 * t_val]
    smallest = min(keep, key=lambda r: (r[3], -r[1]))  # fewest params; among equals, the most accurate
    best_smaller = max((r for r in STUDENTS if r[3] < t_params), key=lambda r: r[1])
    assert (name, smallest[0], best_smaller[0]) == ("wide", 2, 5)  # the data exercises the tie and the filters

    lines = build._headline_text(d)
    assert lines[0] == f"Best teacher: wide at {t_val:.4f} val accuracy, {t_params:,} params."
    assert lines[0] == "Best teacher: wide at 0.9625 val accuracy, 120,000 params."
    trial, val, test, params, lat, thr = smallest[:6]
    assert lines[1].startswith("The smallest student keeping 95% of its accuracy is trial 2: ")
    for part in (
        f"trial {trial}: {val:.4f} val / {test:.4f} test accuracy",
        f"({100 * val / t_val:.1f}% of the teacher)",
        f"{t_params / params:.1f}x smaller",
        f"{t_lat / lat:.2f}x faster at batch 1",
        f"{thr / t_thr:.1f}x the throughput at batch 64 (onnxruntime)",
    ):
        assert part in lines[1], (part, lines[1])
    # the same numbers worked by hand: 0.9375 / 0.9625, 120000 / 4500, 0.80 / 0.08, 140000 / 9000
    assert (
        "0.9375 val / 0.9300 test accuracy (97.4% of the teacher), 26.7x smaller, 10.00x faster at batch 1 "
        "and 15.6x the throughput at batch 64 (onnxruntime)."
    ) in lines[1]
    b_trial, b_val, b_params = best_smaller[0], best_smaller[1], best_smaller[3]
    assert lines[2] == (
        f"The most accurate student smaller than the teacher is trial {b_trial}: {b_val:.4f} val "
        f"accuracy, {t_params / b_params:.1f}x smaller."
    )
    assert "is trial 5: 0.9625 val accuracy, 2.0x smaller." in lines[2]

    h = build.headline(d)  # the dict behind the text, which front_table and the CLI read
    assert (h["smallest"]["trial"], h["best_smaller"]["trial"]) == (2, 5)
    assert h["smallest"]["run_id"] == d.students.loc[2, "run_id"]
    assert h["smallest"]["pct_of_teacher"] == pytest.approx(100 * 0.9375 / 0.9625)


def test_headline_verdict_names_the_best_width_beyond_noise():
    """The last headline line: per width the trial best on val, its test gain against 2x the baseline's spread."""
    d = headline_study()
    best_per_width = {}
    for r in STUDENTS:
        if r[6] not in best_per_width or r[1] > best_per_width[r[6]][1]:
            best_per_width[r[6]] = r
    won = {w: r for w, r in best_per_width.items() if r[7] > 0 and r[7] > 2 * r[8]}
    top = max(won.values(), key=lambda r: r[7])
    assert sorted(won) == [8, 32] and top[0] == 5  # trial 1's +9 points is not its width's pick (val)
    verdict = build._headline_text(d)[-1]
    assert verdict.startswith(
        f"Distillation beat training alone beyond seed noise at widths "
        f"{', '.join(map(str, sorted(won)))}: best at width {top[6]}, trial {top[0]}, "
        f"{100 * top[7]:+.1f} points on test over the baseline's mean over 3 seeds "
        f"(its spread: {100 * top[8]:.1f} points)."
    )
    assert "width 32, trial 5, +6.0 points on test" in verdict and "kdtrain confirm hl --trial 5" in verdict


def test_headline_without_a_student_at_95_percent_or_smaller_than_the_teacher():
    big_and_weak = [(7, 0.80, 0.79, 150_000, 1.0, 5_000.0, 64, 0.0, 0.01)]
    lines = build._headline_text(headline_study(big_and_weak))
    assert lines[:2] == [
        "Best teacher: wide at 0.9625 val accuracy, 120,000 params.",
        "No student reaches 95% of the teacher's accuracy yet.",
    ]
    assert not any("smaller than the teacher" in line for line in lines)
    assert "trial 7" not in " ".join(lines[:2])
    # a student exactly at the bar keeps it (0.95 x 0.8 = 0.76)
    at_bar = [(8, 0.76, 0.75, 100, 0.1, 1.0, 4, 0.0, 0.01)]
    lines = build._headline_text(headline_study(at_bar, [("t", 0.8, 1_000, 1.0, 1.0)]))
    assert "keeping 95% of its accuracy is trial 8: 0.7600 val" in lines[1]
    assert build._headline_text(headline_study([])) == ["No complete trials or no teacher yet."]


@pytest.mark.parametrize("low, high", [(3e5, 2e7), (5e3, 4e6), (2e4, 9e4)])
def test_a_parameters_axis_writes_its_ticks_in_one_style(low, high):
    """Issue 33 item 13: the parameters axis mixed "1,000,000" with "1e7" (digits below 10 million, powers above);
    every tick of one axis now reads the same way (5k, 200k, 1M, 30M)."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdtrain.report import plots

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter([low, high], [0.5, 0.9])
    ax.set_xscale("log")
    plots.log_ticks(ax.xaxis)
    plots.declutter(fig)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert len(labels) >= 2, labels
    assert all(re.fullmatch(r"\d+(\.\d+)?[kMG]|\d{1,3}", lab) for lab in labels), labels
    assert not any("e" in lab or "," in lab for lab in labels), labels


def test_the_importances_picture_says_it_is_a_hint(tmp_path):
    """Issue 33 item 13: Optuna's importances over a handful of trials, confounded with width, carried no caveat."""
    html = build._figures(["importances", "history"])
    assert "not a measured effect" in html.split("history.png")[0] and html.count("not a measured effect") == 1


CONSTRAINED = """
search:
  student.width: {type: categorical, choices: [8, 16]}
"""


def _constrained_sweep(tiny_sweep, bound: int):
    text = tiny_sweep.read_text().replace(
        "study: {name: tiny}",
        "study: {name: tiny, trials: 4, seed: 3, sampler: random, pruner: none, "
        f"objectives: {{val_accuracy: maximize, params: minimize}}, constraints: {{min_params: {bound}}}}}",
    )
    tiny_sweep.write_text(text + CONSTRAINED)
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0


def test_the_reports_front_leaves_out_trials_that_break_a_constraint_as_optunas_does(tiny_sweep, tmp_path):
    """The report's front and hypervolume took every complete trial: the base trial (width 8, 172 params, below
    min_params 200) is the cheapest, so it stood on the report's front but not on status's."""
    from kdtrain.report import build
    from kdtrain.study import search

    _constrained_sweep(tiny_sweep, 200)
    study = search.load("tiny", None)
    d = build.load("tiny")
    assert set(d.students["student.width"].astype(float)) == {8.0, 16.0}  # both kinds of trial ran
    assert set(d.front["trial"]) == {t.number for t in search.pareto(study)}
    assert (d.front["params"] >= 200).all() and len(d.front) >= 1
    assert build.front_table(d)["params"].min() >= 200


def test_when_no_trial_meets_the_constraints_each_command_says_so(tiny_sweep, capsys):
    _constrained_sweep(tiny_sweep, 100000)
    out = capsys.readouterr().out
    assert "none of its 4 complete trials meets the constraints (min_params 100000)" in out  # the sweep's end
    assert main(["status", "--study", "tiny"]) == 0
    assert "none of its 4 complete trials meets the constraints" in capsys.readouterr().out
    assert main(["confirm", "tiny", "--pareto", "--seeds", "1", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "none of its 4 complete trials meets the constraints" in err and "no complete trial" not in err
