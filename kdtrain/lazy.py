"""torch, imported on first use. The registries (datasets, model families, losses, optimizers, schedules) name
their choices at import, and kdtrain.config.validate checks a sweep file against them; with torch behind this stand-in,
loading and checking a sweep file imports none of it (seconds and gigabytes of CUDA libraries): the first call
that computes does. Imports nothing of kdtrain."""

from __future__ import annotations

import importlib


class Module:
    """A module imported when one of its attributes is first read: ``torch = Module("torch")``, then
    ``torch.zeros(3)`` imports torch. Nothing is put in sys.modules before that."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"
