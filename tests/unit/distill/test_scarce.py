"""Distillation where it earns its keep (issue 21): scarce labels, transfer sets, a teacher from another domain
(its own data and normalisation), a teacher with several outputs or more classes than the student.

The loss and mapping tests compare against hand-computed values; the data tests read real arrays, PNG folders
and generated MNIST-1D; the sweep test runs the real `kdtrain sweep` into a real MLflow store."""

import math
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import refused, sweep_file

from kdtrain import config
from kdtrain.cli.commands import main
from kdtrain.config import DataConfig, DataError
from kdtrain.data import datasets
from kdtrain.distill import losses, teacher_data, teachers
from kdtrain.distill.student import distill_student
from kdtrain.tracking.client import Tracker

# --------------------------------------------------------------------------- the loss on unlabelled rows


def test_cross_entropy_skips_unlabelled_rows_and_the_kd_term_keeps_them():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    hidden = y.clone()
    hidden[[1, 4]] = datasets.UNLABELLED
    full = losses.distillation_loss(z, t, y, temperature=2.0, alpha=0.5)
    part = losses.distillation_loss(z, t, hidden, temperature=2.0, alpha=0.5)
    assert torch.allclose(full[1], part[1])  # kd: every row, labelled or not
    kept = [0, 2, 3, 5]
    assert torch.allclose(part[2], F.cross_entropy(z[kept], y[kept]))  # ce: the labelled rows' mean
    assert not torch.allclose(full[2], part[2])
    assert torch.allclose(part[0], 0.5 * 4.0 * part[1] + 0.5 * part[2])


def test_a_batch_without_labels_has_zero_cross_entropy_not_nan():
    z = torch.randn(4, 3, requires_grad=True)
    loss, _kd, ce = losses.distillation_loss(z, torch.randn(4, 3), torch.full((4,), -1), alpha=0.5)
    assert ce.item() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_dkd_splits_an_unlabelled_row_at_the_teachers_top_class():
    t = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 0.5]])
    z = torch.tensor([[0.3, 0.2, 0.1], [0.0, 1.0, -0.5]])
    top = t.argmax(1)  # 1, 0
    as_top = losses.distillation_loss(z, t, top, temperature=2.0, alpha=1.0, loss="dkd")
    unlabelled = losses.distillation_loss(z, t, torch.tensor([-1, -1]), temperature=2.0, alpha=1.0, loss="dkd")
    other = losses.distillation_loss(z, t, torch.tensor([2, 2]), temperature=2.0, alpha=1.0, loss="dkd")
    assert torch.allclose(as_top[1], unlabelled[1])
    assert not torch.allclose(other[1], unlabelled[1])


