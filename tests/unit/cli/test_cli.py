import re

import pytest
from support import ROOT, run_cli

from kdtrain import config
from kdtrain.cli.commands import main
from kdtrain.data import datasets
from kdtrain.distill.teachers import get_teacher


def test_teachers_twice_second_run_trains_nothing(tiny_sweep, capsys):
    assert main(["teachers", str(tiny_sweep)]) == 0
    out = capsys.readouterr().out
    assert "training mlp" in out and "2 of 2 teachers trained" in out
    assert re.search(r"big\s+mlp\s+64\s+[\d,]+\s+0\.\d+\s+0\.\d+\s+trained", out)

    assert main(["teachers", str(tiny_sweep)]) == 0
    out = capsys.readouterr().out
    assert "training" not in out
    assert "nothing trained" in out
    assert re.search(r"big\s+mlp\s+64\s+[\d,]+\s+0\.\d+\s+0\.\d+\s+cached", out)


def test_train_prints_student_next_to_teacher(tiny_sweep):
    # 16 epochs (the tiny sweep's 4 are 20 steps: val accuracy 0.40-0.90 over seeds; a student epoch costs ~ms)
    r = run_cli(
        "train",
        tiny_sweep,
        "--set",
        "kd.teachers=[big,conv]",
        "--set",
        "kd.ensemble=mean_logits",
        "--set",
        "train.epochs=16",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "student epoch  16/16" in out  # per-epoch progress
    student = re.search(r"student \(mlp, width 8\)\s+([\d,]+)\s+([01]\.\d+)\s+([01]\.\d+)", out)
    teacher = re.search(r"teacher big \(mlp, width 64\)\s+([\d,]+)\s+([01]\.\d+)\s+([01]\.\d+)\s+([\d.]+)", out)
    assert student and teacher and re.search(r"teacher conv \(cnn1d, width 8\)", out)
    # it learned: val 0.975 here, 0.975-1.0 over data seeds 1-3 x train seeds 0-2; chance is 0.25 and an
    # untrained mlp scores up to 0.55 on synthetic data (60 inits on test_train.py's split)
    assert float(student.group(2)) > 0.85
    assert float(teacher.group(4)) > 1  # the teacher is larger
    assert "teachers=big+conv (mean_logits)" in out


def test_train_without_teacher(tiny_sweep, capsys):
    assert main(["train", str(tiny_sweep), "--set", "kd.alpha=0"]) == 0
    out = capsys.readouterr().out
    assert "no teacher (alpha=0)" in out and "teacher big" not in out


def test_missing_dataset_is_one_clear_error(tiny_sweep, tmp_path):
    r = run_cli("train", tiny_sweep, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path / 'none'}")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "data.download=true" in r.stderr and str(tmp_path / "none") in r.stderr


@pytest.mark.slow
def test_quickstart_teacher_reaches_092_on_mnist1d():
    """The acceptance bar of the embedded default: 5000 MNIST-1D samples, best teacher >= 0.92 test accuracy."""
    cfg = config.load(ROOT / "sweeps" / "quickstart.yaml")
    ds = datasets.load(cfg.data)
    t = get_teacher(cfg.teacher("cnn_wide"), cfg, ds, log=lambda s: None)
    assert t.test_accuracy >= 0.92


def test_profile_command_lists_teachers_and_a_width_ladder(tiny_sweep):
    r = run_cli("profile", tiny_sweep, "--widths", "2,4,8", "--set", "profile.calls=5", "--set", "profile.blocks=3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"teacher big\s+64\s+1,348", out) and re.search(r"teacher conv\s+8", out)
    params = [int(m.replace(",", "")) for m in re.findall(r"student mlp\s+\d+\s+([\d,]+)", out)]
    assert len(params) == 3 and params == sorted(params)
    assert "batch 1, 1 thread(s), cpu, eager" in out


def test_help_lists_the_registries_allowed_values():
    from kdtrain.data.datasets import DATASETS
    from kdtrain.distill.losses import ENSEMBLES
    from kdtrain.distill.models import MODELS
    from kdtrain.distill.train import OPTIMIZERS, SCHEDULES

    r = run_cli("sweep", "--help")
    assert r.returncode == 0
    for name in [*DATASETS, *MODELS, *OPTIMIZERS, *SCHEDULES, *ENSEMBLES]:
        assert re.search(rf"[ ,]{name}(,|\n)", r.stdout), name


def test_bad_widths_is_one_clear_error(tiny_sweep):
    r = run_cli("profile", tiny_sweep, "--widths", "2,x")
    assert r.returncode == 1 and r.stderr.count("kdtrain: error:") == 1 and "Traceback" not in r.stderr
    assert "--widths" in r.stderr


def test_teacher_progress_keeps_one_bar_per_teacher_on_a_terminal():
    """A tqdm bar is stateful: the pool's on_epoch must reuse each teacher's bar, not start one per epoch."""
    import io

    from kdtrain.distill.train import EpochStats
    from kdtrain.sweep.console import teacher_progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    on_epoch = teacher_progress(term)
    for name in ("big", "conv"):
        for epoch in (1, 2, 3):
            on_epoch(name, EpochStats(epoch, 3, 1.0, 0.5, 0.5, 0.9, 0.01, 0.1))
    out = term.getvalue()
    assert out.count("teacher big:") >= 1 and out.count("teacher conv:") >= 1
    assert out.count("0/3") == 2  # one bar started per teacher (a bar per epoch started 6)
    assert out.count("3/3") == 2  # and each reaches its end once


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
