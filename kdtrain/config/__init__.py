"""The names of kdtrain's sweep-file layer in one import, for plugin code, notebooks and scripts written against
earlier versions (``from kdtrain.config import load``). kdtrain's own modules import from where each name lives:

- ``kdtrain.errors``: KdtrainError, ConfigError, DataError, first_line (the ground floor)
- ``kdtrain.paths``: home, data_root, redact (the ground floor)
- ``kdtrain.schema``: the sections (StudyConfig ... Config), their bounds and vocabularies, parse_duration
- ``kdtrain.config.validate``: the value checks against the registries, allowed_values, did_you_mean
- ``kdtrain.config.sweepfile``: load, from_dict, replace, parse_overrides

Nothing in kdtrain imports this module.
"""

from kdtrain.config.sweepfile import MAX_DEPTH, MAX_INT_BITS, MAX_VALUES, from_dict, load, parse_overrides, replace  # noqa: F401
from kdtrain.config.validate import allowed_values, did_you_mean  # noqa: F401
from kdtrain.errors import ConfigError, DataError, KdtrainError, first_line  # noqa: F401
from kdtrain.paths import data_root, home, redact  # noqa: F401
from kdtrain.schema import (
    ABOVE_ZERO,  # noqa: F401
    AT_LEAST,  # noqa: F401
    BACKENDS,  # noqa: F401
    DIRECTIONS,  # noqa: F401
    METRICS,  # noqa: F401
    OPTIONS,  # noqa: F401
    PRUNERS,  # noqa: F401
    SAMPLERS,  # noqa: F401
    SEARCH_TYPES,  # noqa: F401
    SECTION,  # noqa: F401
    SECTIONS,  # noqa: F401
    TOP_LEVEL,  # noqa: F401
    Config,  # noqa: F401
    DataConfig,  # noqa: F401
    KDConfig,  # noqa: F401
    LossConfig,  # noqa: F401
    ModelConfig,  # noqa: F401
    ProfileConfig,  # noqa: F401
    StudentConfig,  # noqa: F401
    StudyConfig,  # noqa: F401
    TeacherConfig,  # noqa: F401
    TrainConfig,  # noqa: F401
    parse_duration,  # noqa: F401
    sub_data,  # noqa: F401
)
