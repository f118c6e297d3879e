"""Model families: a plain name -> factory registry.

Every factory has the signature ``factory(input_shape, num_classes, width,
depth=None, hidden=None, dropout=0.0, pretrained=False) -> nn.Module`` and
accepts every dataset shape kdtrain loads: 1-D signals (C, L) and images
(C, H, W). The parameter count grows with ``width``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from kdtrain import plugins
from kdtrain.errors import DataError, KdtrainError, first_line
from kdtrain.lazy import Module

torch, nn = Module("torch"), Module("torch.nn")  # imported on first use: the registry's names need neither


def nets():
    """The modules the families are built from (kdtrain.distill.nets, which imports torch)."""
    from kdtrain.distill import nets as built

    return built


MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


TORCHVISION = "torchvision:"
"""arch prefix: any torchvision classification model by name (torchvision:resnet50), its head sized to the data."""


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def create_model(
    arch: str,
    input_shape,
    num_classes: int,
    width: int,
    depth: int | None = None,
    hidden: list[int] | None = None,
    dropout: float = 0.0,
    pretrained: bool = False,
) -> nn.Module:
    """A student or teacher of family ``arch`` for inputs of ``input_shape`` and ``num_classes`` classes: a registered
    family (MODELS) at ``width`` (and ``depth``, ``hidden``, ``dropout`` where the family takes them), a torchvision model
    (``torchvision:NAME``, ``pretrained`` from the local torch cache) or a user's factory (``python:package.module:fn``)."""
    if arch.startswith(TORCHVISION):
        return torchvision_model(arch[len(TORCHVISION) :], tuple(input_shape), num_classes, pretrained)
    if plugins.is_ref(arch):
        return python_model(
            arch,
            tuple(input_shape),
            num_classes,
            width,
            depth=depth,
            hidden=hidden,
            dropout=dropout,
            pretrained=pretrained,
        )
    if arch not in MODELS:
        raise KdtrainError(f"unknown arch {arch!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[arch](
        tuple(input_shape), num_classes, width, depth=depth, hidden=hidden, dropout=dropout, pretrained=pretrained
    )


def from_config(m, input_shape, num_classes: int) -> nn.Module:
    """Build a model from a ModelConfig (a StudentConfig or a TeacherConfig)."""
    return create_model(
        m.arch,
        input_shape,
        num_classes,
        m.width,
        depth=m.depth,
        hidden=m.hidden,
        dropout=m.dropout,
        pretrained=m.pretrained,
    )