# --------------------------------------------------------------------------- class mappings


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_a_subset_mapping_renormalises_the_tempered_softmax_over_the_subset(temperature):
    t = torch.tensor([[1.0, -0.5, 2.0, 0.3]])
    mapped = losses.map_logits(t, [[2], [0], [3]], temperature)
    p = torch.softmax(t / temperature, -1)[0]
    by_hand = torch.stack([p[2], p[0], p[3]]) / (p[2] + p[0] + p[3])
    assert torch.allclose(torch.softmax(mapped / temperature, -1)[0], by_hand, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_a_group_mapping_sums_the_tempered_softmax_within_each_group(temperature):
    t = torch.tensor([[1.0, -0.5, 2.0], [0.0, 0.0, 3.0]])
    mapped = losses.map_logits(t, [[0, 2], [1]], temperature)
    p = torch.softmax(t / temperature, -1)
    by_hand = torch.stack([p[:, 0] + p[:, 2], p[:, 1]], -1)
    assert torch.allclose(torch.softmax(mapped / temperature, -1), by_hand, atol=1e-6)
    # the sum depends on T: at T = 1 and T = 4 the groups' shares differ
    other = 5.0 - temperature
    assert not torch.allclose(torch.softmax(losses.map_logits(t, [[0, 2], [1]], other) / other, -1), by_hand)


def test_class_mappings_resolve_names_and_refuse_what_does_not_fit():
    from kdtrain.data import classmap

    names = ["low", "high"]
    assert classmap.groups({"low": [0, 1], "high": 2}, names, ["a", "b", "c"], "w") == [[0, 1], [2]]
    assert classmap.groups([2, 0], names, ["a", "b", "c"], "w") == [[2], [0]]
    with pytest.raises(DataError, match=r"teacher class 5 does not exist \(the teacher has 3 classes"):
        classmap.groups({"low": [0, 5], "high": [1]}, names, ["a", "b", "c"], "w")
    with pytest.raises(DataError, match="student class 'low' is named twice"):
        classmap.groups({0: [0], "low": [1], "high": [2]}, names, ["a", "b", "c"], "w")
    with pytest.raises(DataError, match="'high' have no teacher classes"):
        classmap.groups({"low": [0]}, names, ["a", "b", "c"], "w")


# --------------------------------------------------------------------------- which rows keep their label


def _digits_cfg(**kw) -> DataConfig:
    return DataConfig(name="digits", val_fraction=0.2, seed=kw.pop("seed", 3), **kw)


def test_the_labelled_rows_are_stratified_repeatable_and_hold_the_validation_split():
    full = datasets.load(_digits_cfg())
    a, b = datasets.load(_digits_cfg(labels=0.1)), datasets.load(_digits_cfg(labels=0.1))
    other = datasets.load(_digits_cfg(labels=0.1, seed=4))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_val, b.x_val)  # repeatable
    assert not torch.equal(a.y_train, other.y_train)  # data.seed chooses them
    n = len(full.y_train) + len(full.y_val)  # the training split's rows
    budget = round(0.1 * n)
    assert a.labelled_rows + len(a.y_val) == budget  # 10% of all labels, selection included
    assert len(a.y_train) + len(a.y_val) == n  # every other row still trains, unlabelled
    assert a.unlabelled_rows == n - budget and (a.y_train == datasets.UNLABELLED).sum() == a.unlabelled_rows
    labelled = a.y_train[a.y_train >= 0]
    counts = torch.bincount(labelled, minlength=10) + torch.bincount(a.y_val, minlength=10)
    share = torch.bincount(torch.cat([full.y_train, full.y_val]), minlength=10) * budget / n
    assert (counts >= 2).all() and (counts - share).abs().max() <= 1  # in proportion, at least 2 per class
    assert (torch.bincount(a.y_val, minlength=10) >= 1).all()  # every class can be selected on
    assert "labels: " in a.note and f"{a.labelled_rows} rows to train on" in a.note


def test_a_count_of_labels_and_a_transfer_set_of_arrays(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "more.npz", x=x, y=np.zeros(50, np.int64))
    d = datasets.load(_digits_cfg(labels=40, unlabeled={"name": "arrays", "path": str(tmp_path / "more.npz")}))
    assert d.labelled_rows + len(d.y_val) == 40 and d.transfer_rows == 50
    assert (d.y_train[-50:] == datasets.UNLABELLED).all()
    # the transfer rows are normalised with the student's statistics
    raw = torch.from_numpy(x)
    assert torch.allclose(d.raw(d.x_train[-50:]), raw, atol=1e-4)
    assert "array(s) y are ignored" in d.note


