"""Your own data and your own teacher (issue 13): a folder of images, an arrays file, a CSV table and a python
factory as data; torchvision:, python:, logits-file and ONNX teachers. Every file is written by the test in its
real on-disk format (PNG files in class folders, numpy's .npz, a CSV with string labels, an ONNX file exported
by torch.onnx) and read by the real `kdtrain` entry point (in-process: main() is what the console script calls)
into a real MLflow SQLite store and Optuna journal; bad files must stop kdtrain with one line, exit code 2, before
anything is written.
"""

import os
import re
import runpy
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from support import QUICK_PROFILE, ROOT
from torch import nn

from kdtrain import config
from kdtrain.cli.commands import main
from kdtrain.data import datasets, sources
from kdtrain.distill import teachers

EXAMPLES = ROOT / "sweeps" / "examples"
FAST = [
    "--set",
    "study.trials=2",
    "--set",
    "study.baseline_seeds=1",
    "--set",
    "train.epochs=2",
    *QUICK_PROFILE,
    "--no-report",
]
"""A sweep in a couple of seconds: two trials of two epochs, one baseline seed, a short latency measurement."""


@pytest.fixture(autouse=True)
def importable_examples(monkeypatch):
    """python:sweeps.examples.my_models:... resolves as it does from the repository root (sys.path is restored
    after each test, so the test directories that kdtrain adds do not pile up)."""
    monkeypatch.syspath_prepend(str(ROOT))


# --------------------------------------------------------------------------- the files, written as a user would


def write_images(root: Path, per_class: dict[str, int], size: int = 12, mode: str = "RGB", seed: int = 0) -> None:
    """PNG files under root/<class>/: each class a different brightness, with noise."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            level = 40 + 80 * c
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            pixels = np.clip(rng.normal(level, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{name}-{i}.png")


def separable(n: int, shape: tuple, classes: int = 3, seed: int = 0):
    """(x, y): samples of the given shape whose mean depends on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 1, (n, *shape)) + 1.5 * y.reshape(-1, *[1] * len(shape))
    return x.astype(np.float32), y.astype(np.int64)


def write_arrays(
    path: Path, n_train: int = 120, n_test: int = 30, shape=(2, 16), names=("low", "mid", "high"), **changes
) -> dict:
    x_train, y_train = separable(n_train, shape, seed=1)
    x_test, y_test = separable(n_test, shape, seed=2)
    d = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "class_names": np.array(names)}
    d.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in d.items() if v is not None})
    return d


SPECIES = {"zebra": 0.0, "ant": 5.0, "moose": 10.0}
"""A CSV's string labels in the order they first appear (not sorted), and the value of column f1 for each."""