def check_fits(models_cfg: list[tuple[str, object]], input_shape, num_classes: int) -> None:
    """Build each (where, ModelConfig) whose arch is not a registered family (those fit every shape) and run one
    batch of zeros through it: a model that cannot take this data, or a factory that fails, is one error before
    any training."""
    for where, m in models_cfg:
        if m.arch in MODELS:
            continue
        try:
            model = from_config(m, input_shape, num_classes).eval()
            with torch.no_grad():
                out = model(torch.zeros(2, *input_shape))
        except KdtrainError as e:
            raise DataError(f"{where}.arch: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's factory failed
            raise DataError(
                f"{where}.arch {m.arch} does not run on this data's samples of shape "
                f"{tuple(input_shape)}: {type(e).__name__}: {first_line(e, 300)}"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(
                f"{where}.arch {m.arch}: returns {shape} for a batch of 2; a classifier of this "
                f"data returns logits of shape (batch, {num_classes})"
            )


# --------------------------------------------------------------------------- mlp


@register("mlp")
def mlp(input_shape, num_classes, width, depth=None, hidden=None, dropout=0.0, pretrained=False):
    """Flatten -> [Linear-ReLU] x depth -> Linear. ``hidden=[512, 256]`` gives the
    classic 784-512-256-10 MNIST teacher; width 128, depth 1 the 784-128-10 student."""
    sizes = list(hidden) if hidden else [width] * (depth or 1)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = math.prod(input_shape)
    for h in sizes:
        layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
        prev = h
    layers += [nn.Dropout(dropout), nn.Linear(prev, num_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- tiny_cnn


@register("tiny_cnn")
def tiny_cnn(input_shape, num_classes, width=16, depth=None, hidden=None, dropout=0.0, pretrained=False):
    """The classic two-conv edge student: Conv(w)-Pool-Conv(2w)-Pool-FC(8w)-FC.

    At width 16: Conv16-Conv32-FC128. Pools are ceil-mode so 8x8, 28x28 and
    32x32 images (and 1-D signals) all fit.
    """
    c, *spatial = input_shape
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if len(spatial) == 1 else (nn.Conv2d, nn.MaxPool2d)
    out_spatial = math.prod(math.ceil(math.ceil(s / 2) / 2) for s in spatial)
    return nn.Sequential(
        conv(c, width, 3, padding=1),
        nn.ReLU(inplace=True),
        pool(2, ceil_mode=True),
        conv(width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        pool(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(2 * width * out_spatial, 8 * width),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(8 * width, num_classes),
    )


# --------------------------------------------------------------------------- cnn1d


@register("cnn1d")
def cnn1d(input_shape, num_classes, width=64, depth=None, hidden=None, dropout=0.0, pretrained=False):
    """1-D CNN for signals (images are read as C x (H*W) sequences).

    ``depth`` conv blocks (default 3) of Conv-BN-ReLU, stride 2 after the first,
    then global average + max pooling and a linear head.
    """
    c = input_shape[0]
    length = math.prod(input_shape[1:])
    layers: list[nn.Module] = [nets().Reshape(c, length)] if len(input_shape) != 2 else []
    prev = c
    for i in range(depth or 3):
        layers += [
            nn.Conv1d(prev, width, 5 if i == 0 else 3, stride=1 if i == 0 else 2, padding=2 if i == 0 else 1),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        ]
        prev = width
    return nn.Sequential(*layers, nets().AvgMaxPool(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes))


# --------------------------------------------------------------------------- gru


@register("gru")
def gru(input_shape, num_classes, width=64, depth=None, hidden=None, dropout=0.0, pretrained=False):
    """Bidirectional GRU over the sequence, mean+max pooled."""
    return nets().GRUClassifier(input_shape, num_classes, width, depth or 1, dropout)


# --------------------------------------------------------------------------- resnet18


@register("resnet18")
def resnet18(input_shape, num_classes, width=64, depth=None, hidden=None, dropout=0.0, pretrained=False):
    """torchvision's ResNet-18; stage widths w, 2w, 4w, 8w (w=64 is the original).

    For inputs up to 32 px the ImageNet stem (7x7 stride-2 conv + max pool) is
    replaced by a 3x3 stride-1 conv without pooling, as is usual for CIFAR.
    ``pretrained`` loads torchvision's ImageNet weights from the local torch
    cache (width 64 only); layers whose shapes differ (stem, classifier) keep
    their fresh initialisation.
    """
    import torchvision
    from torchvision.models.resnet import BasicBlock

    c, *spatial = input_shape
    net = torchvision.models.resnet18(num_classes=num_classes)
    if pretrained:
        _load_torchvision_weights(net)
    small = max(spatial) <= 32
    if small or c != 3 or width != 64:
        net.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False) if small else nn.Conv2d(c, width, 7, 2, 3, bias=False)
    if small:
        net.maxpool = nn.Identity()
    if width != 64:  # rebuild the stages at the requested width with torchvision's own builder
        net.bn1 = nn.BatchNorm2d(width)
        net.inplanes = width
        net.layer1 = net._make_layer(BasicBlock, width, 2)
        net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
        net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    if width != 64 or dropout:
        net.fc = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * width, num_classes))
            if dropout
            else nn.Linear(8 * width, num_classes)
        )
    return nets().As2d(net) if len(spatial) == 1 else net


def _load_torchvision_weights(net: nn.Module) -> None:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        raise KdtrainError(
            f"torchvision resnet18 weights are not in the local cache ({cached}); "
            "copy them there or set pretrained: false"
        )
    state = torch.load(cached, map_location="cpu", weights_only=True)
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(keep, strict=False)


# --------------------------------------------------------------------------- torchvision:NAME and python:


def _replace_head(net: nn.Module, num_classes: int) -> None:
    """Replace the last Linear layer (the classifier of every torchvision classification model but SqueezeNet,
    whose head is a 1x1 conv) by one with num_classes outputs."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = (name, module)
    name, module = last
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    if isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, num_classes)
    else:
        new = nn.Conv2d(module.in_channels, num_classes, module.kernel_size, module.stride)
    setattr(parent, name.rsplit(".", 1)[-1], new)


def torchvision_model(name: str, input_shape, num_classes: int, pretrained: bool = False) -> nn.Module:
    """torchvision's classification model NAME, sized for num_classes. With pretrained, its default ImageNet
    weights come from the local torch cache only (never downloaded) and the head is replaced. 1-channel images
    are repeated to 3 channels; signals (C, L) are refused."""
    import torchvision

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise KdtrainError(
            f"torchvision models take 1- or 3-channel images (C, H, W); this data's samples are {tuple(input_shape)}"
        )
    if not pretrained:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.exists():
            raise KdtrainError(
                f"torchvision {name} pretrained weights are not in the local torch cache ({cached}); "
                "kdtrain never downloads them: copy the file there, or set pretrained: false"
            )
        net = torchvision.models.get_model(name, weights=None)
        net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        _replace_head(net, num_classes)
    if getattr(net, "aux_logits", False):  # GoogLeNet, Inception v3: train on the main head alone (one tensor out)
        net.aux_logits = False
        for aux in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, aux):
                setattr(net, aux, None)
    return nets().RepeatChannels(net) if input_shape[0] == 1 else net


def python_model(arch: str, input_shape, num_classes: int, width: int, **family) -> nn.Module:
    """python:package.module:function, called as function(input_shape, num_classes, width) plus the settings it
    names among depth, hidden, dropout and pretrained (a setting given but not taken is an error)."""
    ref = arch[len(plugins.PREFIX) :]
    fn = plugins.load_object(ref, arch)
    defaults = {"depth": None, "hidden": None, "dropout": 0.0, "pretrained": False}
    kwargs = {k: v for k, v in family.items() if plugins.accepts(fn, k)}
    ignored = [k for k, v in family.items() if k not in kwargs and v != defaults[k]]
    if ignored:
        raise KdtrainError(
            f"{arch} takes no {', '.join(ignored)} argument; remove the setting or add it to the function's signature"
        )
    try:
        model = fn(tuple(input_shape), num_classes, width, **kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise KdtrainError(
            f"{arch}({tuple(input_shape)}, {num_classes}, {width}) raised {type(e).__name__}: {first_line(e, 300)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise KdtrainError(f"{arch} must return a torch.nn.Module, got {type(model).__name__}")
    return model
