import dataclasses

import pytest
import torch

from kdtrain import config
from kdtrain.config import KdtrainError
from kdtrain.data import datasets
from kdtrain.distill import models
from kdtrain.distill.teachers import get_teacher, load_pool, teacher_key
from kdtrain.sweep import session


@pytest.fixture
def cfg(tiny_sweep):
    return config.load(tiny_sweep)


@pytest.fixture
def ds(cfg):
    return datasets.load(cfg.data)


def test_pool_trains_once_then_comes_from_cache(cfg, ds):
    logs = []
    first = load_pool(cfg, ds, log=logs.append)
    assert [t.source for t in first.values()] == ["trained", "trained"]
    assert sum("training" in line for line in logs) == 2
    assert first["big"].val_accuracy > 0.8
    assert first["big"].logits["train"].shape == (len(ds.y_train), ds.num_classes)

    logs.clear()
    epochs = []
    second = load_pool(cfg, ds, log=logs.append, on_epoch=lambda n, s: epochs.append(n))
    assert [t.source for t in second.values()] == ["cache", "cache"]
    assert logs == [] and epochs == []  # nothing trained
    for name in first:
        assert torch.equal(first[name].logits["train"], second[name].logits["train"])
        assert first[name].val_accuracy == second[name].val_accuracy
        for p, q in zip(first[name].model.parameters(), second[name].model.parameters(), strict=False):
            assert torch.equal(p, q)
    # cached logits are the cached model's outputs
    from kdtrain.distill.train import predict

    assert torch.allclose(predict(second["big"].model, ds.x_val), second["big"].logits["val"], atol=1e-5)


def test_cache_key_follows_config_and_data(cfg):
    t = cfg.teacher("big")
    base = teacher_key(t, cfg)
    assert teacher_key(t, config.from_dict(cfg.to_dict())) == base
    assert teacher_key(dataclasses.replace(t, epochs=9), cfg) != base
    assert teacher_key(t, config.replace(cfg, {"data.seed": 2})) != base
    assert teacher_key(t, config.replace(cfg, {"train.lr": 0.02})) != base  # it inherits train.lr...
    own_lr = dataclasses.replace(t, lr=0.02)
    assert teacher_key(own_lr, config.replace(cfg, {"train.lr": 0.05})) == teacher_key(
        own_lr, cfg
    )  # ...unless it sets one
    assert teacher_key(t, config.replace(cfg, {"train.epochs": 99})) == base  # it sets its own epochs
    assert teacher_key(t, config.replace(cfg, {"data.root": "/elsewhere"})) == base  # where files live is irrelevant
    assert teacher_key(t, config.replace(cfg, {"kd.alpha": 0.1})) == base  # student settings are irrelevant


def test_damaged_cache_is_retrained(cfg, ds):
    t = load_pool(cfg, ds, ["big"])["big"]
    (t.path / "logits.pt").write_bytes(b"garbage")
    again = load_pool(cfg, ds, ["big"])["big"]
    assert again.source == "trained"


def with_weights(cfg, ref, width=64):
    raw = cfg.to_dict()
    raw["teachers"][0].update(weights=str(ref), width=width)
    return config.from_dict(raw)


def test_teacher_from_checkpoint(cfg, ds, tmp_path):
    trained = load_pool(cfg, ds, ["big"])["big"]
    ckpt = tmp_path / "big.pt"
    torch.save({"state_dict": trained.model.state_dict()}, ckpt)
    c = with_weights(cfg, ckpt)
    t = get_teacher(c.teacher("big"), c, ds)
    assert t.source == "checkpoint" and t.val_accuracy == trained.val_accuracy
    assert get_teacher(c.teacher("big"), c, ds).source == "cache"


def test_corrupt_checkpoint_is_a_clear_error(cfg, ds, tmp_path):
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(b"\x00not a checkpoint")
    c = with_weights(cfg, ckpt)
    with pytest.raises(KdtrainError, match="not a readable PyTorch state dict"):
        get_teacher(c.teacher("big"), c, ds)


def test_checkpoint_of_wrong_shape_is_a_clear_error(cfg, ds, tmp_path):
    other = models.create_model("mlp", ds.input_shape, ds.num_classes, 32)
    ckpt = tmp_path / "w32.pt"
    torch.save(other.state_dict(), ckpt)
    c = with_weights(cfg, ckpt, width=64)
    with pytest.raises(KdtrainError, match="do not fit arch mlp at width 64"):
        get_teacher(c.teacher("big"), c, ds)


def test_missing_checkpoint_is_a_clear_error(cfg, ds, tmp_path):
    c = with_weights(cfg, tmp_path / "nope.pt")
    with pytest.raises(KdtrainError, match="does not exist"):
        get_teacher(c.teacher("big"), c, ds)


def test_teacher_from_mlflow_model_uri(cfg, ds, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    trained = load_pool(cfg, ds, ["big"])["big"]
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(trained.model, name="teacher", input_example=ds.x_val[:2].numpy())
    c = with_weights(cfg, info.model_uri)
    with pytest.raises(KdtrainError, match="model URI"):  # the cache alone knows no MLflow
        get_teacher(c.teacher("big"), c, ds)
    t = session.load_pool(c, ds, ["big"])["big"]  # the pool as commands load it: MLflow URIs read by tracking
    assert t.source == "mlflow" and t.val_accuracy == trained.val_accuracy
