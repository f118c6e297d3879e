"""Checking a sweep's search section: each range and list of choices, and every value it can draw substituted
into the base config and run through kdtrain.config.validate's checks, as each trial's config will be (a value they
refuse would fail every trial that draws it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kdtrain.config.validate import build_section, check_values, did_you_mean
from kdtrain.schema import SEARCH_TYPES, SECTIONS, Config


def check_search(cfg: Config, problems: list[str]) -> None:
    """The search section: each range and list of choices, then the trials it gives. Every trial's config is
    validated again (sweepfile.replace), so each choice and each end of a range is substituted into the base config
    and run through the same value checks: a value they refuse would fail every trial that draws it."""
    from kdtrain.distill.losses import ENSEMBLES, LOSS_SETTINGS, LOSSES

    registries = {"kd.loss": LOSSES, "kd.ensemble": ENSEMBLES}  # searchable only among their registered names
    teacher_names = [t.name for t in cfg.teachers]
    base = list(problems)  # the base config's own problems
    drawn: dict[str, list[tuple[str, Any]]] = {}  # searched key -> (where, value) of the values its trials can get
    flat = cfg.flat()
    for key, spec in cfg.search.items():
        values = _search_spec(key, spec, flat, registries, teacher_names, problems)
        if values is not None:
            drawn[key] = values
    _check_loss_search(cfg, problems, LOSSES, LOSS_SETTINGS)
    _check_trials(cfg, drawn, base, registries, problems)


SPEC_KEYS = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
    "subset": {"of"},
}
"""The keys of each type of search entry (besides type)."""


def _search_spec(
    key: str, spec: Any, flat: dict, registries: dict, teacher_names: list[str], problems: list[str]
) -> list[tuple[str, Any]] | None:
    """One search entry's problems; the (where, value) pairs its trials can draw (None when it gives none)."""
    where = f"search.{key}"
    if key not in flat:
        problems.append(
            f"{where}: not a setting of the sweep file{did_you_mean(key, flat)} (searchable: data.*, "
            "student.*, train.*, kd.*, profile.*)"
        )
        return None
    if not isinstance(spec, dict) or "type" not in spec:
        problems.append(f"{where}: expected a mapping with a type ({', '.join(SEARCH_TYPES)})")
        return None
    kind = spec["type"]
    allowed = SPEC_KEYS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        problems.append(f"{where}.type: one of {', '.join(SEARCH_TYPES)}, got {kind!r}")
        return None
    for k in set(spec) - allowed - {"type"}:
        problems.append(f"{where}.{k}: unknown key for type {kind} (known: {', '.join(sorted(allowed))})")
    if key in registries and kind != "categorical":
        problems.append(f"{where}: use type categorical with choices from {', '.join(registries[key])}")
        return None
    if kind in ("float", "int"):
        return _numeric_spec(where, kind, spec, problems)
    if kind == "categorical":
        return _categorical_spec(where, key, spec, registries, problems)
    return _subset_spec(where, key, spec, teacher_names, problems)


def _numeric_spec(where: str, kind: str, spec: dict, problems: list[str]) -> list[tuple[str, Any]] | None:
    low, high = spec.get("low"), spec.get("high")
    num = (int,) if kind == "int" else (int, float)
    log, step, drawn = spec.get("log", False), spec.get("step"), None
    if not (isinstance(low, num) and isinstance(high, num)) or isinstance(low, bool) or isinstance(high, bool):
        problems.append(f"{where}: needs numeric low and high ({kind}), got low={low!r} high={high!r}")
    elif low > high:
        problems.append(f"{where}: low ({low}) is above high ({high})")
    elif spec.get("log") and low <= 0:
        problems.append(f"{where}: a log range needs low > 0, got {low}")
    else:  # suggest_float gives floats, suggest_int ints
        drawn = [
            (f"{where}.low", float(low) if kind == "float" else low),
            (f"{where}.high", float(high) if kind == "float" else high),
        ]
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false, got {log!r}")
    if "step" in spec:  # Optuna raises on each of these at the trial's suggest
        if kind == "int" and type(step) is not int:
            problems.append(f"{where}.step: an int range needs a whole-number step (1, 2, ...), got {step!r}")
        elif type(step) not in (int, float):
            problems.append(f"{where}.step: must be a number > 0, got {step!r}")
        elif step <= 0:
            problems.append(f"{where}.step: must be > 0, got {step}")
        elif log is True and not (kind == "int" and step == 1):
            problems.append(f"{where}.step: a log range takes no step (Optuna refuses both); remove step or log")
    return drawn


