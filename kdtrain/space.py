"""The search space: a sweep file's ``search:`` section as trial parameters, and the settings that identify a study.

Parameter names are the sweep file's dotted keys (``kd.temperature``), as everywhere. A teacher subset is one
categorical parameter whose values are ``a+b`` strings, so that every sampler can handle it.
"""

from __future__ import annotations

import itertools

from kdtrain.config import Config


def subsets(names: list[str]) -> list[str]:
    """Every non-empty subset of the pool as 'a+b' strings (one categorical parameter)."""
    return ["+".join(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def suggest(trial, space: dict) -> dict:
    """Dotted key -> value for one trial (an optuna.Trial, asked by kdtrain.search), from the sweep file's
    search: section."""
    values = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                              step=spec.get("step"))
        elif kind == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                            step=spec.get("step", 1))
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif kind == "subset":
            values[key] = trial.suggest_categorical(key, subsets(spec["of"])).split("+")
    return values


def base_params(cfg: Config) -> dict:
    """The sweep file's base settings as Optuna params: the first, enqueued trial."""
    flat = cfg.flat()
    out = {}
    for key, spec in cfg.search.items():
        value = "+".join(cfg.kd_teachers) if key == "kd.teachers" else flat[key]
        if spec["type"] == "subset" and value not in subsets(spec["of"]):
            continue  # let the sampler choose
        if spec["type"] == "categorical" and value not in spec["choices"]:
            continue
        out[key] = value
    return out


def signature(cfg: Config) -> dict:
    """What must not change under an existing study name: objectives, search space, the rest of the settings."""
    d = cfg.to_dict()
    for k in ("trials", "timeout"):
        d["study"].pop(k)
    for k in ("root", "download"):
        d["data"].pop(k)
    for k in ("device", "threads"):
        d["train"].pop(k)
    return d


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ, down to the leaves (search.kd.temperature.high)."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
