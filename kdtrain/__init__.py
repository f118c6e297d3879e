"""kdtrain: knowledge-distillation sweeps with Optuna, MLflow and Pareto reports.

The public API is this package's top level: ``from kdtrain import load, distillation_loss``. A plugin, notebook or
script may rely on these names; the modules behind them (kdtrain.distill.losses, kdtrain.report.study_data, ...) may move
between releases. Each name is resolved on first use (PEP 562), so ``import kdtrain`` imports nothing else: not
torch, MLflow or Optuna, and loading a sweep file stays light. Where each name lives is written once, in PUBLIC_API;
a moved function is a one-line change there. ``kdtrain.config`` keeps re-exporting the sweep-file layer for scripts
written before this module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

__version__ = "0.1.0"

PUBLIC_API: dict[str, str] = {
    # the sweep file: read, build and change a config (no torch)
    "load": "kdtrain.config.sweepfile:load",
    "from_dict": "kdtrain.config.sweepfile:from_dict",
    "replace": "kdtrain.config.sweepfile:replace",
    "allowed_values": "kdtrain.config.validate:allowed_values",
    "Config": "kdtrain.schema:Config",
    "StudyConfig": "kdtrain.schema:StudyConfig",
    "DataConfig": "kdtrain.schema:DataConfig",
    "ModelConfig": "kdtrain.schema:ModelConfig",
    "StudentConfig": "kdtrain.schema:StudentConfig",
    "TeacherConfig": "kdtrain.schema:TeacherConfig",
    "TrainConfig": "kdtrain.schema:TrainConfig",
    "KDConfig": "kdtrain.schema:KDConfig",
    "LossConfig": "kdtrain.schema:LossConfig",
    "ProfileConfig": "kdtrain.schema:ProfileConfig",
    # the errors kdtrain raises with a message meant for the user
    "KdtrainError": "kdtrain.errors:KdtrainError",
    "ConfigError": "kdtrain.errors:ConfigError",
    "DataError": "kdtrain.errors:DataError",
    "UsageError": "kdtrain.errors:UsageError",
    # data, models and distillation (torch on first call)
    "load_data": "kdtrain.data.datasets:load",
    "Dataset": "kdtrain.data.datasets:Dataset",
    "create_model": "kdtrain.distill.models:create_model",
    "distillation_loss": "kdtrain.distill.losses:distillation_loss",
    "load_pool": "kdtrain.sweep.session:load_pool",
    "distill_student": "kdtrain.distill.student:distill_student",
    "TrainResult": "kdtrain.distill.train:TrainResult",
    # a finished (or running) study, for notebooks (Optuna and MLflow on first call)
    "load_study": "kdtrain.report.study_data:load",
    "StudyData": "kdtrain.report.study_data:StudyData",
}
"""Public name -> "module:attribute" where it lives now. The one place that knows where the public API is."""

if TYPE_CHECKING:  # the same names for type checkers, IDEs and the API reference; tests/docs/test_public_api.py keeps
    # them equal to PUBLIC_API (a moved function: its line here and its line there)
    from kdtrain.config.sweepfile import from_dict, load, replace
    from kdtrain.config.validate import allowed_values
    from kdtrain.data.datasets import Dataset
    from kdtrain.data.datasets import load as load_data
    from kdtrain.distill.losses import distillation_loss
    from kdtrain.distill.models import create_model
    from kdtrain.distill.student import distill_student
    from kdtrain.distill.train import TrainResult
    from kdtrain.errors import ConfigError, DataError, KdtrainError, UsageError
    from kdtrain.report.study_data import StudyData
    from kdtrain.report.study_data import load as load_study
    from kdtrain.schema import (
        Config,
        DataConfig,
        KDConfig,
        LossConfig,
        ModelConfig,
        ProfileConfig,
        StudentConfig,
        StudyConfig,
        TeacherConfig,
        TrainConfig,
    )
    from kdtrain.sweep.session import load_pool


class ModelFactory(Protocol):
    """The hook behind ``arch: python:package.module:function`` (a teacher or a student): kdtrain imports the
    function and calls it with the data's sample shape (no batch dimension), its number of classes and the model's
    ``width``, adding ``depth=``, ``hidden=``, ``dropout=`` and ``pretrained=`` only where the function's signature
    names them (a setting given that it does not take is an error): a function of the three, with any of the four
    as keywords with defaults, meets this contract. It returns a ``torch.nn.Module`` mapping a batch
    (B, *input_shape) to logits (B, num_classes). A student is swept by its width (``student.width`` in
    ``search:``), so the width should change the model's size."""

    def __call__(self, input_shape: tuple[int, ...], num_classes: int, width: int, /) -> Any: ...


class DataFactory(Protocol):
    """The hook behind ``data: {name: python, factory: package.module:function}`` (and a transfer set's
    ``data.unlabeled``): kdtrain calls the function with the data section (a DataConfig: ``size``, ``seed``,
    ``options``, ...) when it takes an argument, else with none (the form written here is the first). It returns a
    dict with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally ``class_names``) or the tuple
    ``(x_train, y_train, x_test, y_test[, class_names])``: samples are (F,) features, (C, L) signals or (C, H, W)
    images, labels class indices or names. A transfer set's factory returns an array of inputs or ``{"x": ...}``."""

    def __call__(self, cfg: DataConfig, /) -> Any: ...


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataFactory",
    "Dataset",
    "KDConfig",
    "KdtrainError",
    "LossConfig",
    "ModelConfig",
    "ModelFactory",
    "ProfileConfig",
    "StudentConfig",
    "StudyConfig",
    "StudyData",
    "TeacherConfig",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "allowed_values",
    "create_model",
    "distill_student",
    "distillation_loss",
    "from_dict",
    "load",
    "load_data",
    "load_pool",
    "load_study",
    "replace",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from where it lives on first use (and kept, so later reads are plain lookups)."""
    target = PUBLIC_API.get(name)
    if target is None:
        raise AttributeError(f"module 'kdtrain' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
