"""The one check every source of the user's data goes through (kdtrain.data.sources): raw arrays -> float32
inputs (N, C, L) or (N, C, H, W), int64 class indices and class names, or one DataError naming the file and what
is wrong, before anything is trained or written. Its own module so that the sources read as what each reads."""

from __future__ import annotations

import numpy as np

from kdtrain.errors import DataError
from kdtrain.lazy import Module

torch = Module("torch")  # imported on first use


def _labels(y_train: np.ndarray, y_test: np.ndarray, names: list[str] | None, where: str):
    """Labels -> int64 class indices and class names. Strings map to their sorted names (or to class_names)."""
    if y_train.dtype.kind in "USO":
        known = list(names) if names is not None else sorted({str(v) for v in y_train})
        index = {n: i for i, n in enumerate(known)}
        for split, y in (("y_train", y_train), ("y_test", y_test)):
            unknown = sorted({str(v) for v in y} - set(index))
            if unknown:
                raise DataError(
                    f"{where}: {split} has label(s) {', '.join(map(repr, unknown[:5]))} that "
                    + ("are not in class_names" if names is not None else "y_train never has")
                    + " (every class needs training samples)"
                )
        return (
            np.array([index[str(v)] for v in y_train], np.int64),
            np.array([index[str(v)] for v in y_test], np.int64),
            known,
        )
    out = []
    for split, y in (("y_train", y_train), ("y_test", y_test)):
        if y.dtype.kind not in "iub" and not (
            y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
        ):
            raise DataError(
                f"{where}: {split} must hold class indices (integers) or class names (strings), got {y.dtype} values"
            )
        out.append(y.astype(np.int64))
    classes = len(names) if names is not None else int(max(out[0].max(), out[1].max(initial=0))) + 1
    for split, y in zip(("y_train", "y_test"), out, strict=False):
        bad = y[(y < 0) | (y >= classes)]
        if len(bad):
            raise DataError(
                f"{where}: {split} has label {int(bad[0])} outside 0..{classes - 1}"
                + (f" (class_names names {classes} classes)" if names is not None else "")
            )
    return out[0], out[1], list(names) if names is not None else [str(i) for i in range(classes)]


def features(x, split: str, where: str) -> np.ndarray:
    """Inputs as float32 (N, C, L) or (N, C, H, W), (N, F) read as (N, 1, F); numeric and finite, or one DataError."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: {split} must be numeric, got {x.dtype} values")
    if x.ndim == 2:
        x = x[:, None, :]  # (N, F) features read as (N, 1, F)
    if x.ndim not in (3, 4):
        raise DataError(
            f"{where}: {split} has samples of shape {tuple(x.shape[1:])}; kdtrain takes (F,) features, "
            "(C, L) signals or (C, H, W) images"
        )
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: {split} holds NaN or infinite values")
    return x


def checked(x_train, y_train, x_test, y_test, names, where: str):
    """Validate and convert raw arrays: (x_train, y_train, x_test, y_test, class_names), or one DataError."""
    as_np = lambda a: a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
    x_train, x_test = features(as_np(x_train), "x_train", where), features(as_np(x_test), "x_test", where)
    y_train, y_test = as_np(y_train), as_np(y_test)
    for split, y, x in (("train", y_train, x_train), ("test", y_test, x_test)):
        if y.ndim != 1:
            raise DataError(f"{where}: y_{split} must be one label per sample (1-D), got shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{where}: y_{split} has {len(y)} labels but x_{split} has {len(x)} samples")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{where}: x_train samples have shape {x_train.shape[1:]} but x_test samples {x_test.shape[1:]}"
        )
    if len(y_train) < 10 or len(y_test) < 1:
        raise DataError(
            f"{where}: {len(y_train)} training and {len(y_test)} test samples; kdtrain needs at "
            "least 10 to train (a validation split is carved from them) and 1 to test"
        )
    if names is not None:
        names = [str(n) for n in as_np(names).tolist()]
        if len(set(names)) != len(names) or not names:
            raise DataError(f"{where}: class_names must be distinct names, got {names[:10]}")
    y_train, y_test, names = _labels(y_train, y_test, names, where)
    if len(np.unique(y_train)) < 2:
        raise DataError(f"{where}: y_train has one class only ({names[y_train[0]]!r}); a classifier needs two or more")
    return x_train, y_train, x_test, y_test, names
