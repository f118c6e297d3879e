"""A teacher's data seen from the student's side: the data it learns from (teachers[].data or the student's), the
view that turns the student's inputs into its own, and its classes mapped to the student's (teachers[].classes).

Split from kdtrain.distill.teachers (the cached pool) because feature distillation and the layer table need a
teacher's domain to build it without the cache.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kdtrain.data import classmap, rows
from kdtrain.data.datasets import Dataset
from kdtrain.data.datasets import load as load_data
from kdtrain.errors import DataError, KdtrainError
from kdtrain.schema import Config, TeacherConfig, sub_data
from kdtrain.shared import content_key

_own: dict[str, Dataset] = {}


def own_data(t: TeacherConfig, cfg: Config, ds: Dataset) -> Dataset:
    """The data the teacher learns from: teachers[].data (its source domain, loaded once per process) or the
    student's. Refused when it would teach the teacher the student's held-out rows or hidden labels (rows.check_teacher)."""
    if t.data is None:
        return ds
    sub = sub_data(t.data, cfg.data)
    key = content_key(dataclasses.asdict(sub))
    if key not in _own:
        try:
            _own[key] = load_data(sub)
        except KdtrainError as e:
            raise type(e)(f"teachers ({t.name}).data: {e}") from None
    rows.check_teacher(f"teachers ({t.name}).data", sub.name, ds, _own[key])
    return _own[key]


def input_view(tds: Dataset, ds: Dataset) -> tuple[list[float], list[float]] | None:
    """(scale, shift) per channel so that x_student * scale + shift is the student's raw input normalised with the
    teacher data's statistics; None when the teacher learnt from the student's data."""
    if tds is ds:
        return None
    if tuple(tds.input_shape) != tuple(ds.input_shape):
        raise DataError(
            f"teachers[].data: samples of shape {tuple(tds.input_shape)}, the student's data has "
            f"{tuple(ds.input_shape)}; a teacher's data must hold inputs like the student's"
        )
    s_mean, s_std = np.asarray(ds.mean), np.asarray(ds.std)
    t_mean, t_std = np.asarray(tds.mean), np.asarray(tds.std)
    t_mean, t_std = np.broadcast_to(t_mean, s_mean.shape), np.broadcast_to(t_std, s_std.shape)
    return (s_std / t_std).tolist(), ((s_mean - t_mean) / t_std).tolist()


def domain(t: TeacherConfig, cfg: Config, data: Dataset) -> tuple[Dataset, tuple[list[float], list[float]] | None]:
    """(the teacher's own data, the input view from the student's) for a teacher with a model."""
    tds = own_data(t, cfg, data)
    try:
        return tds, input_view(tds, data)
    except DataError as e:
        raise DataError(str(e).replace("teachers[].data", f"teachers ({t.name}).data")) from None


def resolve_groups(t: TeacherConfig, ds: Dataset, teacher_classes: list[str]) -> list[list[int]] | None:
    """teachers[].classes against the two label spaces; without it the teacher's classes must be the student's."""
    where = f"teachers ({t.name}).classes"
    if t.classes is not None:
        return classmap.groups(t.classes, ds.class_names, teacher_classes, where)
    if len(teacher_classes) != ds.num_classes:
        raise DataError(
            f"teachers ({t.name}): the teacher has {len(teacher_classes)} classes, the student's data "
            f"{ds.num_classes}; map them with teachers[].classes (a list of teacher classes, one per "
            "student class, or {student class: [teacher classes]})"
        )
    return None


def file_classes(t: TeacherConfig, cfg: Config, data: Dataset, columns: int) -> list[str]:
    """A file teacher's class names: its teachers[].data's when that names as many, else column numbers."""
    if t.data is not None:
        names = own_data(t, cfg, data).class_names
        if len(names) == columns:
            return list(names)
    return (
        list(data.class_names)
        if columns == data.num_classes and t.classes is None
        else [str(i) for i in range(columns)]
    )
