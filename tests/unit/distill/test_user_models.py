"""Models from anywhere: torchvision:NAME (head sized to the data, ImageNet weights from the local torch cache
only) and python:package.module:function factories; check_fits runs each on the data before any training."""

import textwrap

import pytest
import torch
from torch import nn

from kdtrain.config import DataError, KdtrainError, StudentConfig
from kdtrain.deploy.profile import count_params
from kdtrain.distill import models

FACTORY = """
from torch import nn

def small(input_shape, num_classes, width, depth=1):
    layers = [nn.Flatten()]
    prev = 1
    for s in input_shape:
        prev *= s
    for _ in range(depth):
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    return nn.Sequential(*layers, nn.Linear(prev, num_classes))

def plain(input_shape, num_classes, width):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def wrong_out(input_shape, num_classes, width):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))

def not_a_module(input_shape, num_classes, width):
    return "a string"

def raises(input_shape, num_classes, width):
    raise ValueError("width must be even")
"""


@pytest.fixture
def factories(tmp_path):
    """A user's module in the current directory (the tests' cwd is tmp_path), importable by name only."""
    (tmp_path / "user_factories.py").write_text(textwrap.dedent(FACTORY))
    return "python:user_factories"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "googlenet"])
def test_a_torchvision_model_gets_a_head_for_the_data_and_returns_one_tensor(name):
    m = models.create_model(f"torchvision:{name}", (3, 32, 32), 7, width=1).train()
    out = m(torch.zeros(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)  # no auxiliary outputs in training mode


def test_a_grayscale_image_is_repeated_to_the_three_channels_torchvision_expects():
    m = models.create_model("torchvision:resnet18", (1, 28, 28), 10, width=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), m.net(x.expand(-1, 3, -1, -1)))


def test_torchvision_refuses_signals():
    with pytest.raises(KdtrainError, match="1- or 3-channel images"):
        models.create_model("torchvision:resnet18", (1, 40), 10, width=1)


def test_pretrained_weights_come_from_the_local_torch_cache_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(KdtrainError, match=r"not in the local torch cache .*resnet18-f37072fd\.pth"):
        models.create_model("torchvision:resnet18", (3, 32, 32), 5, width=1, pretrained=True)
    # the file torchvision would have downloaded, in its real format (a state dict of the ImageNet model)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), ckpt)
    m = models.create_model("torchvision:resnet18", (3, 32, 32), 5, width=1, pretrained=True)
    assert torch.equal(m.conv1.weight, imagenet.conv1.weight) and torch.equal(
        m.layer4[1].bn2.bias, imagenet.layer4[1].bn2.bias
    )
    assert m.fc.out_features == 5 and m.fc.in_features == 512


def test_a_python_factory_gets_shape_classes_width_and_the_settings_it_names(factories):
    m = models.create_model(f"{factories}:small", (1, 12), 3, width=5, depth=2)
    assert count_params(m) == (12 * 5 + 5) + (5 * 5 + 5) + (5 * 3 + 3)
    wider = models.create_model(f"{factories}:small", (1, 12), 3, width=9, depth=2)
    assert count_params(wider) > count_params(m)  # a user's family is swept by width
    with pytest.raises(KdtrainError, match="takes no depth argument"):
        models.create_model(f"{factories}:plain", (1, 12), 3, width=4, depth=2)


@pytest.mark.parametrize(
    "fn, says",
    [
        ("not_a_module", "must return a torch.nn.Module, got str"),
        ("raises", "raised ValueError: width must be even"),
        ("missing", "has no function 'missing'"),
    ],
)
def test_a_broken_python_factory_is_one_clear_error(factories, fn, says):
    with pytest.raises(KdtrainError, match=says):
        models.create_model(f"{factories}:{fn}", (1, 12), 3, width=4)


def test_an_unknown_module_names_what_to_do(tmp_path):
    with pytest.raises(KdtrainError, match=r"cannot import 'no_such_module_here'.*current directory"):
        models.create_model("python:no_such_module_here:f", (1, 12), 3, width=4)


def test_check_fits_runs_each_model_on_the_data_before_training(factories):
    ok = [("student", StudentConfig(arch=f"{factories}:plain", width=4))]
    models.check_fits(ok, (1, 12), 3)
    with pytest.raises(DataError, match=r"student.arch python:user_factories:wrong_out: returns \(2, 4\)"):
        models.check_fits([("student", StudentConfig(arch=f"{factories}:wrong_out", width=4))], (1, 12), 3)
    with pytest.raises(DataError, match="does not run on this data's samples of shape"):
        models.check_fits([("teachers (t)", StudentConfig(arch="torchvision:vit_b_16", width=4))], (3, 32, 32), 3)
    with pytest.raises(DataError, match=r"student\.arch: torchvision models take 1- or 3-channel"):
        models.check_fits([("student", StudentConfig(arch="torchvision:resnet18", width=4))], (2, 32, 32), 3)


def test_registered_families_are_not_rebuilt_by_check_fits(monkeypatch):
    """The registry's families fit every shape (tests/test_models.py builds them all): no time spent on them."""
    calls = []
    monkeypatch.setitem(models.MODELS, "mlp", lambda *a, **k: calls.append(a) or nn.Linear(1, 1))
    models.check_fits([("student", StudentConfig(arch="mlp", width=4))], (1, 12), 3)
    assert calls == []
