"""The torch modules kdtrain's model families are built from (kdtrain.distill.models builds them; this module imports
torch, the registry does not)."""

from __future__ import annotations

import torch
from torch import nn

from kdtrain.errors import DataError


def pick_output(out, key: int | str, where: str) -> torch.Tensor:
    """One output of a model that returns several (teachers[].output): an index into a tuple or list, a key of a
    dict. A missing one is a DataError naming what the model does return."""
    if isinstance(out, dict):
        if key not in out:
            raise DataError(
                f"{where}: output {key!r} is not among the model's outputs "
                f"(its forward returns a dict with keys {', '.join(map(repr, out))})"
            )
        return out[key]
    if isinstance(out, (tuple, list)):
        if type(key) is not int or not 0 <= key < len(out):
            raise DataError(
                f"{where}: output {key!r} is not among the model's outputs (its forward returns a "
                f"{type(out).__name__} of {len(out)}: give an index 0..{len(out) - 1})"
            )
        return out[key]
    raise DataError(f"{where}: the model returns one {type(out).__name__}, not a tuple, list or dict; drop output")


class PickOutput(nn.Module):
    """A multi-output model seen through one of its outputs (teachers[].output)."""

    def __init__(self, model: nn.Module, key: int | str, where: str = "teachers[].output"):
        super().__init__()
        self.model, self.key, self.where = model, key, where

    def forward(self, x):
        return pick_output(self.model(x), self.key, self.where)


class Reshape(nn.Module):
    """View each sample as a new shape (batch dimension kept)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class AvgMaxPool(nn.Module):
    """Concatenate global average and max over the last dimension."""

    def forward(self, x):
        return torch.cat([x.mean(-1), x.amax(-1)], dim=1)


class GRUClassifier(nn.Module):
    """Reads a (C, L) signal as L steps of C features (an image row by row)."""

    def __init__(self, input_shape, num_classes, width, depth, dropout):
        super().__init__()
        c, *spatial = input_shape
        # Images: each row (C*W values) is one step; signals: each position is one step.
        self.features = c * spatial[-1] if len(spatial) == 2 else c
        self.gru = nn.GRU(self.features, width, num_layers=depth, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        if x.ndim == 4:  # (N, C, H, W) -> (N, H, C*W)
            seq = x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)
        else:  # (N, C, L) -> (N, L, C)
            seq = x.transpose(1, 2)
        out, _ = self.gru(seq)
        pooled = torch.cat([out.mean(1), out.amax(1)], dim=1)
        return self.head(self.drop(pooled))


class As2d(nn.Module):
    """Run a 2-D network on a 1-D signal by viewing (N, C, L) as (N, C, 1, L)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.unsqueeze(2))


class RepeatChannels(nn.Module):
    """Feed a 1-channel image to a network built for 3 channels (the grey values on each)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.expand(-1, 3, -1, -1))
