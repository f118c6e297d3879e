"""Checking a config's values, against the schema's bounds and the registries' choices (datasets, models, losses,
optimizers, schedules, ensembles): the one place that knows both. Every problem is collected; kdtrain.config.sweepfile
raises them at once."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kdtrain import pareto
from kdtrain.schema import (
    ABOVE_ZERO,
    AT_LEAST,
    BACKENDS,
    DIRECTIONS,
    FOLLOW_UPS,
    METRICS,
    OPTIONS,
    PRUNERS,
    SAMPLERS,
    Config,
    DataConfig,
    ModelConfig,
    parse_duration,
)


def allowed_values() -> dict[str, list[str]]:
    """Setting -> its allowed values, from the registries (for --help; the README's tables are tested against
    the same registries)."""
    from kdtrain.data.datasets import AUGMENTATIONS, DATASETS  # lazy: data, models and train import this module
    from kdtrain.distill.losses import ENSEMBLES, LOSSES
    from kdtrain.distill.models import MODELS
    from kdtrain.distill.train import OPTIMIZERS, SCHEDULES

    return {
        "data.name": list(DATASETS),
        "data.augment": list(AUGMENTATIONS),
        "student.arch, teachers[].arch": [
            *sorted(MODELS),
            "torchvision:NAME (any torchvision classification model)",
            "python:package.module:function",
        ],
        "train.optimizer": list(OPTIMIZERS),
        "train.schedule": list(SCHEDULES),
        "kd.ensemble": list(ENSEMBLES),
        "kd.loss": list(LOSSES),
        "study.objectives": [m for m in METRICS if m != "test_accuracy"],
        "study.sampler": list(SAMPLERS),
        "study.pruner": list(PRUNERS),
        "study.follow_up": list(FOLLOW_UPS),
        "profile.backend": list(BACKENDS),
    }


# --------------------------------------------------------------------------- building


def build_section(cls, raw: Any, where: str, problems: list[str]):
    """Build a section from a mapping; each unknown key or wrong type is a problem and keeps its default. The one
    way a section is built from text: the sweep file's (kdtrain.config.sweepfile) and a search's trial values
    (kdtrain.config.validate_search)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return cls()
    fields = cls.__pydantic_fields__
    # unknown keys first, so that a key such as 1 or __dataclass_self__ never reaches __init__
    problems.extend(
        f"{where}.{k}: unknown key{did_you_mean(k, fields)} (known: {', '.join(sorted(fields))})"
        for k in raw
        if k not in fields
    )
    kwargs = {k: v for k, v in raw.items() if k in fields}
    for key in [k for k, v in kwargs.items() if fields[k].annotation is dict and isinstance(v, dict)]:
        # metric names and bounds are text; YAML reads 1, true, null or 2001-01-01 as other types
        odd = [x for x in kwargs[key] if not isinstance(x, str)]
        if odd:
            problems.append(
                f"{where}.{key}: keys must be text, got {odd[0]} ({type(odd[0]).__name__}; quote a key "
                "that YAML would read as a number, date, boolean or null)"
            )
            del kwargs[key]
    try:
        return cls(**kwargs)
    except ValidationError as e:
        bad = list(dict.fromkeys(err["loc"][0] for err in e.errors()))  # in field order
    for key in bad:
        expected = fields[key].annotation
        expected = getattr(expected, "__name__", None) or str(expected)  # int, float | None, list | None
        problems.append(f"{where}.{key}: expected {expected}, got {kwargs[key]!r}")
    return cls(**{k: v for k, v in kwargs.items() if k not in bad})


