"""Sweep file -> frozen, validated config objects.

A sweep file's dotted keys (``kd.temperature``, ``student.width``) are the names
used everywhere: in ``--set``, in the ``search:`` section, as Optuna parameter
names and as MLflow params. Validation collects every problem and raises once.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class KdtrainError(Exception):
    """An error with a message meant for the user (no traceback is shown)."""

    exit_code = 1


class ConfigError(KdtrainError):
    """The sweep file or an override is wrong; lists every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class StudyConfig:
    name: str = "kdtrain"
    """Study name: the Optuna study and the MLflow experiment."""
    objectives: dict = field(default_factory=lambda: {"val_accuracy": "maximize"})
    """Metric -> direction (maximize/minimize). Two or more make a multi-objective study."""
    trials: int = 20
    """Trials to run (the total for the study)."""
    timeout: str | None = None
    """Wall-clock budget such as '8h' or '30m'; None means no limit."""
    sampler: str = "tpe"
    """tpe, nsga2 or random."""
    pruner: str = "median"
    """median, hyperband or none (only used with a single objective)."""
    constraints: dict = field(default_factory=dict)
    """Upper bounds such as {max_params: 50000, max_latency_ms: 0.1}."""
    seed: int | None = None
    """Sampler seed; None for a random one."""
    heartbeat_interval: int = 60
    """Seconds between a running trial's heartbeats (RDB storages such as PostgreSQL)."""
    grace_period: int = 180
    """Seconds without a heartbeat after which a running trial is failed and its parameters re-queued."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist1d"
    """Dataset: mnist1d, digits, synthetic, mnist, fashion_mnist, cifar10, cifar100."""
    size: int = 5000
    """Samples to generate (mnist1d, synthetic); ignored by fixed datasets."""
    val_fraction: float = 0.1
    """Fraction of the training set carved out for validation (selection)."""
    seed: int = 0
    """Seed of the validation split and of generated data."""
    root: str | None = None
    """Where datasets live; default $KDTRAIN_DATA or ~/.cache/kdtrain/data."""
    download: bool = False
    """Allow torchvision datasets to be downloaded into root."""
    augment: list = field(default_factory=list)
    """Random augmentation on tensors: any of [crop, flip] (images; crop also for 1-D)."""
    normalize: bool = True
    """Standardise inputs with per-channel train mean and std."""
    limit: int | None = None
    """Use at most this many training samples (quick experiments)."""


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "mlp"
    """Model family (see kdtrain.models.MODELS)."""
    width: int = 32
    """Width of the family (channels or hidden units)."""
    depth: int | None = None
    """Layers/blocks where the family has a depth; None for its default."""
    hidden: list | None = None
    """mlp only: explicit hidden sizes, e.g. [512, 256] (overrides width/depth)."""
    dropout: float = 0.0
    """Dropout before the classifier."""


@dataclass(frozen=True)
class TeacherConfig:
    name: str = ""
    """Name used in kd.teachers and in MLflow."""
    arch: str = "cnn1d"
    """Model family (see kdtrain.models.MODELS)."""
    width: int = 64
    """Width of the family."""
    depth: int | None = None
    """Layers/blocks; None for the family's default."""
    hidden: list | None = None
    """mlp only: explicit hidden sizes."""
    dropout: float = 0.0
    """Dropout before the classifier."""
    epochs: int | None = None
    """Training epochs; default train.epochs."""
    lr: float | None = None
    """Learning rate; default train.lr."""
    weights: str | None = None
    """Load instead of train: a checkpoint file (.pt) or an MLflow model URI (runs:/, models:/)."""
    pretrained: bool = False
    """resnet18 only: start from torchvision ImageNet weights (must be in the local torch cache or data.download)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    """Epochs of student training."""
    batch_size: int = 256
    """Minibatch size."""
    optimizer: str = "adam"
    """sgd, adam or adamw."""
    lr: float = 0.01
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum."""
    schedule: str = "onecycle"
    """onecycle, cosine or constant."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    eval_batch_size: int = 1024
    """Batch size for evaluation and teacher logits."""


@dataclass(frozen=True)
class KDConfig:
    temperature: float = 4.0
    """Softening temperature T (> 0)."""
    alpha: float = 0.7
    """Weight of the teacher term; 1 - alpha weights the label cross-entropy."""
    teachers: list | None = None
    """Teachers forming the ensemble; default the first teacher of the pool."""
    ensemble: str = "mean_probs"
    """mean_probs, mean_logits or mean_kl."""
    weights: list | None = None
    """Optional per-teacher weights (same order as kd.teachers); normalised to sum 1."""


@dataclass(frozen=True)
class ProfileConfig:
    backend: str = "eager"
    """Runtime the latency is measured in: eager (PyTorch) or onnxruntime (the exported model; kdtrain[onnx])."""
    device: str = "cpu"
    """cpu (an edge core), cuda, or auto (CUDA when present)."""
    threads: int = 1
    """CPU threads during measurement (1, like an edge core)."""
    throughput_batch: int = 256
    """Batch size of the throughput measurement."""
    blocks: int = 5
    """Timing blocks; their spread is latency_cv."""
    calls: int = 40
    """Batch-1 calls per block."""
    warmup: int = 20
    """Untimed calls first."""
    max_cv: float = 0.15
    """Block spread above which a measurement is flagged noisy (latency_noisy = 1)."""


@dataclass(frozen=True)
class Config:
    study: StudyConfig = field(default_factory=StudyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teachers: tuple = ()
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    search: dict = field(default_factory=dict)
    source: str = ""
    """Path of the sweep file (informational)."""

    def teacher(self, name: str) -> TeacherConfig:
        for t in self.teachers:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def kd_teachers(self) -> list[str]:
        """The ensemble's teacher names (default: the first teacher of the pool)."""
        if self.kd.teachers is not None:
            return list(self.kd.teachers)
        return [self.teachers[0].name] if self.teachers else []

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        d["teachers"] = [dataclasses.asdict(t) for t in self.teachers]
        return d

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value for the scalar settings (what MLflow logs as params)."""
        out = {}
        for section in ("data", "student", "train", "kd", "profile"):
            for k, v in dataclasses.asdict(getattr(self, section)).items():
                out[f"{section}.{k}"] = v
        return out


SECTIONS = {
    "study": StudyConfig,
    "data": DataConfig,
    "student": StudentConfig,
    "train": TrainConfig,
    "kd": KDConfig,
    "profile": ProfileConfig,
}
TOP_LEVEL = set(SECTIONS) | {"teachers", "search"}

DATASETS = ("mnist1d", "digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
ENSEMBLES = ("mean_probs", "mean_logits", "mean_kl")
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "hyperband", "none")
AUGMENTATIONS = ("crop", "flip")
SEARCH_TYPES = ("float", "int", "categorical", "subset")
BACKENDS = ("eager", "onnxruntime")
METRICS = ("val_accuracy", "test_accuracy", "params", "size_bytes", "flops", "latency_ms_p50", "latency_ms_p95",
           "throughput")
"""Metrics every trial records; objectives and constraints name them."""


# --------------------------------------------------------------------------- type checks


def _type_ok(value: Any, annotation: Any) -> bool:
    """True when a YAML value fits a (simple) type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (list, tuple) or origin in (list, tuple):
        return isinstance(value, list)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation is str:
        return isinstance(value, str)
    return True


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build_section(cls, raw: Any, where: str, problems: list[str]):
    """Build a frozen dataclass from a mapping, collecting unknown keys and type errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{where}.{key}: unknown key (known: {known})")
            continue
        if not _type_ok(value, hints[key]):
            problems.append(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and float in typing.get_args(hints[key]) + (hints[key],):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------- value checks


def _check_values(cfg: Config, problems: list[str]) -> None:
    from kdtrain.models import MODELS  # models imports nothing from here at import time

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    s, d, st, tr, kd = cfg.study, cfg.data, cfg.student, cfg.train, cfg.kd
    need(bool(s.name) and "/" not in s.name, f"study.name: must be a non-empty name without '/', got {s.name!r}")
    need(len(s.objectives) > 0, "study.objectives: give at least one metric -> maximize/minimize")
    for metric, direction in s.objectives.items():
        need(metric in METRICS, f"study.objectives.{metric}: unknown metric (known: {', '.join(METRICS)})")
        need(metric != "test_accuracy", "study.objectives.test_accuracy: the test split is never optimised on; "
             "use val_accuracy")
        need(direction in DIRECTIONS, f"study.objectives.{metric}: direction must be maximize or minimize, got {direction!r}")
    need(s.trials >= 1, f"study.trials: must be >= 1, got {s.trials}")
    need(s.sampler in SAMPLERS, f"study.sampler: one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    need(s.pruner in PRUNERS, f"study.pruner: one of {', '.join(PRUNERS)}, got {s.pruner!r}")
    for key, bound in s.constraints.items():
        metric = "latency_ms_p50" if key == "max_latency_ms" else key[4:]
        need(key[:4] in ("max_", "min_") and metric in METRICS,
             f"study.constraints.{key}: use max_<metric> or min_<metric> (e.g. max_params, max_latency_ms)")
        need(isinstance(bound, (int, float)) and not isinstance(bound, bool),
             f"study.constraints.{key}: expected a number, got {bound!r}")
    need(s.heartbeat_interval >= 1, f"study.heartbeat_interval: must be >= 1 second, got {s.heartbeat_interval}")
    need(s.grace_period > s.heartbeat_interval,
         f"study.grace_period: must be longer than study.heartbeat_interval ({s.heartbeat_interval}), "
         f"got {s.grace_period}")
    if s.timeout is not None:
        try:
            parse_duration(s.timeout)
        except ValueError as e:
            problems.append(f"study.timeout: {e}")

    need(d.name in DATASETS, f"data.name: unknown dataset {d.name!r} (known: {', '.join(DATASETS)})")
    need(d.size >= 20, f"data.size: must be >= 20, got {d.size}")
    need(0 < d.val_fraction < 1, f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    for a in d.augment:
        need(a in AUGMENTATIONS, f"data.augment: unknown augmentation {a!r} (known: {', '.join(AUGMENTATIONS)})")
    need(d.limit is None or d.limit >= 10, f"data.limit: must be >= 10, got {d.limit}")

    def check_model(m, where: str) -> None:
        need(m.arch in MODELS, f"{where}.arch: unknown arch {m.arch!r} (known: {', '.join(sorted(MODELS))})")
        need(m.width >= 1, f"{where}.width: must be >= 1, got {m.width}")
        need(m.depth is None or m.depth >= 1, f"{where}.depth: must be >= 1, got {m.depth}")
        need(0 <= m.dropout < 1, f"{where}.dropout: must be in [0, 1), got {m.dropout}")
        if m.hidden is not None:
            need(m.arch == "mlp", f"{where}.hidden: only the mlp family takes explicit hidden sizes")
            need(all(isinstance(h, int) and h >= 1 for h in m.hidden) and len(m.hidden) > 0,
                 f"{where}.hidden: must be a non-empty list of positive ints, got {m.hidden}")

    check_model(st, "student")
    names = [t.name for t in cfg.teachers]
    for i, t in enumerate(cfg.teachers):
        where = f"teachers[{i}]" + (f" ({t.name})" if t.name else "")
        need(bool(t.name), f"{where}.name: every teacher needs a name")
        check_model(t, where)
        need(t.epochs is None or t.epochs >= 0, f"{where}.epochs: must be >= 0, got {t.epochs}")
        need(t.lr is None or t.lr > 0, f"{where}.lr: must be > 0, got {t.lr}")
        need(not t.pretrained or t.arch == "resnet18", f"{where}.pretrained: only resnet18 has torchvision weights")
        need(not t.pretrained or t.width == 64, f"{where}.pretrained: torchvision weights need width 64, got {t.width}")
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"teachers: name {n!r} is used twice")

    need(tr.epochs >= 1, f"train.epochs: must be >= 1, got {tr.epochs}")
    need(tr.batch_size >= 1, f"train.batch_size: must be >= 1, got {tr.batch_size}")
    need(tr.eval_batch_size >= 1, f"train.eval_batch_size: must be >= 1, got {tr.eval_batch_size}")
    need(tr.optimizer in OPTIMIZERS, f"train.optimizer: one of {', '.join(OPTIMIZERS)}, got {tr.optimizer!r}")
    need(tr.schedule in SCHEDULES, f"train.schedule: one of {', '.join(SCHEDULES)}, got {tr.schedule!r}")
    need(tr.lr > 0, f"train.lr: must be > 0, got {tr.lr}")
    need(tr.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {tr.weight_decay}")
    need(tr.device in ("auto", "cpu", "cuda") or tr.device.startswith("cuda:"),
         f"train.device: auto, cpu or cuda, got {tr.device!r}")
    need(tr.threads >= 0, f"train.threads: must be >= 0, got {tr.threads}")

    need(kd.temperature > 0, f"kd.temperature: must be > 0, got {kd.temperature}")
    need(0 <= kd.alpha <= 1, f"kd.alpha: must be in [0, 1], got {kd.alpha}")
    need(kd.ensemble in ENSEMBLES, f"kd.ensemble: one of {', '.join(ENSEMBLES)}, got {kd.ensemble!r}")
    if kd.teachers is not None:
        need(len(kd.teachers) > 0, "kd.teachers: must name at least one teacher (use kd.alpha: 0 for no teacher)")
        for n in kd.teachers:
            need(n in names, f"kd.teachers: {n!r} is not in the teacher pool ({', '.join(names) or 'empty'})")
    if kd.weights is not None:
        need(len(kd.weights) == len(cfg.kd_teachers),
             f"kd.weights: {len(kd.weights)} weights for {len(cfg.kd_teachers)} teachers")
        need(all(isinstance(w, (int, float)) and w >= 0 for w in kd.weights) and sum(kd.weights) > 0,
             f"kd.weights: must be non-negative numbers with a positive sum, got {kd.weights}")
    need(kd.alpha == 0 or bool(cfg.teachers), "kd.alpha: > 0 needs at least one teacher under teachers:")

    pr = cfg.profile
    need(pr.backend in BACKENDS, f"profile.backend: one of {', '.join(BACKENDS)}, got {pr.backend!r}")
    if pr.backend == "onnxruntime":
        import importlib.util

        need(importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None,
             "profile.backend: onnxruntime is not installed (pip install 'kdtrain[onnx]')")
    need(pr.device in ("cpu", "cuda", "auto"), f"profile.device: cpu, cuda or auto, got {pr.device!r}")
    for k in ("threads", "throughput_batch", "blocks", "calls"):
        need(getattr(pr, k) >= 1, f"profile.{k}: must be >= 1, got {getattr(pr, k)}")
    need(pr.warmup >= 0, f"profile.warmup: must be >= 0, got {pr.warmup}")
    need(pr.max_cv > 0, f"profile.max_cv: must be > 0, got {pr.max_cv}")

    _check_search(cfg, names, problems)


def _check_search(cfg: Config, teacher_names: list[str], problems: list[str]) -> None:
    flat = cfg.flat()
    for key, spec in cfg.search.items():
        where = f"search.{key}"
        if key not in flat:
            problems.append(f"{where}: not a setting of the sweep file (searchable: data.*, student.*, train.*, kd.*, profile.*)")
            continue
        if not isinstance(spec, dict) or "type" not in spec:
            problems.append(f"{where}: expected a mapping with a type ({', '.join(SEARCH_TYPES)})")
            continue
        kind = spec["type"]
        allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
                   "categorical": {"choices"}, "subset": {"of"}}.get(kind)
        if allowed is None:
            problems.append(f"{where}.type: one of {', '.join(SEARCH_TYPES)}, got {kind!r}")
            continue
        for k in set(spec) - allowed - {"type"}:
            problems.append(f"{where}.{k}: unknown key for type {kind} (known: {', '.join(sorted(allowed))})")
        if kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            num = (int,) if kind == "int" else (int, float)
            if not (isinstance(low, num) and isinstance(high, num)) or isinstance(low, bool) or isinstance(high, bool):
                problems.append(f"{where}: needs numeric low and high ({kind}), got low={low!r} high={high!r}")
            elif low > high:
                problems.append(f"{where}: low ({low}) is above high ({high})")
            elif spec.get("log") and low <= 0:
                problems.append(f"{where}: a log range needs low > 0, got {low}")
        elif kind == "categorical":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch:
                problems.append(f"{where}.choices: must be a non-empty list")
        elif kind == "subset":
            of = spec.get("of", teacher_names)
            if key != "kd.teachers":
                problems.append(f"{where}: type subset only applies to kd.teachers")
            elif not isinstance(of, list) or not of:
                problems.append(f"{where}.of: must be a non-empty list of teacher names")
            else:
                for n in of:
                    if n not in teacher_names:
                        problems.append(f"{where}.of: {n!r} is not in the teacher pool ({', '.join(teacher_names) or 'empty'})")


# --------------------------------------------------------------------------- loading


def parse_duration(text: str | int | float) -> float:
    """'8h', '30m', '90s', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "d": 86400}
    total, num = 0.0, ""
    for ch in str(text).strip():
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise ValueError(f"not a duration: {text!r} (use e.g. 8h, 30m, 90s)")
    if num:
        total += float(num)
    if total <= 0:
        raise ValueError(f"must be positive: {text!r}")
    return total


