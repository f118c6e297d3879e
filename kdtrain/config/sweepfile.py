"""Sweep file -> frozen, validated Config: reading the YAML (refusing what no sweep file needs), --set overrides,
merging, building the sections and checking every value (kdtrain.config.validate), all problems raised at once; and
replace() for one trial's values."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from kdtrain.config.validate import build_section, check_values, did_you_mean
from kdtrain.config.validate_search import check_search
from kdtrain.data import classmap
from kdtrain.errors import ConfigError
from kdtrain.schema import SECTIONS, TOP_LEVEL, Config, TeacherConfig

MAX_DEPTH, MAX_VALUES, MAX_INT_BITS = 16, 100_000, 64
"""Far beyond any sweep file; deeper, larger (YAML aliases expand) or longer-int input is refused up front."""


def _check_shape(raw: Any, source: str) -> None:
    """Refuse what would make the checks themselves fail: nesting that recursion cannot walk (YAML anchors can
    even make a list contain itself), aliases that expand to millions of values, integers too long to print, and
    .nan or .inf, which no setting takes (NaN passes every range check, since it compares false)."""
    stack, count = [(raw, 0, "")], 0
    while stack:
        value, depth, where = stack.pop()
        at = f"{where}: " if where else ""
        count += 1
        if depth > MAX_DEPTH:
            raise ConfigError(
                [
                    (
                        f"nested more than {MAX_DEPTH} levels deep (or a YAML anchor inside itself); "
                        "a sweep file needs three or four levels"
                    )
                ],
                source,
            )
        if count > MAX_VALUES:
            raise ConfigError(
                [(f"more than {MAX_VALUES} values once YAML aliases are expanded; a sweep file needs a few dozen")],
                source,
            )
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise ConfigError(
                [
                    (
                        f"{at}an integer longer than {MAX_INT_BITS} bits (about 19 digits); no setting needs "
                        "one: write it as a float (1e30) or quote it"
                    )
                ],
                source,
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                [
                    (
                        f"{at}{value} is not a finite number; no setting takes .nan or .inf (give a number, "
                        "or leave the setting out for its default)"
                    )
                ],
                source,
            )
        if isinstance(value, dict):
            for k, v in value.items():
                path = f"{where}.{str(k)[:40]}" if where else str(k)[:40]  # cut: a key may be megabytes long
                stack += [(k, depth + 1, f"{path} (a key)"), (v, depth + 1, path)]
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack += [(x, depth + 1, f"{where}[{i}]") for i, x in enumerate(value)]


def _safe_load(text: str) -> tuple[Any, str | None]:
    """yaml.safe_load -> (value, None), or (None, what is wrong) however it fails: PyYAML raises more than
    YAMLError (ValueError for a date such as 2001-13-45 or a 5000-digit int, RecursionError on deep nesting)."""
    try:
        return yaml.safe_load(text), None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, f"not valid YAML{where}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"
    except RecursionError:
        return None, "not readable as YAML: nested too deeply (a sweep file needs only a few levels)"
    except Exception as e:  # noqa: BLE001 - see the docstring
        reason = str(e).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
        return None, f"not readable as YAML: {reason} (quote a value that YAML would read as a date or a number)"


def parse_overrides(pairs: list[str]) -> tuple[dict, list[str]]:
    """['kd.alpha=0.5', 'kd.teachers=[a,b]', 'search.kd.alpha={type: float, low: 0, high: 1}'] -> nested dict,
    problems. A value that is not YAML is taken as text; a search key keeps its dots."""
    nested: dict = {}
    problems = []
    for pair in pairs:
        if "=" not in pair:
            problems.append(f"--set {pair}: expected key=value, e.g. kd.alpha=0.5")
            continue
        key, text = pair.split("=", 1)
        value, problem = _safe_load(text) if text != "" else (None, None)
        value = text if problem else value  # not YAML: the text itself
        parts = key.strip().split(".")
        if parts[0] == "search" and len(parts) > 2:
            parts = ["search", ".".join(parts[1:])]
        if parts[0] not in TOP_LEVEL or (len(parts) < 2 and parts[0] != "teachers"):
            problems.append(f"--set {key}: unknown setting (use section.key, e.g. kd.alpha=0.5)")
            continue
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict):
            problems.append(f"--set {key}: clashes with an earlier --set of {'.'.join(parts[:-1])}")
            continue
        node[parts[-1]] = value
    return nested, problems


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k == "search" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}  # a range replaces the file's range of that key, whole
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge_teacher_overrides(raw: dict, over: dict, problems: list[str]) -> dict:
    """--set teachers.NAME.key=value edits one teacher of the list."""
    if "teachers" not in over:
        return raw
    t_over = over.pop("teachers")  # teachers=[] or teachers= too: a --set is never ignored
    if not isinstance(t_over, dict) or not isinstance(raw.get("teachers") or [], list):
        problems.append("--set teachers: use teachers.NAME.key=value on a sweep file with a list of teachers")
        return raw
    teachers = [dict(t) if isinstance(t, dict) else t for t in raw.get("teachers") or []]
    for name, changes in t_over.items():
        match = [t for t in teachers if isinstance(t, dict) and t.get("name") == name]
        if not match:
            problems.append(f"--set teachers.{name}: no teacher named {name!r} in the sweep file")
        elif not isinstance(changes, dict):
            problems.append(f"--set teachers.{name}: use teachers.{name}.key=value, e.g. teachers.{name}.width=32")
        else:
            match[0].update(changes)
    return {**raw, "teachers": teachers}


def from_dict(raw: Any, source: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate a parsed sweep file (plus --set overrides) into a frozen Config."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [(f"the file must be a mapping of sections, got {type(raw).__name__} (see sweeps/quickstart.yaml)")], source
        )
    if overrides:
        over, p = parse_overrides(overrides)
        problems += p
        raw = _merge(_merge_teacher_overrides(raw, over, problems), over)
    _check_shape(raw, source)
    raw = copy.deepcopy(raw)  # the Config shares nothing with the caller
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(
                f"{key}: unknown section{did_you_mean(key, TOP_LEVEL)} (known: {', '.join(sorted(TOP_LEVEL))})"
            )
    sections = {name: build_section(cls, raw.get(name), name, problems) for name, cls in SECTIONS.items()}
    teachers_raw = raw.get("teachers") or []
    if not isinstance(teachers_raw, list):
        problems.append("teachers: expected a list of teachers")
        teachers_raw = []
    teachers = []
    for i, t in enumerate(teachers_raw):
        name = t.get("name") if isinstance(t, dict) else None
        where = f"teachers[{i}]" + (f" ({name})" if isinstance(name, str) and name else "")
        t = build_section(TeacherConfig, t, where, problems)
        # {0: [...], 1: [...]} as a list: JSON (a study's copy of the config) would turn its keys into names
        teachers.append(
            t
            if classmap.canonical(t.classes) is t.classes
            else dataclasses.replace(t, classes=classmap.canonical(t.classes))
        )
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        problems.append("search: expected a mapping of dotted key -> range")
        search = {}
    cfg = Config(teachers=tuple(teachers), search=search, source=source, **sections)
    check_values(cfg, problems)
    check_search(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read and validate a sweep file; raise ConfigError listing every problem (whatever the file holds)."""
    p = Path(path)
    hint = "give the path of a sweep YAML, e.g. sweeps/quickstart.yaml"
    if p.is_dir():
        raise ConfigError([f"{p} is a directory ({hint})"], str(p))
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"no such file: {p} ({hint})"], str(p)) from None
    except OSError as e:
        raise ConfigError([f"cannot read {p}: {e.strerror or e} (check that it is a readable file)"], str(p)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            [
                (
                    f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start} "
                    f"(a sweep file is YAML text; save it as UTF-8)"
                )
            ],
            str(p),
        ) from None
    raw, problem = _safe_load(text)
    if problem:
        raise ConfigError([problem], str(p))
    if not raw:
        raise ConfigError(
            [
                (
                    "the file is empty: a sweep file names at least its teachers: and its search: (start "
                    "from a copy of sweeps/quickstart.yaml; every key: docs/reference.md)"
                )
            ],
            str(p),
        )
    try:
        return from_dict(raw, str(p), overrides)
    except ConfigError as e:
        raise ConfigError([p_ + _how_made(p_, text) for p_ in e.problems], str(p)) from None


def _how_made(problem: str, text: str) -> str:
    """For a data path that does not exist: where relative paths are read from, and the command the sweep file's
    own comments give to make its data (the examples': python sweeps/examples/make_data.py data), if any."""
    if ": no such f" not in problem or not problem.startswith("data."):
        return ""
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.lstrip().startswith("#"))
    made = re.search(r"(python3? \S+\.py[^(.;#]*)", comments)
    return f"; relative paths are read from the current folder ({Path.cwd()})" + (
        f"; the sweep file makes its data with: {made.group(1).strip()}" if made else ""
    )


def replace(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with dotted keys set (e.g. {'kd.alpha': 0.3}), validated again."""
    raw = cfg.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    return from_dict(raw, cfg.source)
