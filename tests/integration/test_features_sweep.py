"""kd.features searched like any key: a real tiny sweep chooses among named pairs (or none) and searches their
weight on a log scale; each trial's MLflow run and the report name the pair and loss it used; the logged student
holds no adapter. Real stores: an Optuna journal and SQLite in a temp folder."""

import textwrap
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from support import QUICK_PROFILE, in_home

from kdtrain.cli.commands import main
from kdtrain.data import datasets
from kdtrain.distill import models
from kdtrain.report import build
from kdtrain.study import search
from kdtrain.tracking import params
from kdtrain.tracking.client import MODEL_TAG, Tracker

SWEEP = """
study: {name: feats, trials: 5, seed: 3, pruner: none, spread: false, baseline_seeds: 1,
        objectives: {val_accuracy: maximize, params: minimize}}
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers:
  - {name: conv, arch: cnn1d, width: 8, epochs: 3}
student: {arch: cnn1d, width: 4}
train: {epochs: 3, batch_size: 64, lr: 0.01, threads: 1}
kd:
  temperature: 4.0
  alpha: 0.5
  feature_pair: mid
  features:
    - {name: mid, teacher_layer: '3', student_layer: '3', loss: hint}
    - {name: rel, teacher_layer: '6', student_layer: '6', loss: sp}
search:
  kd.feature_pair: {type: categorical, choices: [none, mid, rel]}
  kd.feature_weight: {type: float, low: 1, high: 1000, log: true}
  kd.alpha: {type: float, low: 0.2, high: 0.8}
"""
FAST = [*QUICK_PROFILE, "--no-report"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("feats")
    (root / "feats.yaml").write_text(textwrap.dedent(SWEEP))
    with in_home(root):
        assert main(["sweep", "feats.yaml", *FAST]) == 0
    return root / "home"


def test_each_trial_names_the_pair_and_loss_it_used(swept):
    study = optuna.load_study(study_name="feats", storage=search.open_storage(str(swept / "optuna.journal")))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 5
    assert done[0].params["kd.feature_pair"] == "mid"  # the base trial (its weight, None in the file, drawn)
    client = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    seen = set()
    for t in done:
        run = client.get_run(t.user_attrs[search.T_RUN])
        pair, weight = t.params["kd.feature_pair"], t.params.get("kd.feature_weight")
        loss = {"mid": "hint", "rel": "sp"}.get(pair)
        expected = (
            "none" if pair == "none" else f"{pair} ({loss} x{weight if weight is not None else 100.0:.4g})"
        )  # the pair's own weight: hint's 100
        assert run.data.params["kd.features"] == expected, (t.number, run.data.params["kd.features"])
        seen.add(pair)
        assert (weight is None) == (pair == "none")  # no pair: no weight searched
        if weight is not None:
            assert 1 <= weight <= 1000
    assert len(seen) >= 2  # the sampler chose among the pairs
    d = build.load("feats", f"sqlite:///{swept / 'mlflow.db'}", str(swept / "optuna.journal"))
    table = build.front_table(d)
    named = dict(
        zip(d.students["run_id"], d.students["kd.features"], strict=False)
    )  # every trial's pair, in trials.csv too
    assert set(named.values()) == {client.get_run(t.user_attrs[search.T_RUN]).data.params["kd.features"] for t in done}
    front = [named[r] for r in table["run_id"]]
    if any(f != "none" for f in front):  # the front's table names them
        assert table["kd.features"].tolist() == front
    else:
        assert "kd.features" not in table


def test_the_logged_student_of_a_feature_trial_holds_no_adapter(swept, monkeypatch):
    monkeypatch.setenv("KDTRAIN_HOME", str(swept))
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("feats")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], "tags.`kdtrain.role` = 'student'")
        if r.data.params["kd.features"].startswith("mid (hint")
    ]
    assert runs, "no trial used the hint pair"
    run = runs[0]
    cfg, ds, model = params.trial_student(Tracker(uri), run.info.run_id)  # model.pt, loaded strictly
    fresh = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
    assert set(model.state_dict()) == set(fresh.state_dict())
    mlflow.set_tracking_uri(uri)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_logged_model(run.data.tags[MODEL_TAG]).artifact_location
        )
    )
    program = torch.export.load(next(folder.rglob("*.pt2")))
    logged = {k for k in program.state_dict if not k.startswith("_")}
    assert logged == {k for k in fresh.state_dict() if "num_batches_tracked" not in k} or logged == set(
        fresh.state_dict()
    )
    assert sum(v.numel() for v in program.state_dict.values() if v.is_floating_point()) == sum(
        v.numel() for k, v in fresh.state_dict().items() if v.is_floating_point()
    )