def parse_overrides(pairs: list[str]) -> tuple[dict, list[str]]:
    """['kd.alpha=0.5', 'kd.teachers=[a,b]'] -> nested dict, problems."""
    nested: dict = {}
    problems = []
    for pair in pairs:
        if "=" not in pair:
            problems.append(f"--set {pair}: expected key=value, e.g. kd.alpha=0.5")
            continue
        key, text = pair.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        if parts[0] not in TOP_LEVEL or len(parts) < 2 and parts[0] != "teachers":
            problems.append(f"--set {key}: unknown setting (use section.key, e.g. kd.alpha=0.5)")
            continue
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested, problems


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "search":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge_teacher_overrides(raw: dict, over: dict, problems: list[str]) -> dict:
    """--set teachers.NAME.key=value edits one teacher of the list."""
    t_over = over.pop("teachers", None)
    if not t_over:
        return raw
    if not isinstance(t_over, dict):
        problems.append("--set teachers: use teachers.NAME.key=value")
        return raw
    teachers = [dict(t) if isinstance(t, dict) else t for t in raw.get("teachers") or []]
    for name, changes in t_over.items():
        match = [t for t in teachers if isinstance(t, dict) and t.get("name") == name]
        if not match or not isinstance(changes, dict):
            problems.append(f"--set teachers.{name}: no teacher named {name!r} in the sweep file")
            continue
        match[0].update(changes)
    raw = dict(raw)
    raw["teachers"] = teachers
    return raw