def test_an_unlabelled_folder_of_images_is_a_transfer_set(tmp_path):
    from PIL import Image

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    g = np.random.default_rng(1)
    for i in range(7):
        Image.fromarray(g.integers(0, 255, (12, 12), dtype=np.uint8), mode="L").save(folder / f"img{i}.png")
    x = g.normal(size=(60, 1, 8, 8)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(tmp_path / "small.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    cfg = DataConfig(
        name="arrays",
        path=str(tmp_path / "small.npz"),
        image_size=8,
        unlabeled={"name": "folder", "path": str(folder), "image_size": 8},
    )
    d = datasets.load(cfg)
    assert d.transfer_rows == 7 and d.unlabelled_rows == 7 and len(d.y_train) == 45 + 7
    assert datasets.identity(cfg).endswith(datasets.identity(cfg).split("+unlabeled:")[1])  # its content keys caches


# --------------------------------------------------------------------------- the honest baseline


def test_the_baseline_trains_on_the_labelled_rows_for_as_many_steps_as_a_distilled_trial():
    cfg = config.from_dict(
        {
            "data": {"name": "synthetic", "size": 600, "seed": 0, "labels": 30},
            "teachers": [{"name": "t", "arch": "mlp", "width": 16, "epochs": 2}],
            "student": {"arch": "mlp", "width": 4},
            "train": {"epochs": 3, "batch_size": 64, "threads": 1},
        }
    )
    ds = datasets.load(cfg.data)
    pool = teachers.load_pool(cfg, ds, log=lambda s: None)
    distilled = distill_student(cfg, ds, pool)
    baseline = distill_student(config.replace(cfg, {"kd.alpha": 0.0}), ds, pool)
    assert distilled.steps == baseline.steps == 3 * (len(ds.y_train) // 64)
    assert ds.labelled_rows < 64  # the baseline's batches are its labelled rows, cycled


# --------------------------------------------------------------------------- teachers from elsewhere

HEADS = """
import torch
from torch import nn

class TwoHeads(nn.Module):
    def __init__(self, input_shape, num_classes, width, as_dict):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], width), nn.ReLU())
        self.digits, self.parity = nn.Linear(width, num_classes), nn.Linear(width, 2)
        self.as_dict = as_dict

    def forward(self, x):
        h = self.body(x)
        return {"digits": self.digits(h), "parity": self.parity(h)} if self.as_dict else (self.parity(h), self.digits(h))

def dict_heads(input_shape, num_classes, width):
    return TwoHeads(input_shape, num_classes, width, True)

def tuple_heads(input_shape, num_classes, width):
    return TwoHeads(input_shape, num_classes, width, False)
"""


@pytest.mark.parametrize("factory,output", [("dict_heads", "digits"), ("tuple_heads", 1)])
def test_a_multi_output_teacher_distils_from_the_output_it_names(tmp_path, factory, output):
    (tmp_path / "heads.py").write_text(textwrap.dedent(HEADS))
    cfg = config.from_dict(
        {
            "data": {"name": "synthetic", "size": 400, "seed": 0},
            "teachers": [
                {"name": "multi", "arch": f"python:heads:{factory}", "width": 16, "epochs": 3, "output": output}
            ],
            "student": {"arch": "mlp", "width": 4},
            "train": {"epochs": 2, "batch_size": 64, "threads": 1},
        }
    )
    ds = datasets.load(cfg.data)
    pool = teachers.load_pool(cfg, ds, log=lambda s: None)
    t = pool["multi"]
    assert t.logits["train"].shape == (len(ds.y_train), 4) and t.val_accuracy > 0.5
    again = teachers.load_pool(cfg, ds, log=lambda s: None)["multi"]  # from the cache, wrapped the same way
    assert again.cached and torch.allclose(again.logits["val"], t.logits["val"])
    assert distill_student(cfg, ds, pool).steps > 0


def test_a_teacher_from_another_domain_sees_the_students_rows_as_its_own_data():
    cfg = config.from_dict(
        {
            "data": {"name": "synthetic", "size": 500, "seed": 0, "options": {"noise": 1.2}, "labels": 40},
            "teachers": [
                {
                    "name": "src",
                    "arch": "mlp",
                    "width": 32,
                    "epochs": 6,
                    "data": {"name": "synthetic", "size": 800, "seed": 5, "options": {"noise": 0.6}},
                }
            ],
            "student": {"arch": "mlp", "width": 4},
            "train": {"epochs": 2, "batch_size": 64, "threads": 1},
        }
    )
    ds = datasets.load(cfg.data)
    t = teachers.load_pool(cfg, ds, log=lambda s: None)["src"]
    own = datasets.load(config.sub_data(cfg.teachers[0].data, cfg.data))
    # its logits on the student's rows are what it gives those rows' raw inputs normalised with its own statistics
    x = own.normalized(ds.raw(ds.x_val))
    assert torch.allclose(t.logits["val"], t.model(x), atol=1e-4)
    assert t.source_test_accuracy > t.test_accuracy > 0.25  # it falls on the shifted domain, and still knows it


# --------------------------------------------------------------------------- a whole sweep

DOMAIN = """
study: {name: shifted, objectives: {val_accuracy: maximize, params: minimize}, trials: 2, seed: 0, pruner: none,
        baseline_seeds: 2}
data:
  name: synthetic
  size: 400
  seed: 0
  labels: 24
  options: {noise: 1.0}
  unlabeled: {name: synthetic, size: 200, seed: 9}
  classes: {left: [0, 1], right: [2, 3]}
teachers:
  - {name: src, arch: mlp, width: 32, epochs: 5, data: {name: synthetic, size: 600, seed: 3, options: {noise: 0.6}},
     classes: {left: [0, 1], right: [2, 3]}}
student: {arch: mlp, width: 4}
train: {epochs: 3, batch_size: 64, threads: 1}
kd: {temperature: 2.0, alpha: 0.8, teachers: [src], loss: dkd}
search:
  kd.temperature: {type: float, low: 1, high: 4}
"""


def test_a_sweep_logs_labels_and_the_teachers_source_and_target_accuracy(tmp_path):
    p = tmp_path / "shifted.yaml"
    p.write_text(textwrap.dedent(DOMAIN))
    assert main(["sweep", str(p)]) == 0
    tracker = Tracker(f"sqlite:///{tmp_path}/home/mlflow.db")
    runs, _ = tracker.runs_frame("shifted")
    role = runs["tag:kdtrain.role"]
    teacher = runs[role == "teacher"].iloc[0]
    assert 0 <= teacher["test_accuracy"] <= 1 and teacher["source_test_accuracy"] > 0.5
    assert teacher["tag:kdtrain.teacher_data"].startswith("synthetic (size 600, seed 3")
    students, base = runs[role == "student"], runs[role == "baseline"].iloc[0]
    assert len(students) == 2
    for _, r in [*list(students.iterrows()), (0, base)]:
        assert (
            r["labelled_rows"] + r["val_rows"] == 24 and r["unlabelled_rows"] == 400 - 24 + 200
        )  # synthetic: size rows to train
    assert (students["train_steps"] == base["train_steps"]).all()
    summary = (tmp_path / "reports" / "shifted" / "summary.md").read_text()
    assert "rows to train on" in summary and "## Teachers" in summary and "synthetic (size 600" in summary


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override,says",
    [
        ("data.labels=0", "data.labels: a count of labelled rows must be >= 1"),
        ("data.labels=-3", "data.labels: a count of labelled rows must be >= 1"),
        ("data.labels=1.5", "data.labels: a fraction must be in (0, 1]"),
        ("data.labels=100000", "data.labels: 100000 labelled rows asked for, but the training split has 400"),
        ("data.labels=5", "data.labels: 5 label(s) for 4 classes; give at least 8"),
        (
            "data.unlabeled={name: digits}",
            ("data.unlabeled (digits): samples of shape (1, 8, 8), but the data's samples are (1, 16)"),
        ),
        ("data.classes={a: [0, 1], b: [2]}", "data.classes: label(s) 'class3' of the dataset are not mapped"),
        ("data.options={noise: -1}", "data.options.noise: must be a number >= 0"),
        ("data.unlabeled={name: synthetic, labels: 3}", "data.unlabeled.labels: not taken here"),
    ],
)
def test_bad_scarce_label_and_transfer_settings_are_one_line_each(tmp_path, capsys, override, says):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", override], code=2, says=[says])


def _teacher_file(tmp_path, teacher: str, extra: str = "") -> "object":
    return sweep_file(
        tmp_path,
        textwrap.dedent(f"""
        study: {{name: bad}}
        data: {{name: synthetic, size: 400, seed: 1{extra}}}
        teachers:
          - {teacher}
        student: {{arch: mlp, width: 8}}
        train: {{epochs: 2, batch_size: 64, threads: 1}}
        kd: {{temperature: 4.0, alpha: 0.7}}
        search:
          kd.alpha: {{type: float, low: 0, high: 1}}
        """),
    )


@pytest.mark.parametrize(
    "teacher,extra,says",
    [
        (
            "{name: t, arch: mlp, width: 8, classes: [0, 1, 2, 7]}",
            "",
            "teachers (t).classes: teacher class 7 does not exist (the teacher has 4 classes, 0..3)",
        ),
        (
            "{name: t, arch: mlp, width: 8, classes: {0: [0], '0': [1], 1: [2], 2: [3]}}",
            "",
            "teachers[0] (t).classes: student class '0' is named twice",
        ),
        (
            "{name: t, arch: mlp, width: 8, data: {name: digits}}",
            "",
            "teachers (t).data: samples of shape (1, 8, 8), the student's data has (1, 16)",
        ),
        (
            "{name: t, arch: mlp, width: 8, data: {name: synthetic, seed: 2}}",
            ", classes: {a: [0, 1], b: [2, 3]}",
            "teachers (t): the teacher has 4 classes, the student's data 2; map them with teachers[].classes",
        ),
    ],
)
def test_bad_teacher_domains_and_mappings_are_one_line_each(tmp_path, capsys, teacher, extra, says):
    refused(tmp_path, capsys, [_teacher_file(tmp_path, teacher, extra)], code=2, says=[says])


@pytest.mark.parametrize(
    "output,says",
    [
        (
            "parity_head",
            (
                "output 'parity_head' is not among the model's outputs (its forward returns a dict with keys "
                "'digits', 'parity')"
            ),
        ),
        ("5", "output 5 is not among the model's outputs"),
    ],
)
def test_an_output_the_teacher_does_not_return_is_found_on_the_first_batch(tmp_path, capsys, monkeypatch, output, says):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing heads.py writes nothing beside it
    (tmp_path / "heads.py").write_text(textwrap.dedent(HEADS))
    factory = "dict_heads" if not output.isdigit() else "tuple_heads"
    p = _teacher_file(tmp_path, f"{{name: t, arch: 'python:heads:{factory}', width: 8, output: {output}}}")
    refused(tmp_path, capsys, [p], code=2, says=[says])


def test_augmentation_runs_a_mapped_teacher_from_another_domain_online():
    """With data.augment the teachers run on each batch: through the same view of the inputs and the same class
    mapping as the cached logits (the mapping's int keys survive a JSON round trip, as in a study's config)."""
    raw = {
        "data": {
            "name": "synthetic",
            "size": 300,
            "seed": 0,
            "augment": ["crop"],
            "classes": {"a": [0, 1], "b": [2, 3]},
        },
        "teachers": [
            {
                "name": "src",
                "arch": "mlp",
                "width": 16,
                "epochs": 2,
                "data": {"name": "synthetic", "size": 300, "seed": 4},
                "classes": {0: [0, 1], 1: [2, 3]},
            }
        ],
        "student": {"arch": "mlp", "width": 4},
        "train": {"epochs": 2, "batch_size": 64, "threads": 1},
    }
    import json

    cfg = config.from_dict(json.loads(json.dumps(raw)))
    ds = datasets.load(cfg.data)
    pool = teachers.load_pool(cfg, ds, log=lambda s: None)
    view = pool["src"].as_student_model(2.0)
    with torch.no_grad():
        assert torch.allclose(view(ds.x_val), pool["src"].student_logits("val", 2.0), atol=1e-4)
    assert distill_student(cfg, ds, pool).steps == 2 * (len(ds.y_train) // 64)


def test_transfer_sets_from_a_csv_without_labels_and_a_python_factory_of_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    g = np.random.default_rng(2)
    header = ",".join(f"f{i}" for i in range(16))
    rows = "\n".join(",".join(f"{v:.4f}" for v in g.normal(size=16)) for _ in range(30))
    (tmp_path / "more.csv").write_text(f"{header},note\n" + "\n".join(r + ",x" for r in rows.splitlines()) + "\n")
    (tmp_path / "inputs.py").write_text("import numpy as np\ndef make():\n    return np.ones((12, 16), np.float32)\n")
    base = {"name": "synthetic", "size": 200, "seed": 0}
    from_csv = datasets.load(DataConfig(**base, unlabeled={"name": "csv", "path": str(tmp_path / "more.csv")}))
    assert from_csv.transfer_rows == 30 and "column(s) note ignored" in from_csv.note
    from_py = datasets.load(DataConfig(**base, unlabeled={"name": "python", "factory": "inputs:make"}))
    assert from_py.transfer_rows == 12 and (from_py.y_train[-12:] == datasets.UNLABELLED).all()
    assert from_py.unlabelled_rows == 12 and from_py.labelled_rows == len(from_py.y_train) - 12


# --------------------------------------------------------------------------- the student's own rows, given again


def test_a_transfer_set_that_repeats_the_students_rows_loses_its_validation_rows_said_once():
    """Issue 29: data.unlabeled inherits no seed, so `{name: mnist1d, size: 1000}` beside the student's own
    mnist1d put every validation row back into training, unlabelled (10 of 10)."""
    cfg = config.from_dict(
        {
            "data": {"name": "mnist1d", "size": 1000, "labels": 0.1, "unlabeled": {"name": "mnist1d", "size": 1000}},
            "teachers": [{"name": "t", "arch": "mlp"}],
        }
    ).data
    d = datasets.load(cfg)
    assert len(d.y_val) == 10 and d.transfer_rows == 800 - 10
    transfer = d.raw(d.x_train[-d.transfer_rows :])
    assert torch.cdist(d.raw(d.x_val).flatten(1), transfer.flatten(1)).min() > 1e-3  # none of them is back
    assert d.note.count("10 of its 800 rows are the student's validation or test rows and were dropped") == 1
    assert "790 unlabelled rows" in d.note


def test_a_file_given_again_as_the_transfer_set_loses_the_validation_and_test_rows_by_content(tmp_path):
    g = np.random.default_rng(0)
    x, y = g.normal(size=(60, 1, 8)).astype(np.float32), np.arange(60) % 3
    np.savez(tmp_path / "mine.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    fresh = g.normal(size=(7, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "more.npz", x=np.concatenate([x, fresh]))  # every row of mine.npz, test rows included
    d = datasets.load(
        DataConfig(
            name="arrays",
            path=str(tmp_path / "mine.npz"),
            val_fraction=0.2,
            unlabeled={"name": "arrays", "path": str(tmp_path / "more.npz")},
        )
    )
    assert len(d.y_val) == 10 and len(d.y_test) == 10
    assert d.transfer_rows == 40 + 7  # the training rows (no harm: trained on anyway) and the new ones
    held_out = torch.cat([d.raw(d.x_val), d.raw(d.x_test)]).flatten(1)
    assert torch.cdist(held_out, d.raw(d.x_train[-d.transfer_rows :]).flatten(1)).min() > 1e-3
    assert "20 of its 67 rows are the student's validation or test rows and were dropped" in d.note


LEAK = """
study: {name: leak}
data: DATA
teachers:
  - {name: t, arch: mlp, width: 8, epochs: 1, data: TEACHER}
student: {arch: mlp, width: 4}
train: {epochs: 1, batch_size: 64, threads: 1}
search:
  kd.alpha: {type: float, low: 0, high: 1}
"""


@pytest.mark.parametrize(
    "student,teacher,says",
    [
        # the numbers: the teacher's 720 training rows are the student's, 701 of them with hidden labels
        (
            "{name: mnist1d, size: 1000, labels: 0.1}",
            "{name: mnist1d, size: 1000}",
            [
                (
                    "teachers (t).data: 701 of the student's training rows whose labels data.labels hides are among the 720 rows "
                    "the teacher would learn with their labels"
                ),
                "set teachers (t).data.seed to another value than data.seed",
            ],
        ),
        # the same file under another name, carved differently: the student's validation rows teach the teacher
        (
            "{name: arrays, path: mine.npz, val_fraction: 0.2}",
            "{name: arrays, path: copy.npz, val_fraction: 0.05}",
            [
                "teachers (t).data: 8 of its validation rows are among the 48 rows the teacher would learn",
                "point teachers (t).data at other data",
            ],
        ),
    ],
)
def test_a_teacher_whose_data_holds_the_students_hidden_labels_or_held_out_rows_is_refused(
    tmp_path, capsys, student, teacher, says
):
    g = np.random.default_rng(0)
    x, y = g.normal(size=(60, 1, 40)).astype(np.float32), np.arange(60) % 3
    np.savez(tmp_path / "mine.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    (tmp_path / "copy.npz").write_bytes((tmp_path / "mine.npz").read_bytes())
    p = sweep_file(tmp_path, textwrap.dedent(LEAK).replace("DATA", student).replace("TEACHER", teacher))
    refused(tmp_path, capsys, [p], code=2, says=says)


# --------------------------------------------------------------------------- one meaning in every process


def _digit_named_classes(tmp_path) -> str:
    """A folder of 11 classes named 0..10: sorted as text, index 2 is the class named 10."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c in range(11):
        (tmp_path / "digits" / str(c)).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(g.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(
                tmp_path / "digits" / str(c) / f"{i}.png"
            )
    return str(tmp_path / "digits")


@pytest.mark.parametrize(
    "classes,student_of",
    [
        ({i: [(i + 1) % 11] for i in range(11)}, lambda names, i: i),  # numbers: student class indices
        ({str(i): [(i + 1) % 11] for i in range(11)}, lambda names, i: names.index(str(i))),  # quoted: names
    ],
)
def test_teacher_class_keys_mean_the_same_in_a_worker_that_reads_the_study(tmp_path, classes, student_of):
    """Issue 29: a study keeps its config as JSON, which turns {2: [...]} into {"2": [...]}: the sweep process
    read 2 as an index (the class named 10) and a spawned worker as the class named 2, sharing one cached teacher.
    A worker gets its config from the study (kdtrain.sweep.worker.open_context: search.study_config)."""
    from kdtrain.study import search

    cfg = config.from_dict(
        {
            "study": {"name": "named"},
            "teachers": [{"name": "t", "arch": "mlp", "classes": classes}],
            "data": {"name": "folder", "path": _digit_named_classes(tmp_path), "image_size": 8},
        }
    )
    ds = datasets.load(cfg.data)
    assert ds.class_names[:4] == ["0", "1", "10", "2"]
    study = search.create_or_open(cfg, search.open_storage(str(tmp_path / "j.journal")), "named", 2)
    in_worker = search.study_config(study)
    expected = [None] * 11
    for i in range(11):
        expected[student_of(ds.class_names, i)] = [(i + 1) % 11]
    assert teacher_data.resolve_groups(cfg.teachers[0], ds, ds.class_names) == expected
    assert teacher_data.resolve_groups(in_worker.teachers[0], ds, ds.class_names) == expected
    assert in_worker.teachers == cfg.teachers  # and its settings compare equal on resume


@pytest.mark.parametrize(
    "classes,says",
    [
        (
            "{0: [0], b: [1]}",
            ("teachers[0] (t).classes: name every student class by its index or every one by its name, not both"),
        ),
        ("{0: [0], 2: [1]}", "teachers[0] (t).classes: student classes by index are 0, 1, ... each once; 1 missing"),
    ],
)
def test_teacher_class_keys_that_a_worker_would_read_otherwise_are_refused(tmp_path, capsys, classes, says):
    refused(
        tmp_path,
        capsys,
        [_teacher_file(tmp_path, f"{{name: t, arch: mlp, width: 8, classes: {classes}}}")],
        code=2,
        says=[says],
    )
