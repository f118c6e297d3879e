"""Teachers named by a reference that moves (issue 29 item 13): an MLflow model alias that `kdtrain register` or
the registry moves, a `python:` arch whose code is edited. The cache kept the first teacher it ever made for the
reference's text; it keys them by what the reference names now, and says so when one moved.

Real runs of `kdtrain` in subprocesses (each its own process, as two sweeps a day apart are) against a real MLflow
store in a SQLite file, with a real alias move."""

import sys
import textwrap

import mlflow
import torch
from mlflow.tracking import MlflowClient
from support import run_cli

from kdtrain import config
from kdtrain.config import TeacherConfig
from kdtrain.data import datasets
from kdtrain.distill import models
from kdtrain.sweep.session import load_pool

SWEEP = """
study: {name: moving, trials: 1, pruner: none, baseline_seeds: 1}
data: {name: synthetic, size: 300, seed: 1}
teachers:
  - {name: reg, arch: ARCH, width: 8, WEIGHTS}
student: {arch: mlp, width: 4}
train: {epochs: 1, batch_size: 64, threads: 1}
kd: {temperature: 2.0, alpha: 0.5, teachers: [reg]}
search:
  kd.alpha: {type: float, low: 0, high: 1}
"""


def _sweep(tmp_path, arch="mlp", weights="epochs: 1"):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(SWEEP).replace("ARCH", arch).replace("WEIGHTS", weights))
    return p


def _pool(p):
    """The sweep file's teacher, loaded in this process as `kdtrain teachers` does."""
    cfg = config.load(p)
    return load_pool(cfg, datasets.load(cfg.data), log=lambda line: None)["reg"]


def _version(seed: int) -> None:
    """A registered version of `teach`: an mlp teacher for synthetic data (4 classes, (1, 16)) with seeded weights."""
    torch.manual_seed(seed)
    net = models.from_config(TeacherConfig(name="reg", arch="mlp", width=8), (1, 16), 4)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(net, name="model", serialization_format="pickle")
    mlflow.register_model(info.model_uri, "teach")


def test_a_teacher_named_by_a_moved_alias_is_reloaded_and_says_so(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the registry the teacher is read from, and the sweep's store
    mlflow.set_tracking_uri(uri)
    _version(1), _version(2)
    client = MlflowClient(uri)
    client.set_registered_model_alias("teach", "champion", "1")
    p = _sweep(tmp_path, weights="weights: 'models:/teach@champion'")
    assert _pool(p).source == "mlflow"  # this process: the first sweep, at version 1
    client.set_registered_model_alias("teach", "champion", "2")  # as `kdtrain register --alias champion` does
    again = run_cli("sweep", p, env={"MLFLOW_TRACKING_URI": uri})
    assert again.returncode == 0, again.stdout + again.stderr
    said = "reloaded: models:/teach@champion names other weights than when it was cached"
    assert f"teacher reg: {said}" in again.stdout
    entries = sorted((tmp_path / "home" / "cache" / "teachers").glob("reg-*/logits.pt"))
    assert len(entries) == 2  # one teacher per version, each with its own logits
    a, b = (torch.load(e, weights_only=True)["val"] for e in entries)
    assert not torch.allclose(a, b)
    summary = (tmp_path / "reports" / "moving" / "summary.md").read_text()
    assert said in summary.split("## Teachers")[1]  # the report's teacher table says why it was made anew


NET = """
from torch import nn

def make(input_shape, num_classes, width):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], width), nn.ACTIVATION(),
                         nn.Linear(width, num_classes))
"""


def test_a_python_teacher_whose_code_was_edited_is_retrained_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "mynet.py").write_text(textwrap.dedent(NET).replace("ACTIVATION", "ReLU"))
    p = _sweep(tmp_path, arch="'python:mynet:make'")
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert _pool(p).source == "trained"
    sys.modules.pop("mynet")  # imported here (by the first load), forgotten before the edit
    # edited, its weights' shapes unchanged: the cached state dict still loads, and was kept
    (tmp_path / "mynet.py").write_text(textwrap.dedent(NET).replace("ACTIVATION", "Tanh"))
    again = run_cli("teachers", p, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "retrained: python:mynet:make" in again.stdout and "changed since it was cached" in again.stdout
    assert "all 1 teachers came from the cache" not in again.stdout