def did_you_mean(word: Any, known) -> str:
    """'; did you mean temperature?' for the closest known name (difflib), or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


# --------------------------------------------------------------------------- value checks


def _check_model(m: ModelConfig, where: str, need) -> None:
    """The checks of the student and of every teacher."""
    from kdtrain import plugins
    from kdtrain.distill.models import MODELS, TORCHVISION, torchvision_names  # models imports this module

    if m.arch.startswith(TORCHVISION):
        name = m.arch[len(TORCHVISION) :]
        need(
            name in torchvision_names(),
            f"{where}.arch: {m.arch}: torchvision has no classification model "
            f"{name!r}{did_you_mean(name, torchvision_names())} (e.g. {', '.join(torchvision_names()[:6])}, ...)",
        )
    elif plugins.is_ref(m.arch):
        problem = plugins.ref_problem(m.arch[len(plugins.PREFIX) :])
        need(problem is None, f"{where}.arch: {problem}")
    else:
        need(
            m.arch in MODELS,
            f"{where}.arch: unknown arch {m.arch!r}{did_you_mean(m.arch, MODELS)} (known: "
            f"{', '.join(sorted(MODELS))}, "
            f"{TORCHVISION}NAME, python:package.module:function)",
        )
    max_width, max_depth = 65536, 1000  # far beyond any network kdtrain trains; torch fails on far larger ones
    need(m.width >= 1, f"{where}.width: must be >= 1, got {m.width}")
    need(m.width <= max_width, f"{where}.width: must be <= {max_width} (units or channels per layer), got {m.width}")
    need(m.depth is None or m.depth >= 1, f"{where}.depth: must be >= 1, got {m.depth}")
    need(m.depth is None or m.depth <= max_depth, f"{where}.depth: must be <= {max_depth} (layers), got {m.depth}")
    need(0 <= m.dropout < 1, f"{where}.dropout: must be in [0, 1), got {m.dropout}")
    if m.hidden is not None:
        need(
            m.arch == "mlp" or plugins.is_ref(m.arch),
            f"{where}.hidden: only the mlp family (and python: factories) take explicit hidden sizes",
        )
        need(
            len(m.hidden) > 0 and all(type(h) is int and h >= 1 for h in m.hidden),
            f"{where}.hidden: must be a non-empty list of positive ints, got {m.hidden}",
        )
        need(
            len(m.hidden) <= max_depth and all(type(h) is not int or h <= max_width for h in m.hidden),
            f"{where}.hidden: at most {max_depth} sizes, each <= {max_width}, got {len(m.hidden)} sizes, the "
            f"largest {max((h for h in m.hidden if type(h) is int), default=None)}",
        )
    need(
        not m.pretrained or m.arch == "resnet18" or m.arch.startswith(TORCHVISION) or plugins.is_ref(m.arch),
        f"{where}.pretrained: only resnet18, torchvision: models and python: factories have pretrained weights",
    )
    need(
        not m.pretrained or m.arch != "resnet18" or m.width == 64,
        f"{where}.pretrained: torchvision weights need width 64, got {m.width}",
    )


def _check_data(d: DataConfig, need) -> None:
    """The data section: a built-in dataset, or the user's own (folder, arrays, csv, python) with its file."""
    from kdtrain import plugins
    from kdtrain.data.datasets import AUGMENTATIONS, DATASETS

    need(
        d.name in DATASETS,
        f"data.name: unknown dataset {d.name!r}{did_you_mean(d.name, DATASETS)} (known: {', '.join(DATASETS)})",
    )
    need(0 < d.val_fraction < 1, f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    need(0 < d.test_fraction < 1, f"data.test_fraction: must be in (0, 1), got {d.test_fraction}")
    for a in d.augment:
        need(a in AUGMENTATIONS, f"data.augment: unknown augmentation {a!r} (known: {', '.join(AUGMENTATIONS)})")
    kinds = {"folder": "a folder of class folders", "arrays": "a .npz or .pt file", "csv": "a CSV file"}
    if d.name in kinds:
        if not d.path:
            need(False, f"data.path: data.name {d.name} reads {kinds[d.name]}; set data.path")
        else:
            p = Path(d.path).expanduser()
            need(p.exists(), f"data.path: no such {'folder' if d.name == 'folder' else 'file'}: {p.resolve()}")
            need(
                not p.exists() or p.is_dir() == (d.name == "folder"),
                f"data.path: {p.resolve()} is {'not ' if d.name == 'folder' else ''}a folder; data.name "
                f"{d.name} reads {kinds[d.name]}",
            )
    else:
        need(d.path is None, f"data.path: only data.name folder, arrays or csv read a path, not {d.name}")
    if d.test_path is not None:
        need(d.name == "csv", "data.test_path: only data.name csv takes a test table")
        need(
            Path(d.test_path).expanduser().is_file(),
            f"data.test_path: no such file: {Path(d.test_path).expanduser().resolve()}",
        )
    if d.name == "python":
        ref = (d.factory or "").removeprefix(plugins.PREFIX)
        need(bool(d.factory), "data.factory: data.name python needs data.factory: package.module:function")
        need(not d.factory or plugins.ref_problem(ref) is None, f"data.factory: {plugins.ref_problem(ref)}")
    else:
        need(d.factory is None, f"data.factory: only data.name python calls a factory, not {d.name}")
    need(bool(d.label), "data.label: name the label column")
    for key in ("mean", "std"):
        v = getattr(d, key)
        need(
            v is None or (len(v) > 0 and all(type(x) in (int, float) and x == x for x in v)),
            f"data.{key}: a list of numbers, one per channel, got {v}",
        )
    need((d.mean is None) == (d.std is None), "data.mean and data.std: give both or neither")
    need(
        d.std is None or all(type(x) not in (int, float) or x > 0 for x in d.std), f"data.std: must be > 0, got {d.std}"
    )


def _check_scarce(d: DataConfig, need) -> None:
    """data.labels, data.options and data.classes: their form (counts against the data are checked on loading)."""
    from kdtrain.data import classmap

    if type(d.labels) is int:
        need(
            d.labels >= 1,
            f"data.labels: a count of labelled rows must be >= 1 (or give a fraction in (0, 1]), got {d.labels}",
        )
    elif d.labels is not None:
        need(
            0 < d.labels <= 1,
            f"data.labels: a fraction must be in (0, 1] (a whole number is a count of rows), got {d.labels}",
        )
    if d.options is not None:
        known = OPTIONS.get(d.name)
        need(known is not None, f"data.options: only the generators {', '.join(OPTIONS)} take options, not {d.name}")
        for k, v in d.options.items() if known else ():
            need(k in known, f"data.options.{k}: unknown option of {d.name} (known: {', '.join(known)})")
            need(type(v) in (int, float) and v >= 0, f"data.options.{k}: must be a number >= 0, got {v!r}")
    for p in classmap.syntax_problems(d.classes, "data.classes"):
        need(False, p)


def _check_sub_data(raw: Any, parent: DataConfig, where: str, refused: tuple, problems: list[str], need) -> None:
    """A nested data section: known keys of the right types, then the data section's own checks."""
    if not isinstance(raw, dict):
        need(
            False,
            f"{where}: expected a data section (a mapping such as {{name: mnist1d, size: 4000, seed: 7}}), "
            f"got {type(raw).__name__}",
        )
        return
    for key in refused:
        need(
            key not in raw,
            f"{where}.{key}: not taken here ("
            + {
                "labels": "its labels are not used",
                "unlabeled": "one level of transfer data only",
                "classes": "its labels are not used",
                "val_fraction": "none of its rows is used for selection",
            }[key]
            + ")",
        )
    sub = build_section(DataConfig, {k: v for k, v in raw.items() if k not in refused}, where, problems)
    sub = dataclasses.replace(sub, root=sub.root if "root" in raw else parent.root)
    _check_data(sub, lambda cond, msg: need(cond, msg.replace("data.", f"{where}.")))
    _check_scarce(sub, lambda cond, msg: need(cond, msg.replace("data.", f"{where}.")))


def _check_teacher_domain(t, where: str, cfg, problems: list[str], need) -> None:
    """teachers[].data, .output and .classes: the teacher's own data and label space."""
    from kdtrain.data import classmap

    if t.data is not None:
        _check_sub_data(t.data, cfg.data, f"{where}.data", ("unlabeled",), problems, need)
    need(
        t.output is None or (type(t.output) is int and t.output >= 0) or (type(t.output) is str and t.output != ""),
        f"{where}.output: an index (>= 0) into the tuple the model returns, or a key of its dict, got {t.output!r}",
    )
    need(t.output is None or not t.logits, f"{where}.output: a logits file holds one output; drop output")
    for p in classmap.syntax_problems(t.classes, f"{where}.classes", groups=True):
        need(False, p)
    if t.logits and cfg.data.unlabeled is not None:
        need(
            False,
            f"{where}.logits: a logits file has no rows for the transfer set data.unlabeled; give the "
            "teacher as a model (weights, ONNX, TorchScript) or drop data.unlabeled",
        )


def _check_teacher_source(t, where: str, augment: list, need) -> None:
    """A teacher from a logits file, or from an exported model (ONNX, TorchScript) instead of its arch."""
    import importlib.util

    need(not (t.logits and t.weights), f"{where}: give weights or logits, not both")
    if t.logits:
        p = Path(t.logits).expanduser()  # read (and its rows checked) with the data, before any training
        need(
            p.suffix in (".npz", ".pt", ".pth"),
            f"{where}.logits: expected a .npz (or .pt) file with arrays train and test, got {p.name}",
        )
    if t.weights and t.weights.endswith(".onnx"):
        need(
            importlib.util.find_spec("onnxruntime") is not None,
            f"{where}.weights: an ONNX teacher needs onnxruntime (pip install 'kdtrain[onnx]')",
        )
    if augment and (t.logits or (t.weights or "").endswith(".onnx")):
        need(
            False,
            f"{where}: data.augment needs a teacher model to run on the augmented inputs; a "
            f"{'logits file' if t.logits else 'ONNX file'} gives fixed logits only (turn data.augment off)",
        )


class _Need:
    """The problems of one config, collected: need(cond, msg) records msg when cond fails; one_of(key, allowed)
    checks a dotted key's value against a vocabulary or a registry."""

    def __init__(self, cfg: Config, problems: list[str]):
        self.cfg, self.problems = cfg, problems

    def __call__(self, cond: bool, msg: str) -> None:
        if not cond:
            self.problems.append(msg)

    def get(self, key: str) -> Any:  # "train.lr" -> cfg.train.lr
        section, name = key.split(".")
        return getattr(getattr(self.cfg, section), name)

    def one_of(self, key: str, allowed) -> None:
        self(self.get(key) in allowed, f"{key}: one of {', '.join(allowed)}, got {self.get(key)!r}")


def check_values(cfg: Config, problems: list[str]) -> None:
    """Every value problem of cfg but its search section's, for kdtrain.config.sweepfile (the file as loaded) and
    kdtrain.config.validate_search (the trials the search gives)."""
    need = _Need(cfg, problems)
    for key, low in AT_LEAST.items():
        need(need.get(key) is None or need.get(key) >= low, f"{key}: must be >= {low}, got {need.get(key)}")
    for key in ABOVE_ZERO:
        need(need.get(key) > 0, f"{key}: must be > 0, got {need.get(key)}")
    _check_study(cfg.study, need)
    d = cfg.data
    _check_data(d, need)
    _check_scarce(d, need)
    if d.unlabeled is not None:
        _check_sub_data(
            d.unlabeled, d, "data.unlabeled", ("labels", "unlabeled", "classes", "val_fraction"), problems, need
        )
    need(d.seed < 2**32, f"data.seed: must be < 2**32 = {2**32} (numpy's seed range), got {d.seed}")
    _check_pool(cfg, need)
    _check_train_kd(cfg, need)
    _check_profile(cfg.profile, need)


def _check_study(s, need: _Need) -> None:
    need(
        bool(s.name) and "/" not in s.name and s.name not in (".", ".."),
        f"study.name: must be one folder name (not empty, no '/', not . or ..), got {s.name!r}",
    )
    need(len(s.objectives) > 0, "study.objectives: give at least one metric -> maximize/minimize")
    for metric, direction in s.objectives.items():
        need(metric in METRICS, f"study.objectives.{metric}: unknown metric (known: {', '.join(METRICS)})")
        need(
            metric != "test_accuracy",
            "study.objectives.test_accuracy: the test split is never optimised on; use val_accuracy",
        )
        need(
            direction in DIRECTIONS,
            f"study.objectives.{metric}: direction must be maximize or minimize, got {direction!r}",
        )
    need.one_of("study.sampler", SAMPLERS)
    need.one_of("study.pruner", PRUNERS)
    need.one_of("study.follow_up", FOLLOW_UPS)
    need(
        s.pruner != "pareto" or pareto.prunable(s.objectives),
        f"study.pruner: pareto needs val_accuracy (maximize) plus cost objectives ({', '.join(pareto.COSTS)}), "
        f"got {', '.join(s.objectives)}; use auto or none",
    )
    need(
        s.pruner not in ("median", "hyperband") or len(s.objectives) == 1,
        f"study.pruner: {s.pruner} prunes single-objective studies only; this study has {len(s.objectives)} "
        "objectives: use pareto, auto or none",
    )
    for key, bound in s.constraints.items():
        metric = ("latency_ms_p50" if key == "max_latency_ms" else key[4:]) if isinstance(key, str) else None
        need(
            metric in METRICS and key[:4] in ("max_", "min_"),
            f"study.constraints.{key}: use max_<metric> or min_<metric> (e.g. max_params, max_latency_ms)",
        )
        need(
            isinstance(bound, (int, float)) and not isinstance(bound, bool),
            f"study.constraints.{key}: expected a number, got {bound!r}",
        )
    need(
        s.grace_period > s.heartbeat_interval,
        f"study.grace_period: must be longer than study.heartbeat_interval ({s.heartbeat_interval}), "
        f"got {s.grace_period}",
    )
    for key in ("timeout", "storage_patience"):
        if getattr(s, key) is not None:
            try:
                parse_duration(getattr(s, key))
            except ValueError as e:
                need(False, f"study.{key}: {e}")


def _check_pool(cfg: Config, need: _Need) -> None:
    """The student and every teacher: their models, sources and domains; unique teacher names."""
    _check_model(cfg.student, "student", need)
    names = [t.name for t in cfg.teachers]
    for i, t in enumerate(cfg.teachers):
        where = f"teachers[{i}]" + (f" ({t.name})" if t.name else "")
        need(bool(t.name), f"{where}.name: every teacher needs a name")
        need(
            not t.name or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", t.name) is not None,
            f"{where}.name: letters, digits, '_', '.' and '-' only, from a letter or digit (a teacher's name is "
            f"a cache folder's and joins kd.teachers subsets such as a+b), got {t.name!r}",
        )
        _check_model(t, where, need)
        need(t.epochs is None or t.epochs >= 0, f"{where}.epochs: must be >= 0, got {t.epochs}")
        need(t.lr is None or t.lr > 0, f"{where}.lr: must be > 0, got {t.lr}")
        _check_teacher_source(t, where, cfg.data.augment, need)
        _check_teacher_domain(t, where, cfg, need.problems, need)
    need(
        not (cfg.student.arch.startswith("torchvision:") and "student.width" in cfg.search),
        f"search.student.width: {cfg.student.arch} has no width to search; use a family or a python: factory",
    )
    for n in sorted({n for n in names if names.count(n) > 1}):
        need(False, f"teachers: name {n!r} is used twice")


def _check_train_kd(cfg: Config, need: _Need) -> None:
    """train's optimizer, schedule and device; kd's loss, ensemble, teachers and weights."""
    from kdtrain.distill import features
    from kdtrain.distill.losses import ENSEMBLES, LOSSES  # the registries own these choices
    from kdtrain.distill.train import OPTIMIZERS, SCHEDULES

    kd, names = cfg.kd, [t.name for t in cfg.teachers]
    need.one_of("train.optimizer", OPTIMIZERS)
    need.one_of("train.schedule", SCHEDULES)
    need(
        cfg.train.device in ("auto", "cpu", "cuda") or cfg.train.device.startswith("cuda:"),
        f"train.device: auto, cpu or cuda, got {cfg.train.device!r}",
    )
    need(0 <= kd.alpha <= 1, f"kd.alpha: must be in [0, 1], got {kd.alpha}")
    need.one_of("kd.ensemble", ENSEMBLES)
    need.one_of("kd.loss", LOSSES)
    need(
        not (kd.standardize and kd.loss == "dist"),
        "kd.standardize: true applies to kd.loss kd and dkd, not to dist (logit standardisation is defined for "
        "the KL-based losses); use kd.loss: kd or dkd with it, or kd.standardize: false with dist",
    )
    need(
        kd.loss != "dist" or cfg.train.batch_size >= 2,
        f"kd.loss: dist needs train.batch_size >= 2 (its intra-class term correlates each class across the batch), "
        f"got {cfg.train.batch_size}",
    )
    if kd.teachers is not None:
        need(len(kd.teachers) > 0, "kd.teachers: must name at least one teacher (use kd.alpha: 0 for no teacher)")
        for n in kd.teachers:
            need(n in names, f"kd.teachers: {n!r} is not in the teacher pool ({', '.join(names) or 'empty'})")
    if kd.weights is not None:
        need(
            len(kd.weights) == len(cfg.kd_teachers),
            f"kd.weights: {len(kd.weights)} weights for {len(cfg.kd_teachers)} teachers",
        )
        need(
            all(type(w) in (int, float) and w >= 0 for w in kd.weights) and any(w > 0 for w in kd.weights),
            f"kd.weights: must be non-negative numbers with a positive sum, got {kd.weights}",
        )
    for problem in features.check_config(cfg):
        need(False, problem)
    need(
        kd.alpha == 0 or bool(cfg.teachers),
        "kd.alpha: > 0 needs at least one teacher under teachers: (add a teachers: list, "
        "or set kd.alpha: 0 to train without a teacher)",
    )


def _check_profile(pr, need: _Need) -> None:
    need.one_of("profile.backend", BACKENDS)
    if pr.backend == "onnxruntime":
        import importlib.util

        need(
            importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None,
            "profile.backend: onnxruntime is not installed (pip install 'kdtrain[onnx]')",
        )
    need(pr.device in ("cpu", "cuda", "auto"), f"profile.device: cpu, cuda or auto, got {pr.device!r}")