def write_csv(path: Path, n: int = 120, label: str = "species", names=tuple(SPECIES), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = [f"f1,f2,f3,note,{label}"]
    for i in range(n):
        name = names[i % len(names)]
        f1 = SPECIES.get(name, 0.0) + rng.normal(0, 0.3)
        lines.append(f"{f1:.3f},{rng.normal():.3f},{rng.normal():.3f},row {i},{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_logits(path: Path, arrays: dict, order=None, classes: int = 3) -> None:
    """A teacher's logits file: one row per training sample in the data's order (or in `order`), test after."""
    rng = np.random.default_rng(3)

    def logits(y):
        return (3.0 * np.eye(classes)[y] + rng.normal(0, 1, (len(y), classes))).astype(np.float32)

    train = logits(arrays["y_train"])
    np.savez(path, train=train if order is None else train[order], test=logits(arrays["y_test"]))


# --------------------------------------------------------------------------- helpers


def sweep(example: str, *sets: str) -> int:
    """`kdtrain sweep sweeps/examples/EXAMPLE.yaml --set ...`, cut to two short trials."""
    args = ["sweep", str(EXAMPLES / f"{example}.yaml")]
    for s in sets:
        args += ["--set", s]
    return main(args + FAST)


def runs(study: str) -> dict[str, object]:
    """MLflow runs of a study by name, read from the real SQLite store."""
    client = MlflowClient(f"sqlite:///{Path(os.environ['KDTRAIN_HOME']) / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study}"
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def check_study_runs(study: str, trials: int, teacher: str) -> dict:
    found = runs(study)
    students = {n: r for n, r in found.items() if r.data.tags.get("kdtrain.role") == "student"}
    assert sorted(students) == [f"trial-{i}" for i in range(trials)], sorted(found)
    assert all(r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics for r in students.values())
    run = found[f"teacher-{teacher}"]
    assert run.data.tags["kdtrain.role"] == "teacher" and run.info.status == "FINISHED"
    assert 0 <= run.data.metrics["val_accuracy"] <= 1
    return found


# --------------------------------------------------------------------------- the README's walkthrough


def readme_blocks() -> list[list[list[str]]]:
    """The shell blocks of README's "Distil your own model", each a list of argv (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Distil your own model\n", 1)[1].split("\n## ", 1)[0]
    return [
        [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
    ]


TEACHER = {
    "folder": "resnet",
    "arrays": "cnn",
    "csv": "wide",
    "python": "wide",
    "logits": "centroid",
    "onnx": "exported",
}
"""The teacher of each example sweep."""


def test_readme_walkthrough_and_every_example(tmp_path, capsys):
    """The README's walkthrough as written, from a directory laid out like the repository root: the example data
    is made, the PNG folder is decoded once, torchvision's resnet18 is trained as the teacher, a python: student
    is swept, and the trials, the teacher and the report land where the README says. Then every other example
    the README shows, each cut to two short trials."""
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    walkthrough, others = readme_blocks()
    assert [c[0] for c in walkthrough] == [".venv/bin/python"] + [".venv/bin/kdtrain"] * (len(walkthrough) - 1)
    assert walkthrough[-1][1:] == ["sweep", "sweeps/examples/folder.yaml"]
    printed = {}
    for argv in walkthrough:
        before = sources.decoded_images
        if argv[0].endswith("python"):  # the data script, run as a script
            old, sys.argv = sys.argv, argv[1:]
            try:
                runpy.run_path(argv[1], run_name="__main__")
            finally:
                sys.argv = old
        else:
            assert main(argv[1:]) == 0, argv
        printed[argv[1]] = (capsys.readouterr().out, sources.decoded_images - before)

    # the folder is decoded by the first command that reads it, then read from the cache
    out, decoded = printed["teachers"]
    assert decoded == 300 and "decoded 300 images" in out
    for command in ("train", "sweep"):
        out, decoded = printed[command]
        assert decoded == 0 and "300 images from the cache" in out
    found = check_study_runs("example-folder", 3, "resnet")
    teacher = found["teacher-resnet"]
    assert teacher.data.params["teacher.arch"] == "torchvision:resnet18"
    assert teacher.data.metrics["params"] > 1e7  # torchvision's resnet18, its head sized to 3 classes
    assert teacher.data.metrics["val_accuracy"] > 0.5  # a teacher worth distilling from (3 classes; 0.96 here)
    assert found["trial-0"].data.params["student.arch"] == "python:sweeps.examples.my_models:small_cnn"
    assert (tmp_path / "reports" / "example-folder" / "index.html").is_file()

    shown = set()
    for argv in others:
        assert argv[:2] == [".venv/bin/kdtrain", "sweep"] and argv[2].startswith("sweeps/examples/"), argv
        example = Path(argv[2]).stem
        shown.add(example)
        assert main(argv[1:] + FAST) == 0, argv
        check_study_runs(f"example-{example}", 2, TEACHER[example])
    assert shown | {"folder"} == set(TEACHER)  # the README shows every example


# --------------------------------------------------------------------------- each source, end to end


def test_folder_is_decoded_once_and_again_when_it_changes(tmp_path):
    write_images(tmp_path / "imgs", {"a": 8, "b": 8, "c": 8})
    cfg = config.load(EXAMPLES / "folder.yaml", [f"data.path={tmp_path / 'imgs'}", "data.image_size=8"])
    start = sources.decoded_images
    first = datasets.load(cfg.data)
    assert sources.decoded_images - start == 24 and "decoded 24 images" in first.note
    assert first.input_shape == (3, 8, 8) and first.class_names == ["a", "b", "c"]
    assert len(first.y_train) + len(first.y_val) + len(first.y_test) == 24  # <class>/ alone: test_fraction split
    assert list((tmp_path / "data" / "folders").glob("*.pt"))  # the cache lives under the data root
    second = datasets.load(cfg.data)
    assert sources.decoded_images - start == 24 and "24 images from the cache" in second.note
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    # pixels scaled to [0, 1] and standardised per channel with the training rows' statistics
    assert first.scale == pytest.approx(1 / 255)
    assert first.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    # a replaced image (new size or mtime) changes the listing: the folder is decoded again
    img = tmp_path / "imgs" / "a" / "a-0.png"
    Image.new("RGB", (12, 12), (255, 255, 255)).save(img)
    datasets.load(cfg.data)
    assert sources.decoded_images - start == 48


def test_arrays_source_sweep(tmp_path, capsys):
    write_arrays(tmp_path / "in" / "waves.npz")
    assert sweep("arrays", f"data.path={tmp_path / 'in' / 'waves.npz'}", "teachers.cnn.epochs=2") == 0
    check_study_runs("example-arrays", 2, "cnn")
    cfg = config.load(EXAMPLES / "arrays.yaml", [f"data.path={tmp_path / 'in' / 'waves.npz'}"])
    ds = datasets.load(cfg.data)
    assert ds.input_shape == (2, 16) and ds.class_names == ["low", "mid", "high"]  # class_names kept, in order
    assert len(ds.y_train) + len(ds.y_val) == 120 and len(ds.y_test) == 30


def test_a_study_refuses_to_resume_on_changed_data(tmp_path, capsys):
    """A study's results belong to the data it was created on: the same file name with other content is another
    study (the content recorded at creation is compared with the file as it is now)."""
    path = tmp_path / "in" / "waves.npz"
    write_arrays(path)
    assert sweep("arrays", f"data.path={path}", "teachers.cnn.epochs=1") == 0
    capsys.readouterr()
    assert sweep("arrays", f"data.path={path}", "teachers.cnn.epochs=1") == 0  # unchanged: resumes, trains nothing
    assert "2/2 trials done" in capsys.readouterr().out
    write_arrays(path, n_train=130)
    assert sweep("arrays", f"data.path={path}", "teachers.cnn.epochs=1") == 1
    err = capsys.readouterr().err
    assert "study 'example-arrays' was made from other data: what" in err and "waves.npz" in err
    assert "--new-study" in err and "restore the files" in err


def test_a_folder_is_keyed_by_its_images_content_not_their_file_times(tmp_path):
    """make_data.py run twice wrote the same images with new modification times: the same data, for the decoded
    cache and for a study's settings; another image's content is other data."""
    import os

    write_images(tmp_path / "imgs", {"a": 8, "b": 8})
    cfg = config.load(EXAMPLES / "folder.yaml", [f"data.path={tmp_path / 'imgs'}", "data.image_size=8"])
    before = sources.identity(cfg.data)
    write_images(tmp_path / "imgs", {"a": 8, "b": 8})  # the same pixels, written again
    for p in (tmp_path / "imgs").rglob("*.png"):
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    sources._file_digests.clear()  # as a new process would
    assert sources.identity(cfg.data) == before
    start = sources.decoded_images
    datasets.load(cfg.data), datasets.load(cfg.data)
    assert sources.decoded_images - start in (0, 16)  # decoded at most once for both loads
    write_images(tmp_path / "imgs", {"a": 8, "b": 8}, seed=1)  # other pixels
    assert sources.identity(cfg.data) != before


def test_csv_source_with_string_labels(tmp_path, capsys):
    write_csv(tmp_path / "in" / "animals.csv")
    path = tmp_path / "in" / "animals.csv"
    assert sweep("csv", f"data.path={path}", "teachers.wide.epochs=2") == 0
    check_study_runs("example-csv", 2, "wide")
    cfg = config.load(EXAMPLES / "csv.yaml", [f"data.path={path}"])
    x, y, x_test, y_test, names, note = datasets.DATASETS["csv"](cfg.data)
    assert names == ["ant", "moose", "zebra"]  # string labels -> their sorted names
    for xs, ys in ((x, y), (x_test, y_test)):  # each row's label is its own: f1 says which
        assert [names[i] for i in ys] == [min(SPECIES, key=lambda n: abs(SPECIES[n] - v)) for v in xs[:, 0, 0]]
    assert x.shape[1:] == (1, 3) and "ignored non-numeric column(s) note" in note
    assert len(y_test) == 24  # data.test_fraction 0.2 of 120 rows
    assert datasets.load(cfg.data).class_names == ["ant", "moose", "zebra"]


def test_python_data_factory_example():
    cfg = config.load(EXAMPLES / "python.yaml")
    ds = datasets.load(cfg.data)
    assert ds.class_names == ["red", "green", "blue"] and ds.input_shape == (1, 2)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == cfg.data.size


def test_logits_teacher_sweep(tmp_path, capsys):
    arrays = write_arrays(tmp_path / "in" / "waves.npz", n_train=150)
    write_logits(tmp_path / "in" / "logits.npz", arrays)
    sets = [f"data.path={tmp_path / 'in' / 'waves.npz'}", f"teachers.centroid.logits={tmp_path / 'in' / 'logits.npz'}"]
    assert sweep("logits", *sets) == 0
    out = capsys.readouterr().out
    assert re.search(r"teacher centroid: logits file agrees with the labels on \d+\.\d% of the training rows", out)
    found = check_study_runs("example-logits", 2, "centroid")
    assert found["teacher-centroid"].data.tags["kdtrain.source"] == "logits"
    # the cached logits are the file's rows, split as the data is (validation rows carved from train)
    cfg = config.load(EXAMPLES / "logits.yaml", sets)
    ds = datasets.load(cfg.data)
    t = teachers.get_teacher(cfg.teacher("centroid"), cfg, ds, log=lambda line: None)
    file = np.load(tmp_path / "in" / "logits.npz")
    assert t.cached and t.model is None  # the sweep ran with train.epochs=2: a logits file ignores train settings
    assert torch.equal(t.logits["train"], torch.from_numpy(file["train"][ds.train_rows]))
    assert torch.equal(t.logits["val"], torch.from_numpy(file["train"][ds.val_rows]))
    assert torch.equal(t.logits["test"], torch.from_numpy(file["test"]))
    assert t.val_accuracy == pytest.approx(found["teacher-centroid"].data.metrics["val_accuracy"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch calls its TorchScript-based exporter legacy
def test_onnx_teacher_gives_the_logits_of_the_model_it_was_exported_from(tmp_path):
    pytest.importorskip("onnxruntime")
    write_arrays(tmp_path / "in" / "waves.npz")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    onnx_file = tmp_path / "in" / "teacher.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(2, 2, 16),),
        str(onnx_file),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    cfg = config.load(
        EXAMPLES / "onnx.yaml", [f"data.path={tmp_path / 'in' / 'waves.npz'}", f"teachers.exported.weights={onnx_file}"]
    )
    ds = datasets.load(cfg.data)
    pool = teachers.load_pool(cfg, ds)
    t = pool["exported"]
    assert t.source == "onnx" and teachers.kind(t.config) == "onnx"
    with torch.no_grad():
        for split in ("train", "val", "test"):
            expected = net(getattr(ds, f"x_{split}"))
            assert t.logits[split].shape == expected.shape
            assert (t.logits[split] - expected).abs().max().item() <= 1e-4, split
    again = teachers.load_pool(cfg, ds)["exported"]  # computed once, then read from the cache
    assert again.cached and torch.equal(again.logits["train"], t.logits["train"])


# --------------------------------------------------------------------------- bad files: one line, exit 2, no file


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def refused(tmp_path, capsys, example: str, sets: list[str], says: list[str]) -> str:
    before = snapshot(tmp_path)
    rc = sweep(example, *sets)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert err.count("kdtrain: error:") == 1 and lines[0].startswith("kdtrain: error:"), err
    # one line; a path that does not exist is a sweep-file problem, listed as such (kdtrain's ConfigError form)
    assert len(lines) == 1 or (lines[0].endswith("1 problem:") and len(lines) == 2), err
    assert "Traceback" not in out + err
    for s in says:
        assert s in err, (s, err)
    assert snapshot(tmp_path) == before, "something was written"
    assert not (tmp_path / "home").exists()  # no journal, no MLflow store, no cache
    return err


def _folder(tmp_path, **per_class):
    write_images(tmp_path / "in" / "imgs", per_class or {"a": 5, "b": 5})
    return tmp_path / "in" / "imgs"


def folder_missing(tmp_path):
    return "folder", [f"data.path={tmp_path / 'in' / 'nope'}"], ["data.path: no such folder", "nope"]


def folder_unreadable_image(tmp_path):
    root = _folder(tmp_path)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really" + bytes(range(256)))
    return "folder", [f"data.path={root}"], ["cannot decode image", str(root / "b" / "broken.png")]


def folder_one_class(tmp_path):
    root = _folder(tmp_path, only=6)
    return "folder", [f"data.path={root}"], [f"data.path {root}", "1 class folder(s) (only)", "two or more"]


def folder_mixed_modes(tmp_path):
    root = _folder(tmp_path)
    write_images(root, {"c": 3}, mode="L")
    return "folder", [f"data.path={root}"], ["images of mixed modes", "grayscale", "colour"]


def folder_test_class_not_in_train(tmp_path):
    write_images(tmp_path / "in" / "imgs" / "train", {"a": 5, "b": 5})
    write_images(tmp_path / "in" / "imgs" / "test", {"a": 2, "z": 2})
    return "folder", [f"data.path={tmp_path / 'in' / 'imgs'}"], ["class 'z' has no folder", "training images"]


def arrays_missing(tmp_path):
    return "arrays", [f"data.path={tmp_path / 'in' / 'nope.npz'}"], ["data.path: no such file", "nope.npz"]


def arrays_unreadable(tmp_path):
    p = tmp_path / "in" / "x.npz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x00\xffgarbage" * 50)
    return "arrays", [f"data.path={p}"], [f"data.path {p}", "not a readable .npz file"]


def arrays_wrong_keys(tmp_path):
    p = tmp_path / "in" / "x.npz"
    p.parent.mkdir(parents=True)
    np.savez(p, features=np.zeros((20, 4)), labels=np.zeros(20))
    return (
        "arrays",
        [f"data.path={p}"],
        [f"data.path {p}", "missing x_train, y_train, x_test, y_test", "features, labels"],
    )


def arrays_mismatched_lengths(tmp_path):
    p = tmp_path / "in" / "x.npz"
    write_arrays(p, y_train=np.zeros(119, np.int64))
    return "arrays", [f"data.path={p}"], ["y_train has 119 labels but x_train has 120 samples"]


def arrays_labels_out_of_range(tmp_path):
    p = tmp_path / "in" / "x.npz"
    write_arrays(p, y_test=np.full(30, 3, np.int64))  # class_names names 3 classes: 0..2
    return "arrays", [f"data.path={p}"], ["y_test has label 3 outside 0..2", "class_names names 3 classes"]


def arrays_one_class(tmp_path):
    p = tmp_path / "in" / "x.npz"
    write_arrays(p, y_train=np.zeros(120, np.int64), y_test=np.zeros(30, np.int64), class_names=None)
    return "arrays", [f"data.path={p}"], ["y_train has one class only"]


def arrays_nan_features(tmp_path):
    p = tmp_path / "in" / "x.npz"
    x = separable(120, (2, 16))[0]
    x[5, 1, 3] = np.nan
    write_arrays(p, x_train=x)
    return "arrays", [f"data.path={p}"], ["x_train holds NaN or infinite values"]


def csv_missing(tmp_path):
    return "csv", [f"data.path={tmp_path / 'in' / 'nope.csv'}"], ["data.path: no such file", "nope.csv"]


def csv_unreadable(tmp_path):
    p = tmp_path / "in" / "t.csv"
    p.parent.mkdir(parents=True)
    p.write_bytes(bytes(range(256)) * 8)
    return "csv", [f"data.path={p}"], [f"data.path {p}", "not a readable CSV table"]


def csv_no_label_column(tmp_path):
    p = tmp_path / "in" / "t.csv"
    write_csv(p, label="kind")
    return "csv", [f"data.path={p}"], ["no column 'species'", "f1, f2, f3, note, kind", "set data.label"]


def csv_one_class(tmp_path):
    p = tmp_path / "in" / "t.csv"
    write_csv(p, names=("ant",))
    return "csv", [f"data.path={p}"], ["y_train has one class only ('ant')"]


def csv_test_labels_unknown(tmp_path):
    write_csv(tmp_path / "in" / "train.csv", names=("ant", "moose"))
    write_csv(tmp_path / "in" / "test.csv", n=10, names=("ant", "zebra"))
    return (
        "csv",
        [f"data.path={tmp_path / 'in' / 'train.csv'}", f"data.test_path={tmp_path / 'in' / 'test.csv'}"],
        ["y_test has label(s) 'zebra'", "every class needs training samples"],
    )


def _with_logits(tmp_path):
    arrays = write_arrays(tmp_path / "in" / "waves.npz", n_train=300)
    return arrays, [
        f"data.path={tmp_path / 'in' / 'waves.npz'}",
        f"teachers.centroid.logits={tmp_path / 'in' / 'logits.npz'}",
    ]


def logits_missing(tmp_path):
    _, sets = _with_logits(tmp_path)
    return "logits", sets, ["teachers (centroid).logits", "logits.npz: no such file"]


def logits_unreadable(tmp_path):
    _, sets = _with_logits(tmp_path)
    (tmp_path / "in" / "logits.npz").write_bytes(b"PK\x03\x04 broken zip" * 20)
    return "logits", sets, ["teachers (centroid).logits", "logits.npz: not a readable .npz file"]


def logits_wrong_keys(tmp_path):
    _, sets = _with_logits(tmp_path)
    np.savez(tmp_path / "in" / "logits.npz", train_logits=np.zeros((300, 3)), test_logits=np.zeros((30, 3)))
    return "logits", sets, ["missing array(s) train, test", "train_logits, test_logits"]


def logits_mismatched_rows(tmp_path):
    arrays, sets = _with_logits(tmp_path)
    # rows for the training set after a validation carve: the file must hold every training row of the data
    write_logits(tmp_path / "in" / "logits.npz", arrays, order=np.arange(240))
    return "logits", sets, ["train has shape (240, 3), the data needs (300, 3)"]


def logits_rows_shuffled(tmp_path):
    arrays, sets = _with_logits(tmp_path)
    write_logits(tmp_path / "in" / "logits.npz", arrays, order=np.random.default_rng(0).permutation(300))
    return "logits", sets, ["rows not in the data's order?", "before kdtrain carves its validation split"]


def onnx_unreadable(tmp_path):
    pytest.importorskip("onnxruntime")
    write_arrays(tmp_path / "in" / "waves.npz")
    (tmp_path / "in" / "t.onnx").write_bytes(b"\x08\x07 not a model" * 30)
    sets = [f"data.path={tmp_path / 'in' / 'waves.npz'}", f"teachers.exported.weights={tmp_path / 'in' / 't.onnx'}"]
    return "onnx", sets, ["teachers (exported).weights", "t.onnx: not a readable ONNX model"]


def python_student_raises(tmp_path):
    write_arrays(tmp_path / "in" / "waves.npz")
    module = f"raising_student_{abs(hash(str(tmp_path))) % 10**8}"  # a fresh module per run: nothing cached
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent("""
        def student(input_shape, num_classes, width):
            raise ValueError(f"no student for {input_shape}")
    """)
    )
    return (
        "arrays",
        [f"data.path={tmp_path / 'in' / 'waves.npz'}", f"student.arch=python:{module}:student"],
        ["student.arch", f"python:{module}:student((2, 16), 3, 4) raised ValueError: no student for (2, 16)"],
    )


def python_data_factory_raises(tmp_path):
    module = f"raising_data_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{module}.py").write_text("def make():\n    raise RuntimeError('the database is down')\n")
    return (
        "python",
        [f"data.factory={module}:make"],
        [f"data.factory {module}:make raised RuntimeError: the database is down"],
    )


BAD = [
    folder_missing,
    folder_unreadable_image,
    folder_one_class,
    folder_mixed_modes,
    folder_test_class_not_in_train,
    arrays_missing,
    arrays_unreadable,
    arrays_wrong_keys,
    arrays_mismatched_lengths,
    arrays_labels_out_of_range,
    arrays_one_class,
    arrays_nan_features,
    csv_missing,
    csv_unreadable,
    csv_no_label_column,
    csv_one_class,
    csv_test_labels_unknown,
    logits_missing,
    logits_unreadable,
    logits_wrong_keys,
    logits_mismatched_rows,
    logits_rows_shuffled,
    onnx_unreadable,
    python_student_raises,
    python_data_factory_raises,
]


@pytest.mark.parametrize("case", BAD, ids=[f.__name__ for f in BAD])
def test_bad_file_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing the test's own module writes no .pyc
    example, sets, says = case(tmp_path)
    refused(tmp_path, capsys, example, sets, says)


# --------------------------------------------------------------------------- the shipped examples


def test_every_example_sweep_loads_and_reads_the_data_make_data_writes(tmp_path, capsys):
    """Every file under sweeps/examples/ loads with kdtrain.config.load (from a directory laid out like the
    repository root, after make_data.py) and its data loads: the sources the examples stand for, each once."""
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.stem for p in files} == {"folder", "arrays", "csv", "python", "logits", "onnx"}
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_data
    finally:
        sys.path.remove(str(EXAMPLES))
    make_data.main(Path("data"))
    seen = set()
    for p in files:
        cfg = config.load(Path("sweeps/examples") / p.name)
        assert cfg.study.name == f"example-{p.stem}" and cfg.search and cfg.study.baseline_seeds == 1
        assert set(cfg.kd_teachers) <= {t.name for t in cfg.teachers}
        seen.add(cfg.data.name)
        seen.update(teachers.kind(t) for t in cfg.teachers)
        ds = datasets.load(cfg.data)
        assert ds.num_classes == 3 and len(ds.y_train) >= 100, p.name
    assert seen == {"folder", "arrays", "csv", "python", "train", "logits", "onnx"}