def _categorical_spec(
    where: str, key: str, spec: dict, registries: dict, problems: list[str]
) -> list[tuple[str, Any]] | None:
    ch = spec.get("choices")
    if not isinstance(ch, list) or not ch:
        problems.append(f"{where}.choices: must be a non-empty list")
        return None
    for c in ch if key in registries else ():
        if not (isinstance(c, str) and c in registries[key]):
            problems.append(f"{where}.choices: unknown {key.split('.')[1]} {c!r} (known: {', '.join(registries[key])})")
    return [(f"{where}.choices", c) for c in ch]


def _subset_spec(
    where: str, key: str, spec: dict, teacher_names: list[str], problems: list[str]
) -> list[tuple[str, Any]] | None:
    import itertools

    of = spec.get("of", teacher_names)
    if key != "kd.teachers":
        problems.append(f"{where}: type subset only applies to kd.teachers")
    elif not isinstance(of, list) or not of:
        problems.append(f"{where}.of: must be a non-empty list of teacher names")
    else:
        for n in of:
            if n not in teacher_names:
                problems.append(f"{where}.of: {n!r} is not in the teacher pool ({', '.join(teacher_names) or 'empty'})")
        if len(of) <= 6 and all(isinstance(n, str) for n in of):  # each subset (at most 63) as kdtrain.study.space
            return [(f"{where}.of", list(c)) for r in range(1, len(of) + 1) for c in itertools.combinations(of, r)]
    return None


# --------------------------------------------------------------------------- the trials a search gives


def _used(key: str, loss: Any) -> bool:
    """kdtrain.study.space.in_use: a trial of this loss is given the setting."""
    from kdtrain.distill.losses import LOSS_SETTINGS

    return key not in LOSS_SETTINGS or loss in LOSS_SETTINGS[key]


def _lead(problem: str) -> str:
    """The setting a problem names: "student.width: must be ..." -> student.width."""
    return problem.split(": ", 1)[0]


def _trial(cfg: Config, values: dict) -> tuple[list[str], list[str]]:
    """(type problems, value problems) of the base config with these dotted values, as a trial gets them."""
    if not _used("kd.standardize", values.get("kd.loss", cfg.kd.loss)):
        values = {**values, "kd.standardize": False}  # as kdtrain.study.space.suggest
    changes: dict[str, dict] = {}
    for k, v in values.items():
        section, name = k.split(".", 1)
        changes.setdefault(section, {})[name] = v
    typed: list[str] = []
    sections = {
        s: build_section(SECTIONS[s], {**dataclasses.asdict(getattr(cfg, s)), **c}, s, typed)
        for s, c in changes.items()
    }
    found: list[str] = []
    if not typed:
        check_values(dataclasses.replace(cfg, **sections), found)
    return typed, found


def _always(cfg: Config, drawn: dict, key: str, values: dict, name: str) -> bool:
    """Whether a problem naming `name` stays whatever each other searched setting draws (one at a time): a
    problem that another setting's choice removes fails some trials only, as it did before this check."""
    for other, values_of_other in drawn.items():
        for _, v in values_of_other if other != key else ():
            combo = {**values, other: v}
            loss = combo.get("kd.loss", cfg.kd.loss)
            if not (_used(key, loss) and _used(other, loss)):
                continue  # no trial has both
            typed, found = _trial(cfg, combo)
            if not typed and name not in map(_lead, found):
                return False
    return True


