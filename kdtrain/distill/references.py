"""Teachers named by a reference that can move: what it names now, for the teacher cache's key.

An MLflow model URI with an alias or a stage (`models:/NAME@champion`, `models:/NAME/latest`) names whichever version
the registry points it at (`kdtrain register --alias` moves it); a `python:` arch names whatever its module's file
holds. The cache keys such a teacher by what the reference names now: the loaded weights' content (read through the
caller's loader, the tracking wing's load_state_dict: this module knows no MLflow) or the module file's content. So a
moved alias reloads the teacher and edited code retrains it, and the new cache entry says so (moved_note) when an
entry of the same teacher and reference names something else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from kdtrain.data.sources import file_digest

_names: dict[str, str] = {}
"""A moving model URI -> the content key of the weights it named when this process first read it (one teacher per
process, whatever the registry does later in a sweep)."""
_states: dict[str, dict] = {}
"""... and those weights, so that the teacher is built from what its key says without reading them twice."""


def moving(ref: str | None) -> bool:
    """An MLflow model URI whose target moves: an alias (@champion), `latest` or a stage; not a version number."""
    return bool(ref) and ref.startswith("models:/") and not re.fullmatch(r"models:/[^@/]+/\d+", ref)


def state_key(state: dict) -> str:
    """Content key of a state dict: every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if isinstance(t, torch.Tensor) and t.numel():
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def resolve(ref: str, load: Callable[[str], dict]) -> str:
    """What a moving URI names now (its weights' content key), read once per process through `load`."""
    if ref not in _names:
        _states[ref] = load(ref)
        _names[ref] = state_key(_states[ref])
    return _names[ref]


def named(ref: str) -> str:
    """The key resolve() found, or 'unresolved' (a key that matches no cache entry: resolved keys only)."""
    return _names.get(ref, "unresolved")


def state(ref: str, load: Callable[[str], dict]) -> dict:
    """The weights a moving URI named when it was resolved (those its key stands for)."""
    resolve(ref, load)
    return _states[ref]


def code_key(arch: str) -> str | None:
    """Content key of a `python:package.module:function` arch's module file (None where it is not a file kdtrain can
    find; the import then fails with its own message)."""
    module = arch.removeprefix("python:").split(":")[0]
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    if path is None:
        extra = [d for d in [str(Path.cwd())] if d not in sys.path]
        sys.path.extend(extra)  # as kdtrain.plugins.load_object looks for it
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        path = spec.origin if spec is not None and spec.has_location else None
    return file_digest(path) if path and Path(path).is_file() else None


def moved_note(folder: Path, reference: dict) -> str | None:
    """When another cache entry of this teacher (a sibling folder NAME-KEY) holds the same reference naming something
    else: what moved, for the teacher table and its run ('reloaded: models:/x@champion names other weights')."""
    name = folder.name.rsplit("-", 1)[0]
    for other in sorted(folder.parent.glob(f"{name}-*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if other.parent == folder:
            continue
        try:
            was = json.loads(other.read_text()).get("reference") or {}
        except (OSError, ValueError):
            continue
        if was.get("ref") == reference["ref"] and was.get("names") != reference["names"]:
            return (
                f"retrained: {reference['ref']} ({reference.get('file', 'its module')}) changed since it was cached"
                if reference["ref"].startswith("python:")
                else f"reloaded: {reference['ref']} names other weights than when it was cached"
            )
    return None
