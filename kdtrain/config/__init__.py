"""The names of kdtrain's sweep-file layer in one import, for plugin code, notebooks and scripts written against
earlier versions (``from kdtrain.config import load``). kdtrain's own modules import from where each name lives:

- ``kdtrain.errors``: KdtrainError, ConfigError, DataError, first_line (the ground floor)
- ``kdtrain.paths``: home, data_root, redact (the ground floor)
- ``kdtrain.schema``: the sections (StudyConfig ... Config), their bounds and vocabularies, parse_duration
- ``kdtrain.config.validate``: the value checks against the registries, allowed_values, did_you_mean
- ``kdtrain.config.sweepfile``: load, from_dict, replace, parse_overrides

Inside kdtrain, `from kdtrain.config import sweepfile` runs this file too; it imports only what the config wing
and the ground floor import anyway (no torch).
"""

# ruff: noqa: F401 - every import here is a re-export for users' code

from kdtrain.config.sweepfile import MAX_DEPTH, MAX_INT_BITS, MAX_VALUES, from_dict, load, parse_overrides, replace
from kdtrain.config.validate import allowed_values, did_you_mean
from kdtrain.errors import ConfigError, DataError, KdtrainError, first_line
from kdtrain.paths import data_root, home, redact
from kdtrain.schema import (
    ABOVE_ZERO,
    AT_LEAST,
    BACKENDS,
    DIRECTIONS,
    METRICS,
    OPTIONS,
    PRUNERS,
    SAMPLERS,
    SEARCH_TYPES,
    SECTION,
    SECTIONS,
    TOP_LEVEL,
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
    parse_duration,
    sub_data,
)