def test_confirm_reports_the_pairs_gain_over_logit_kd_with_seeds_whatever_its_sign(swept, monkeypatch, capsys):
    monkeypatch.setenv("KDTRAIN_HOME", str(swept))
    monkeypatch.chdir(swept.parent)
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    study = optuna.load_study(study_name="feats", storage=search.open_storage(str(swept / "optuna.journal")))
    client = MlflowClient(uri)
    feat = next(t for t in study.trials if t.state.name == "COMPLETE" and t.params["kd.feature_pair"] != "none")
    plain = next(
        (t for t in study.trials if t.state.name == "COMPLETE" and t.params["kd.feature_pair"] == "none"), None
    )
    chosen = [feat.number] + ([plain.number] if plain else [])
    assert (
        main(
            [
                "confirm",
                "feats",
                "--trial",
                *map(str, chosen),
                "--seeds",
                "2",
                "--no-report",
                "--storage",
                str(swept / "optuna.journal"),
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    exp = client.get_experiment_by_name("feats")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`kdtrain.role` = 'confirm' and tags.`optuna.trial` = '{feat.number}'"
    )
    assert len(runs) == 2
    gains = []
    for r in runs:  # each seed: the trial with its pairs against the same seed without them
        m = r.data.metrics
        assert m["feature_gain_test"] == pytest.approx(m["test_accuracy"] - m["logit_kd_test_accuracy"])
        gains.append(m["feature_gain_test"])
    mean, std = sum(gains) / 2, abs(gains[0] - gains[1]) / 2**0.5
    header = next(line for line in out.splitlines() if "feature pairs over logit KD (test, paired) pts" in line)
    row = next(line for line in out.splitlines() if line.startswith(f"{feat.number} "))
    cells = [c.strip() for c in header.split("  ") if c.strip()]
    assert cells[-1] == "feature pairs over logit KD (test, paired) pts"
    assert row.rstrip().endswith(f"{100 * mean:.2f} ± {100 * std:.2f}"), (row, gains)  # the sign as measured
    if plain:  # a trial without pairs has no such gain
        assert next(line for line in out.splitlines() if line.startswith(f"{plain.number} ")).rstrip().endswith("-")
    # teachers[].from_study: STUDY alone is the confirmed pick, the best mean val accuracy over confirm's seeds
    from kdtrain.config import sweepfile
    from kdtrain.ship import registry, study_teacher

    confirmed = registry.confirmed_trials(Tracker(uri), "feats")
    best = max(confirmed, key=lambda n: confirmed[n]["val"])
    (swept.parent / "pick.yaml").write_text(GEN2 % "feats")
    said = []
    study_teacher.resolve(sweepfile.load("pick.yaml"), log=said.append)
    assert said[0].startswith(f"teacher gen1: trial {best} of study feats ("), said


GEN2 = """
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers:
  - {name: gen1, from_study: "%s"}
student: {arch: cnn1d, width: 2}
train: {epochs: 1, batch_size: 64, threads: 1}
kd: {temperature: 4.0, alpha: 0.5}
"""


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_a_trial_of_a_finished_study_teaches_the_next_round(swept, monkeypatch, capsys):
    import numpy as np

    from kdtrain.config import sweepfile
    from kdtrain.distill import teachers
    from kdtrain.ship import study_teacher

    monkeypatch.setenv("KDTRAIN_HOME", str(swept))
    monkeypatch.chdir(swept.parent)
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    study = optuna.load_study(study_name="feats", storage=search.open_storage(str(swept / "optuna.journal")))
    trial = [t for t in study.trials if t.state.name == "COMPLETE"][-1]
    (swept.parent / "gen2.yaml").write_text(GEN2 % f"feats#{trial.number}")
    assert main(["teachers", "gen2.yaml"]) == 0
    out = capsys.readouterr().out
    run_id = trial.user_attrs[search.T_RUN]
    assert f"teacher gen1: trial {trial.number} of study feats (MLflow run {run_id[:8]}), cnn1d width " in out
    assert f"cnn1d from feats#{trial.number}" in out  # the teachers table says where it came from
    # the teacher is the model mlflow.pyfunc loads for that trial
    cfg = study_teacher.resolve(sweepfile.load("gen2.yaml"), log=lambda line: None)
    t = cfg.teacher("gen1")
    src = params.trial_config(Tracker(uri), run_id).student
    assert (t.arch, t.width, t.depth) == (src.arch, src.width, src.depth) and t.weights.endswith("model.pt")
    ds = datasets.load(cfg.data)
    teacher = teachers.get_teacher(t, cfg, ds, log=lambda line: None)
    x = ds.x_val[:32].numpy()
    with torch.no_grad():
        ours = teacher.model.eval()(torch.from_numpy(x)).numpy()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    logged = mlflow.pyfunc.load_model(f"models:/{client.get_run(run_id).data.tags[MODEL_TAG]}")
    assert np.abs(np.asarray(logged.predict(x)) - ours).max() <= 1e-5
    assert teacher.val_accuracy == pytest.approx(trial.values[0], abs=1e-6)  # the trial's own val accuracy


@pytest.mark.parametrize(
    "ref, says",
    [
        ("feats#999", "teachers (gen1).from_study: trial 999 of 'feats' does not exist (complete trials: "),
        ("nosuch#1", "teachers (gen1).from_study: no study named 'nosuch'"),
        ("feats#x", "teachers (gen1).from_study: expected STUDY#TRIAL (a trial number) or STUDY (its confirmed pick)"),
    ],
)
def test_a_study_or_trial_that_does_not_exist_is_one_error_and_nothing_written(swept, monkeypatch, capsys, ref, says):
    monkeypatch.setenv("KDTRAIN_HOME", str(swept))
    monkeypatch.chdir(swept.parent)
    (swept.parent / "gen2.yaml").write_text(GEN2 % ref)
    before = snapshot(swept)
    assert main(["train", "gen2.yaml"]) == 2
    out, err = capsys.readouterr()
    assert err.count("kdtrain: error:") == 1 and err.strip().count("\n") == 0 and "Traceback" not in out + err, err
    assert says in err, err
    assert snapshot(swept) == before