def _check_trials(cfg: Config, drawn: dict, base: list[str], registries: dict, problems: list[str]) -> None:
    """Each drawn value in the base config, checked as sweepfile.replace will check the trial that draws it."""
    from kdtrain.distill.losses import LOSSES

    base_leads = {_lead(p) for p in base}
    loss_choices = [v for _, v in drawn.get("kd.loss", [(None, cfg.kd.loss)]) if v in LOSSES]
    for key, values_of_key in drawn.items():
        if key in registries:
            continue  # checked with the entry, and by _check_loss_search
        # a loss's own setting is drawn by trials of that loss only (kdtrain.study.space.suggest)
        loss = next((x for x in [cfg.kd.loss, *loss_choices] if x in loss_choices and _used(key, x)), None)
        if loss is None:
            continue  # never drawn: reported by _check_loss_search
        fixed = {} if loss == cfg.kd.loss else {"kd.loss": loss}
        for where, value in values_of_key:
            new = _drawn_problems(cfg, drawn, base, base_leads, key, where, {**fixed, key: value}, value, problems)
            if new is None:
                break
            problems.extend([p for p in dict.fromkeys(new) if p not in problems])


def _drawn_problems(
    cfg: Config,
    drawn: dict,
    base: list[str],
    base_leads: set[str],
    key: str,
    where: str,
    values: dict,
    value: Any,
    problems: list[str],
) -> list[str] | None:
    """The problems of the trials that draw this value (None, after one line, when the range's type is wrong)."""
    typed, found = _trial(cfg, values)
    kind = cfg.search[key]["type"]
    if typed and kind in ("float", "int"):
        section, name = key.split(".", 1)
        expected = SECTIONS[section].__pydantic_fields__[name].annotation
        expected = getattr(expected, "__name__", None) or str(expected)  # int, int | None, str
        hint = "type int" if "int" in expected.split(" | ") else "type categorical with choices"
        problems.append(
            f"search.{key}.type: {'an' if kind == 'int' else 'a'} {kind} range gives "
            f"{type(value).__name__} values, but {key} takes {expected} (use {hint})"
        )
        return None
    new = [f"{where}: {p.split(': ', 1)[1]}" for p in typed]  # "train.lr: expected float, got 'x'"
    for p in found:
        name = _lead(p)
        if name != key and (p in base or name in base_leads):
            continue  # the base config's own problem: reported already
        if _always(cfg, drawn, key, values, name):
            new.append(f"{where}: {p.split(': ', 1)[1]}" if name == key else f"{where}: with {value!r}, {p}")
    return new


def _check_loss_search(cfg: Config, problems: list[str], losses: tuple, settings: dict) -> None:
    """A sweep's trials may use several losses (search.kd.loss): refuse a search key that no trial would use, and a
    base setting that a trial's loss would refuse. Trial configs are validated again with the same search section,
    so these checks read only the search section and settings that are not searched."""
    spec = cfg.search.get("kd.loss")
    choices = spec.get("choices") if isinstance(spec, dict) and spec.get("type") == "categorical" else None
    searched = isinstance(choices, list)
    possible = [c for c in choices if isinstance(c, str) and c in losses] if searched else [cfg.kd.loss]
    if not possible or possible[0] not in losses:
        return  # an unknown loss: reported above
    for key, used_by in settings.items():
        if key in cfg.search and not any(loss in used_by for loss in possible):
            problems.append(
                f"search.{key}: never used: only kd.loss {' and '.join(used_by)} uses it, and this "
                f"sweep's kd.loss is {' or '.join(possible)} (set kd.loss, or search it)"
            )
    if searched and "dist" in possible and "train.batch_size" not in cfg.search and cfg.train.batch_size < 2:
        problems.append(
            f"search.kd.loss: the choice dist needs train.batch_size >= 2 (its intra-class term "
            f"correlates each class across the batch), got {cfg.train.batch_size}"
        )
