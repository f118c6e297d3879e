import pytest
import torch

from kdtrain.deploy.profile import count_params
from kdtrain.distill.models import MODELS, create_model

SHAPES = {"mnist1d": (1, 40), "synthetic": (1, 16), "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_every_family_builds_for_every_dataset_shape(arch, dataset):
    shape = SHAPES[dataset]
    if arch == "resnet18" and dataset in ("mnist", "cifar10"):
        widths = (4, 8)  # full-size resnet18 works too but is slow to run on 2 cores
    else:
        widths = (4, 8, 16)
    counts = []
    for w in widths:
        torch.manual_seed(0)
        m = create_model(arch, shape, 10, w).eval()
        with torch.no_grad():
            out = m(torch.randn(3, *shape))
        assert out.shape == (3, 10)
        assert torch.isfinite(out).all()
        counts.append(count_params(m))
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"params must grow with width: {counts}"


def test_classic_mnist_mlps():
    teacher = create_model("mlp", (1, 28, 28), 10, 0, hidden=[512, 256])
    student = create_model("mlp", (1, 28, 28), 10, 128)
    assert count_params(teacher) == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert count_params(student) == 784 * 128 + 128 + 128 * 10 + 10


def test_tiny_cnn_is_conv16_conv32_fc128_at_width_16():
    m = create_model("tiny_cnn", (1, 28, 28), 10, 16)
    convs = [layer for layer in m if isinstance(layer, torch.nn.Conv2d)]
    linears = [layer for layer in m if isinstance(layer, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [16, 32]
    assert [lin.out_features for lin in linears] == [128, 10]
    assert linears[0].in_features == 32 * 7 * 7


def test_resnet18_width64_keeps_torchvision_structure():
    import torchvision

    ours = create_model("resnet18", (3, 224, 224), 1000, 64)
    theirs = torchvision.models.resnet18()
    assert count_params(ours) == count_params(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    small = create_model("resnet18", (3, 32, 32), 10, 64)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)


def test_pretrained_resnet18_missing_from_cache_is_a_clear_error(tmp_path, monkeypatch):
    from kdtrain.config import KdtrainError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(KdtrainError, match="not in the local cache"):
        create_model("resnet18", (3, 32, 32), 10, 64, pretrained=True)


def test_pretrained_resnet18_loads_from_local_cache(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref = torchvision.models.resnet18()  # stands in for the ImageNet file, written where torch.hub looks
    path = tmp_path / "torch" / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    m = create_model("resnet18", (3, 32, 32), 10, 64, pretrained=True)
    assert torch.equal(m.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert m.fc.out_features == 10
