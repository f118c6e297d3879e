"""Model factories for the example sweeps, named in a sweep file as python:sweeps.examples.my_models:FUNCTION
(importable from the repository root; put your own module in the directory you run kdtrain from, or install it).

kdtrain calls FUNCTION(input_shape, num_classes, width) and adds depth=, hidden=, dropout=, pretrained= when the
function's signature names them; it must return a torch.nn.Module mapping a batch (B, *input_shape) to logits
(B, num_classes). A student is swept by width (search: student.width).
"""

from torch import nn


def small_cnn(input_shape, num_classes, width, dropout=0.0):
    """Two 3x3 convolutions of `width` and 2*`width` channels, global pooling, a linear head. Images (C, H, W)
    only."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width, num_classes),
    )


def small_mlp(input_shape, num_classes, width, hidden=None):
    """An MLP on the flattened input: one hidden layer of `width` units, or the sizes in `hidden`."""
    size = 1
    for d in input_shape:
        size *= d
    layers, last = [nn.Flatten()], size
    for h in hidden or [width]:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    return nn.Sequential(*layers, nn.Linear(last, num_classes))
