"""A model's deployment metrics as a sweep measures them: every trial's student, each width's baseline, the
teachers and the ends of the search space (the hypervolume's box) are measured on the same bench (the data's input
shape and classes, the sweep file's profile settings), cached per architecture by kdtrain.deploy.profile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdtrain.deploy.profile import model_identity, profile
from kdtrain.schema import ModelConfig, ProfileConfig


@dataclass(frozen=True)
class Bench:
    """What a sweep measures its models with: the input they take, the data's class count (a teacher may have its
    own), the sweep file's profile settings, and where a measurement says what it does."""

    input_shape: tuple
    num_classes: int
    settings: ProfileConfig
    log: Callable[[str], None]


def measure(model, model_cfg: ModelConfig, bench: Bench, num_classes: int | None = None, timing: bool = True) -> dict:
    """Deployment metrics of a model (cached per architecture and output size: a teacher may have its own); without
    ``timing`` the counted ones only, unless cached (see kdtrain.deploy.profile.profile)."""
    return profile(
        model,
        bench.input_shape,
        bench.settings,
        model_identity(model_cfg, num_classes or bench.num_classes),
        bench.log,
        timing=timing,
    )
