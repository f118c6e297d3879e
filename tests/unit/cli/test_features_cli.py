"""kd.features from the command line: bad pairs refused before anything trains (one error line, exit 2, nothing
written), a torchvision: teacher distilled into a python: student through its layers, `kdtrain layers`."""

import textwrap
from pathlib import Path

import pytest

from kdtrain.cli.commands import main

SWEEP = """
study: {name: feat}
data: {name: digits, val_fraction: 0.2, seed: 0, limit: 300}
teachers:
  - {name: conv, arch: tiny_cnn, width: 8, epochs: 1}
student: {arch: tiny_cnn, width: 4}
train: {epochs: 1, batch_size: 64, threads: 1}
kd:
  temperature: 4.0
  alpha: 0.5
  features:
%s
search:
  kd.alpha: {type: float, low: 0.1, high: 0.9}
"""


def sweep(tmp_path: Path, pairs: str, **subs) -> Path:
    text = SWEEP % textwrap.indent(textwrap.dedent(pairs).strip(), "    ")
    for a, b in subs.items():
        text = text.replace(a, b)
    p = tmp_path / "feat.yaml"
    p.write_text(text)
    return p


def snapshot(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "data"
    }


def refused(tmp_path, capsys, path, command=("sweep", "--no-report")) -> str:
    before = snapshot(tmp_path)
    rc = main([command[0], str(path), *command[1:]])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.count("kdtrain: error:") == 1 and "Traceback" not in out + err, err
    assert snapshot(tmp_path) == before, "something was written"
    assert not (tmp_path / "home" / "cache" / "teachers").exists()  # no teacher trained
    return err


def test_a_wrong_student_path_lists_the_nearest_valid_ones(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep(tmp_path, "- {name: mid, teacher_layer: '3', student_layer: '3.conv'}"))
    assert err.strip().count("\n") == 0, err  # one line
    assert "kd.features (mid).student_layer: no module '3.conv' in the student; nearest: 3" in err, err
    assert "kdtrain layers SWEEPFILE" in err


def test_a_path_missing_from_a_shallower_searched_student_is_found_before_training(tmp_path, capsys):
    # cnn1d on images at depth 3 has a module 11 (a reshape, three conv blocks of 3 modules, pooling, then 11: the
    # dropout); a trial drawing depth 2 has 10 modules
    path = sweep(
        tmp_path,
        "- {teacher_layer: '3', student_layer: '11', loss: sp}",
        **{
            "student: {arch: tiny_cnn, width: 4}": "student: {arch: cnn1d, width: 4}",
            "search:\n": "search:\n  student.depth: {type: int, low: 2, high: 3}\n",
        },
    )
    err = refused(tmp_path, capsys, path)
    assert "no module '11' in the student as a trial may build it (cnn1d, width 4, depth 2)" in err, err


def test_a_feature_map_and_a_vector_no_adapter_joins(tmp_path, capsys):
    # the teacher's second conv block (B, 16, 4, 4) against the student's first dense layer (B, 32)
    err = refused(tmp_path, capsys, sweep(tmp_path, "- {teacher_layer: '3', student_layer: '7', loss: hint}"))
    assert (
        "kd.features (hint:7->3): no adapter joins the student's output (B, 32) to the teacher's (B, 16, 4, 4)" in err
    ), err
    # attention transfer needs positions on both sides
    err = refused(tmp_path, capsys, sweep(tmp_path, "- {teacher_layer: '3', student_layer: '7', loss: at}"))
    assert "attention transfer needs two outputs with positions" in err, err


@pytest.mark.parametrize(
    "teacher, says",
    [
        (
            "{name: conv, logits: teacher.npz}",
            "teacher 'conv' is a logits file, which gives logits only, no layer to hook",
        ),
        (
            "{name: conv, arch: tiny_cnn, weights: teacher.onnx}",
            "teacher 'conv' is an ONNX file, which gives logits only",
        ),
        (
            "{name: conv, arch: tiny_cnn, width: 8, weights: scripted.pt}",
            "teacher 'conv' is a TorchScript file, whose layers run compiled where no hook sees them",
        ),
    ],
)
def test_a_teacher_from_a_file_without_layers_cannot_give_features(tmp_path, capsys, teacher, says):
    import torch

    from kdtrain.distill import models

    net = models.create_model("tiny_cnn", (1, 8, 8), 10, 8)
    torch.jit.script(net).save(str(tmp_path / "scripted.pt"))
    (tmp_path / "teacher.onnx").write_bytes(b"not read: refused before")
    path = sweep(
        tmp_path,
        "- {teacher_layer: '3', student_layer: '3'}",
        **{"{name: conv, arch: tiny_cnn, width: 8, epochs: 1}": teacher},
    )
    err = refused(tmp_path, capsys, path)
    assert says in err, err


def test_unknown_pair_keys_losses_and_choices_are_config_errors(tmp_path, capsys):
    path = sweep(
        tmp_path,
        "- {teacher_layer: '3', student_layer: '3', loss: crd, weihgt: 2}\n"
        "- {name: 7, teacher_layer: '3', student_layer: '3', weight: -1}",
        **{"  alpha: 0.5\n": "  alpha: 0.5\n  feature_pair: late\n"},
    )
    err = refused(tmp_path, capsys, path)
    assert "kd.features[0].weihgt: unknown key" in err and "kd.features[0].loss: one of at, hint, sp" in err
    assert "kd.feature_pair: all, none or a pair's name (crd:3->3), got 'late'" in err, err
    assert "kd.features[1].name: a non-empty text (what kd.feature_pair names), got 7" in err
    assert "kd.features[1].weight: a positive number, got -1" in err


MY_STUDENT = """
from torch import nn


def net(input_shape, num_classes, width):
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, num_classes))
"""


def test_a_torchvision_teacher_into_a_python_student_through_their_layers(tmp_path, capsys):
    (tmp_path / "featstudent.py").write_text(MY_STUDENT)
    path = sweep(
        tmp_path,
        """
                 - {name: early, teacher_layer: layer1, student_layer: '0', loss: hint}
                 - {name: rel, teacher_layer: layer1.1.conv2, student_layer: '2', loss: sp}
                 """,
        **{
            "{name: conv, arch: tiny_cnn, width: 8, epochs: 1}": "{name: conv, arch: 'torchvision:resnet18', epochs: 1}",
            "{arch: tiny_cnn, width: 4}": "{arch: 'python:featstudent:net', width: 6}",
        },
    )
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "student python:featstudent:net width 6: distilling" in out and "student trained in" in out
    assert main(["layers", str(path)]) == 0
    out = capsys.readouterr().out
    # the teacher's paths as torchvision names them (inside kdtrain's wrappers), with their shapes
    assert "\nlayer1.1.conv2 " in out and "(B, 64, 2, 2)" in out and "net.layer1" not in out
    assert "student" in out and "(B, 6, 8, 8)" in out  # the student's first conv on the 8x8 digits