def from_dict(raw: Any, source: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate a parsed sweep file (plus --set overrides) into a frozen Config."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the file must be a mapping of sections, got {type(raw).__name__}"], source)
    raw = copy.deepcopy(raw)
    if overrides:
        over, p = parse_overrides(overrides)
        problems += p
        raw = _merge_teacher_overrides(raw, over, problems)
        raw = _merge(raw, over)
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown section (known: {', '.join(sorted(TOP_LEVEL))})")
    sections = {name: _build_section(cls, raw.get(name), name, problems) for name, cls in SECTIONS.items()}
    teachers_raw = raw.get("teachers") or []
    if not isinstance(teachers_raw, list):
        problems.append("teachers: expected a list of teachers")
        teachers_raw = []
    teachers = tuple(_build_section(TeacherConfig, t, f"teachers[{i}]", problems) for i, t in enumerate(teachers_raw))
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        problems.append("search: expected a mapping of dotted key -> range")
        search = {}
    cfg = Config(teachers=teachers, search=search, source=source, **sections)
    _check_values(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read and validate a sweep file; raise ConfigError listing every problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"no such file: {p} (give the path of a sweep YAML, e.g. sweeps/quickstart.yaml)"], str(p))
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(e, 'problem', e)}"], str(p)) from None
    return from_dict(raw, str(p), overrides)


def replace(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with dotted keys set (e.g. {'kd.alpha': 0.3}), validated again."""
    raw = cfg.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    return from_dict(raw, cfg.source)


def home() -> Path:
    """kdtrain's store directory (MLflow db, Optuna journal, caches): $KDTRAIN_HOME or ./mlruns, absolute."""
    return Path(os.environ.get("KDTRAIN_HOME", "mlruns")).expanduser().resolve()


def data_root(cfg: DataConfig) -> Path:
    """Where datasets live: data.root, else $KDTRAIN_DATA, else ~/.cache/kdtrain/data."""
    root = cfg.root or os.environ.get("KDTRAIN_DATA") or "~/.cache/kdtrain/data"
    return Path(root).expanduser().resolve()


def redact(text: str) -> str:
    """Hide passwords inside URLs (postgresql://user:***@host/db, ?password=***) before they are shown or logged."""
    text = re.sub(r"(://[^:/@\s]*:)[^\s/]*@", r"\1***@", str(text))  # greedy: up to the last @ of the netloc
    return re.sub(r"(?i)\b(password|passwd|pwd)=[^&\s'\"]*", r"\1=***", text)
