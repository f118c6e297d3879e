"""The search space: a sweep file's ``search:`` section as trial parameters, and the settings that identify a study.

Parameter names are the sweep file's dotted keys (``kd.temperature``), as everywhere. A teacher subset is one
categorical parameter whose values are ``a+b`` strings, so that every sampler can handle it.

The space is conditional, define-by-run: a setting that only some losses use (kdtrain.distill.losses.LOSS_SETTINGS, such
as ``kd.dkd_beta`` for dkd) is suggested only to a trial whose ``kd.loss`` uses it; ``kd.loss`` is suggested
first, whatever the order of the sweep file. A trial of a loss that refuses a base setting (dist refuses
``kd.standardize: true``) gets the setting off, as a value of its config, not as an Optuna parameter. Likewise
``kd.feature_weight`` is suggested only to a trial whose ``kd.feature_pair`` (suggested before it) is not none.
"""

from __future__ import annotations

import itertools

from kdtrain.data.datasets import identity
from kdtrain.distill.losses import LOSS_SETTINGS
from kdtrain.schema import Config


def subsets(names: list[str]) -> list[str]:
    """Every non-empty subset of the pool as 'a+b' strings (one categorical parameter)."""
    return ["+".join(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def in_use(key: str, loss: str | None) -> bool:
    """Whether a trial of this kd.loss uses the setting (None: the loss is unknown, so it may)."""
    return loss is None or key not in LOSS_SETTINGS or loss in LOSS_SETTINGS[key]


def suggest(trial, space: dict, base_loss: str | None = None) -> dict:
    """Dotted key -> value for one trial (an optuna.Trial, asked by kdtrain.study.search), from the sweep file's
    search: section. A loss's own settings are suggested only when the trial's kd.loss (suggested first, else
    ``base_loss``, the base config's kd.loss) uses them. A validated config never searches a setting that its
    only loss does not use, so without ``base_loss`` the result is the same for a validated space."""
    values = {}
    first = ("kd.loss", "kd.feature_pair")  # suggested first: the conditions below read them
    for key in sorted(space, key=lambda k: first.index(k) if k in first else len(first)):
        spec = space[key]
        if not in_use(key, values.get("kd.loss", base_loss)):
            continue
        if key == "kd.feature_weight" and values.get("kd.feature_pair") == "none":
            continue  # no feature pair: no weight to search (the trial keeps the base setting)
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(
                key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        elif kind == "int":
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif kind == "subset":
            values[key] = trial.suggest_categorical(key, subsets(spec["of"])).split("+")
    if not in_use("kd.standardize", values.get("kd.loss")):
        values["kd.standardize"] = False  # a dist trial of a sweep whose base standardises: validation refuses both
    return values


def base_params(cfg: Config) -> dict:
    """The sweep file's base settings as Optuna params: the first, enqueued trial."""
    flat = cfg.flat()
    out = {}
    for key, spec in cfg.search.items():
        value = "+".join(cfg.kd_teachers) if key == "kd.teachers" else flat[key]
        if value is None:
            continue  # a setting off by default (kd.feature_weight): the sampler chooses
        if spec["type"] == "subset" and value not in subsets(spec["of"]):
            continue  # let the sampler choose
        if spec["type"] == "categorical" and value not in spec["choices"]:
            continue
        out[key] = value
    # the enqueued trial's loss: the base one, unless the sampler must choose it (then so must it the rest)
    loss = out.get("kd.loss") if "kd.loss" in cfg.search else cfg.kd.loss
    return {k: v for k, v in out.items() if k not in LOSS_SETTINGS or (loss is not None and in_use(k, loss))}


SIZE_KEYS = ("student.width", "student.depth")
"""The searched keys that set a student's size."""


def spread_points(cfg: Config, trials: int | None = None, cap: int = 6) -> list[dict]:
    """The student sizes the trials after the base trial train (study.spread), smallest first: each searched
    int student.width and student.depth at the same quantile of its range, the quantiles a factor of about 1.4
    apart in width (about 2 in a convolution's or a linear layer's parameters; log scale, the low end included),
    the base trial's size left out; at most `cap` of them and at most a third of `trials` (the study's target, else
    study.trials). Empty when no objective is a cost, or when no size key is searched as an int range."""
    from kdtrain.pareto import COSTS

    keys = [k for k in SIZE_KEYS if cfg.search.get(k, {}).get("type") == "int"]
    if not cfg.study.spread or not keys or not any(m in COSTS for m in cfg.study.objectives):
        return []
    n = max(2, round(2 * _span(cfg.search[keys[0]])) + 1)
    base = {k: v for k, v in base_params(cfg).items() if k in keys}
    points = []
    for i in range(n):
        point = {k: _at(cfg.search[k], i / (n - 1)) for k in keys}
        if point != base and point not in points:
            points.append(point)
    return points[: min(cap, (trials or cfg.study.trials) // 3)]


def _span(spec: dict) -> float:
    """Doublings across an int range (its length in steps of a doubling; linear ranges from 1)."""
    import math

    return math.log2(max(spec["high"], 1) / max(spec["low"], 1))


def _at(spec: dict, q: float) -> int:
    """The range's value at quantile q: geometric for a positive low end, else linear; on its step."""
    low, high, step = spec["low"], spec["high"], spec.get("step", 1)
    value = low * (high / low) ** q if low > 0 else low + (high - low) * q
    return min(high, low + step * round((value - low) / step))


def signature(cfg: Config, content: str | None = None) -> dict:
    """What must not change under an existing study name: objectives, search space, the rest of the settings, and
    the content of the user's data files (`content` as recorded when the study was created, else read now)."""
    d = cfg.to_dict()
    for k in (
        "trials",
        "timeout",
        "pruner",
        "prune_warmup_epochs",
        "prune_margin",
        "max_requeues",
        "storage_patience",
        "spread",
    ):  # how, not what
        d["study"].pop(k)
    for k in ("root", "download", "path", "test_path"):  # where the files live, not what they hold
        d["data"].pop(k)
    content = content or identity(cfg.data)
    if content is not None:  # the user's own data: its content (a changed file is a changed study)
        d["data"]["content"] = content
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


def extreme_students(cfg: Config, end: str) -> list[dict]:
    """Overrides for the largest (end='high') or smallest ('low') students the search can propose: each searched
    student.arch (else the base one) at that end of the searched student.width and student.depth ranges (the
    hypervolume's box)."""
    pick = max if end == "high" else min

    def at_end(key):
        spec = cfg.search.get(key)
        if spec is None:
            return None
        if spec["type"] == "categorical":
            return pick((c for c in spec["choices"] if isinstance(c, (int, float))), default=None)
        return spec[end] if spec["type"] in ("int", "float") else None

    arch = cfg.search.get("student.arch")
    archs = arch["choices"] if arch and arch["type"] == "categorical" else [cfg.student.arch]
    sizes = {k: int(at_end(k)) for k in ("student.width", "student.depth") if at_end(k) is not None}
    return [{"student.arch": a, **sizes} for a in archs]
