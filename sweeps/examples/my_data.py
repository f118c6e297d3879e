"""A data factory for sweeps/examples/python.yaml, named as data.factory: sweeps.examples.my_data:spirals.

kdtrain calls it with the DataConfig when it takes an argument (here: data.size and data.seed), else with none,
and reads a dict with x_train, y_train, x_test, y_test (optionally class_names), or the tuple
(x_train, y_train, x_test, y_test[, class_names]). Samples are (F,) features, (C, L) signals or (C, H, W) images;
labels are class indices or names.
"""

import numpy as np


def spirals(cfg=None):
    """Three interleaved 2-D spirals with noise: (F,) = (2,) features, 80/20 train/test."""
    n = cfg.size if cfg is not None else 600
    rng = np.random.default_rng(cfg.seed if cfg is not None else 0)
    y = rng.integers(0, 3, n)
    r = rng.uniform(0.1, 1.0, n)
    angle = 3.0 * r + 2 * np.pi * y / 3 + rng.normal(0, 0.15, n)
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1).astype(np.float32)
    cut = int(0.8 * n)
    return {
        "x_train": x[:cut],
        "y_train": y[:cut],
        "x_test": x[cut:],
        "y_test": y[cut:],
        "class_names": ["red", "green", "blue"],
    }
