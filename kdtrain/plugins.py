"""User code, named in a sweep file as ``package.module:function`` (after a ``python:`` prefix).

The only way code enters through a sweep file: a name that is imported and called, never YAML that builds
objects. A module in the current directory is found without installing it (sys.path is searched first).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from kdtrain.errors import DataError, first_line

PREFIX = "python:"
REF = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
"""package.module:function (identifiers only)."""


def is_ref(text) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def ref_problem(ref: str) -> str | None:
    """What is wrong with the text after python:, or None."""
    if not REF.fullmatch(ref):
        return f"expected python:package.module:function, got {PREFIX}{ref}"
    return None


def load_object(ref: str, what: str, search_dirs: tuple[str, ...] = ()) -> Callable:
    """package.module:function -> the callable; one DataError (exit code 2, like a bad sweep file) naming `what` when it cannot be imported.
    The current directory and search_dirs are tried after sys.path (a module of the user's own project)."""
    problem = ref_problem(ref)
    if problem:
        raise DataError(f"{what}: {problem}")
    module_name, func = ref.split(":")
    extra = [d for d in [str(Path.cwd()), *map(str, search_dirs)] if d not in sys.path]
    sys.path.extend(extra)  # after the installed packages: a local file never shadows a library
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise DataError(
            f"{what}: cannot import {module_name!r} ({e}); put {module_name.split('.')[0]}.py in "
            f"the current directory or install its package"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise DataError(f"{what}: importing {module_name!r} raised {type(e).__name__}: {first_line(e, 300)}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise DataError(f"{what}: {module_name} has no function {func!r}")
    return fn


def accepts(fn: Callable, name: str) -> bool:
    """Whether fn takes a keyword argument of this name (or **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def positional_count(fn: Callable) -> int:
    """How many positional arguments fn can take (a large number for *args)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 99
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
