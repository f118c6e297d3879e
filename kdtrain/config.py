"""Sweep file -> frozen, validated config objects.

A sweep file's dotted keys (``kd.temperature``, ``student.width``) are the names
used everywhere: in ``--set``, in the ``search:`` section, as Optuna parameter
names and as MLflow params. The sections are pydantic dataclasses (types are
checked strictly: a bool is not an int, a number is not a str; an int is taken
for a float). Validation collects every problem, types and values, and raises once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError

from kdtrain import pareto
from pydantic.dataclasses import dataclass


class KdtrainError(Exception):
    """An error with a message meant for the user (no traceback is shown)."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line, cut to limit characters (its type name when it says nothing): the
    reason shown inside kdtrain's one-line errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__


class DataError(KdtrainError):
    """The user's data (data.path, data.factory, a teacher's logits or weights file) cannot be used: one line
    naming the file and what is wrong, exit code 2 like a bad sweep file."""

    exit_code = 2


class ConfigError(KdtrainError):
    """The sweep file or an override is wrong; lists every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config"):
        # one line per problem, whatever a key holds (a YAML key may contain a newline)
        self.problems = ["".join(c if c.isprintable() else ascii(c)[1:-1] for c in p) for p in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")


# --------------------------------------------------------------------------- sections

SECTION = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
"""Unknown keys are errors; no coercion (a str is not a number, a bool is not an int) but int -> float."""


@dataclass(frozen=True, config=SECTION)
class StudyConfig:
    name: str = "kdtrain"
    """Study name: the Optuna study and the MLflow experiment."""
    objectives: dict = field(default_factory=lambda: {"val_accuracy": "maximize"})
    """Metric -> direction (maximize/minimize). Two or more make a multi-objective study."""
    trials: int = 20
    """Trials to run (the total for the study)."""
    timeout: str | int | float | None = None
    """Wall-clock budget such as '8h' or '30m' (a number: seconds); None means no limit."""
    sampler: str = "tpe"
    """tpe, nsga2 or random."""
    pruner: str = "auto"
    """auto, median, hyperband, pareto or none. auto: median for a single objective, pareto for val_accuracy
    plus cost objectives, else none. median and hyperband prune single-objective studies only."""
    prune_warmup_epochs: int | None = None
    """pareto: epochs every trial trains before it can be pruned; None for a fifth of train.epochs."""
    prune_margin: float = 0.01
    """pareto: how much more accurate (val, absolute) a cheaper finished trial must be to prune a trial."""
    constraints: dict = field(default_factory=dict)
    """Upper bounds such as {max_params: 50000, max_latency_ms: 0.1}."""
    seed: int | None = None
    """Sampler seed; None for a random one."""
    heartbeat_interval: int = 60
    """Seconds between a running trial's heartbeats (RDB storages such as PostgreSQL)."""
    grace_period: int = 180
    """Seconds without a heartbeat after which a running trial is failed and its parameters re-queued."""
    baseline_seeds: int = 3
    """Seeds of each width's no-teacher baseline; its MLflow run logs their mean and std."""
    storage_patience: str | int | float = "10m"
    """How long a worker waits out its study's database (PostgreSQL restarted, a network cut: retried while the
    trial trains) or its MLflow tracking server (a finished trial's writes kept on disk) being unreachable,
    before it stops with one error line (a trial it held then recovered as an interrupted one). A duration such
    as '10m' or '1h'; a number: seconds."""
    max_requeues: int = 2
    """Times an interrupted trial's settings are queued again (a dead worker, Ctrl-C); past it they fail for good
    and count toward the failure cap, so a setting that kills its worker cannot loop under a restarting
    scheduler."""

    def resolved_pruner(self) -> str:
        """The pruner in effect: auto resolved for these objectives."""
        if self.pruner != "auto":
            return self.pruner
        if len(self.objectives) == 1:
            return "median"
        return "pareto" if pareto.prunable(self.objectives) else "none"

    def prune_warmup(self, epochs: int) -> int:
        """pareto: the warm-up in epochs (a fifth of the training by default)."""
        return self.prune_warmup_epochs if self.prune_warmup_epochs is not None else max(1, epochs // 5)


@dataclass(frozen=True, config=SECTION)
class DataConfig:
    name: str = "mnist1d"
    """Dataset (see kdtrain.data.DATASETS)."""
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
    """Random augmentation on tensors (see kdtrain.data.AUGMENTATIONS; flip for images only)."""
    normalize: bool = True
    """Standardise inputs with per-channel train mean and std."""
    limit: int | None = None
    """Use at most this many training samples (quick experiments)."""
    path: str | None = None
    """folder, arrays, csv: the folder of images or the file (relative to the current directory)."""
    test_path: str | None = None
    """csv: a second table for the test split; without it data.test_fraction of the rows are held out."""
    test_fraction: float = 0.2
    """folder, csv: the share held out for testing when the source has no test split of its own."""
    label: str = "label"
    """csv: the label column (class indices or names); the other numeric columns are the features."""
    factory: str | None = None
    """python: package.module:function returning the arrays (x_train, y_train, x_test, y_test[, class_names])."""
    image_size: int = 32
    """folder: images are resized to image_size x image_size once, when they are decoded."""
    mean: list | None = None
    """Fixed per-channel mean to normalise with (e.g. ImageNet's for a pretrained teacher); default: train's."""
    std: list | None = None
    """Fixed per-channel std to normalise with, beside data.mean."""
    labels: int | float | None = None
    """Scarce labels: the training split's rows that keep their label, a fraction in (0, 1] (0.05) or a count (180);
    stratified by class, chosen with data.seed. The validation split is carved from these rows; the others are
    unlabelled and enter the distillation term only. None: every row is labelled."""
    unlabeled: dict | None = None
    """A transfer set: a second data section (same keys: a built-in generator with its own size and seed, a folder
    of images, arrays with x only, a csv without the label column, a python factory returning inputs) whose rows
    enter only the distillation term. Labels it carries are ignored."""
    options: dict | None = None
    """Keyword settings of a built-in generator (mnist1d: iid_noise_scale, corr_noise_scale, shear_scale,
    scale_coeff, max_translation, ...), e.g. to make a shifted domain offline."""
    classes: dict | list | None = None
    """Remap the dataset's labels to a task: {new class: [old classes]} (every label mapped) or a list of the old
    classes to keep."""


@dataclass(frozen=True, config=SECTION)
class ModelConfig:
    """What builds a network (kdtrain.models.from_config); shared by the student and the teachers."""

    arch: str = "mlp"
    """Model family (see kdtrain.models.MODELS), torchvision:NAME or python:package.module:function."""
    width: int = 32
    """Width of the family (channels or hidden units); torchvision: models have none and ignore it."""
    depth: int | None = None
    """Layers/blocks where the family has a depth; None for its default."""
    hidden: list | None = None
    """mlp only: explicit hidden sizes, e.g. [512, 256] (overrides width/depth)."""
    dropout: float = 0.0
    """Dropout before the classifier."""
    pretrained: bool = False
    """resnet18 and torchvision:NAME: start from torchvision's ImageNet weights (from the local torch cache only);
    python: factories receive it as a keyword."""


@dataclass(frozen=True, config=SECTION)
class StudentConfig(ModelConfig):
    """The network being distilled (defaults: mlp, width 32)."""


@dataclass(frozen=True, config=SECTION)
class TeacherConfig(ModelConfig):
    arch: str = "cnn1d"
    """Model family (see kdtrain.models.MODELS)."""
    width: int = 64
    """Width of the family (channels or hidden units)."""
    name: str = ""
    """Name used in kd.teachers and in MLflow."""
    epochs: int | None = None
    """Training epochs; default train.epochs."""
    lr: float | None = None
    """Learning rate; default train.lr."""
    weights: str | None = None
    """Load instead of train: a state dict (.pt) for arch, a TorchScript (.pt) or ONNX (.onnx) file, or an MLflow
    model URI (runs:/, models:/)."""
    logits: str | None = None
    """Knowledge without a model: a .npz (or .pt) file of the teacher's logits, arrays train and test, rows in the
    data's order (before the validation split is carved)."""
    data: dict | None = None
    """The teacher's own data (its source domain): a data section it is trained on; a teacher from a file may name
    it for the report. Its logits are computed on the student's rows, normalised as its own data was. None: the
    student's data."""
    output: int | str | None = None
    """For a model whose forward returns a tuple or list (an index) or a dict (a key): the output to distil from."""
    classes: dict | list | None = None
    """The teacher's classes -> the student's: a list of teacher class indices, one per student class (a subset),
    or {student class: [teacher classes]} (a coarser task: probabilities summed within each group)."""


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    epochs: int = 30
    """Epochs of student training."""
    batch_size: int = 256
    """Minibatch size."""
    optimizer: str = "adam"
    """Optimizer (see kdtrain.train.OPTIMIZERS)."""
    lr: float = 0.01
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum."""
    schedule: str = "onecycle"
    """Learning-rate schedule (see kdtrain.train.SCHEDULES)."""
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


@dataclass(frozen=True, config=SECTION)
class LossConfig:
    """The distillation term and its settings: the kd.* keys that kdtrain.losses reads (one source of their
    defaults for the sweep file and for the loss functions)."""

    loss: str = "kd"
    """Distillation term (see kdtrain.losses.LOSSES): kd (Hinton), dkd (decoupled KD), dist (correlation relations)."""
    standardize: bool = False
    """Z-score each sample's teacher and student logits before the tempered softmax (kd and dkd only)."""
    dkd_alpha: float = 1.0
    """dkd only: weight of the target-class term TCKD (>= 0)."""
    dkd_beta: float = 8.0
    """dkd only: weight of the non-target-class term NCKD (>= 0)."""
    warmup_epochs: int = 0
    """dkd only: the distillation term grows linearly over these first epochs (epoch / warmup_epochs); 0 for none."""
    dist_beta: float = 1.0
    """dist only: weight of the inter-class relation (each sample's classes) (>= 0)."""
    dist_gamma: float = 1.0
    """dist only: weight of the intra-class relation (each class across the batch) (>= 0)."""

    def warmup(self, epoch: int | None) -> float:
        """DKD's linear warm-up factor of the distillation term at an epoch (counted from 1); 1 when none."""
        if self.loss != "dkd" or self.warmup_epochs <= 0 or epoch is None:
            return 1.0
        return min(epoch / self.warmup_epochs, 1.0)


@dataclass(frozen=True, config=SECTION)
class KDConfig(LossConfig):
    temperature: float = 4.0
    """Softening temperature T (> 0)."""
    alpha: float = 0.7
    """Weight of the teacher term; 1 - alpha weights the label cross-entropy."""
    teachers: list | None = None
    """Teachers forming the ensemble; default the first teacher of the pool."""
    ensemble: str = "mean_probs"
    """Teacher aggregation (see kdtrain.losses.ENSEMBLES)."""
    weights: list | None = None
    """Optional per-teacher weights (same order as kd.teachers); normalised to sum 1."""


@dataclass(frozen=True, config=SECTION)
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



@dataclasses.dataclass(frozen=True)
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

# Config-only vocabularies. Datasets, augmentations, archs, optimizers, schedules and ensembles are
# the registries of the modules that implement them (kdtrain.data, .models, .train, .losses).
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("auto", "median", "hyperband", "pareto", "none")
SEARCH_TYPES = ("float", "int", "categorical", "subset")
BACKENDS = ("eager", "onnxruntime")
METRICS = ("val_accuracy", "test_accuracy", "params", "size_bytes", "flops", "latency_ms_p50", "latency_ms_p95",
           "throughput")
"""Metrics every trial records; objectives and constraints name them."""

AT_LEAST = {"study.trials": 1, "study.heartbeat_interval": 1, "data.size": 20, "data.limit": 10, "train.epochs": 1,
            "train.batch_size": 1, "train.eval_batch_size": 1, "train.threads": 0, "train.weight_decay": 0,
            "profile.threads": 1, "profile.throughput_batch": 1, "profile.blocks": 1, "profile.calls": 1,
            "profile.warmup": 0, "study.baseline_seeds": 1, "study.max_requeues": 0, "kd.dkd_alpha": 0, "kd.dkd_beta": 0,
            "kd.warmup_epochs": 0, "kd.dist_beta": 0, "kd.dist_gamma": 0,
            "study.prune_warmup_epochs": 0, "study.prune_margin": 0, "data.image_size": 1, "data.seed": 0}
"""Lower bounds (inclusive) of single settings; None passes where the type allows it."""
ABOVE_ZERO = ("train.lr", "kd.temperature", "profile.max_cv")


def allowed_values() -> dict[str, list[str]]:
    """Setting -> its allowed values, from the registries (for --help; the README's tables are tested against
    the same registries)."""
    from kdtrain.data import AUGMENTATIONS, DATASETS  # lazy: data, models and train import this module
    from kdtrain.losses import ENSEMBLES, LOSSES
    from kdtrain.models import MODELS
    from kdtrain.train import OPTIMIZERS, SCHEDULES

    return {"data.name": list(DATASETS), "data.augment": list(AUGMENTATIONS), "student.arch, teachers[].arch":
            sorted(MODELS) + ["torchvision:NAME (any torchvision classification model)", "python:package.module:function"], "train.optimizer": list(OPTIMIZERS), "train.schedule": list(SCHEDULES),
            "kd.ensemble": list(ENSEMBLES), "kd.loss": list(LOSSES),
            "study.objectives": [m for m in METRICS if m != "test_accuracy"], "study.sampler": list(SAMPLERS),
            "study.pruner": list(PRUNERS), "profile.backend": list(BACKENDS)}


MAX_DEPTH, MAX_VALUES, MAX_INT_BITS = 16, 100_000, 64
"""Far beyond any sweep file; deeper, larger (YAML aliases expand) or longer-int input is refused up front."""


# --------------------------------------------------------------------------- building


def _section(cls, raw: Any, where: str, problems: list[str]):
    """Build a section from a mapping; each unknown key or wrong type is a problem and keeps its default."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return cls()
    fields = cls.__pydantic_fields__
    # unknown keys first, so that a key such as 1 or __dataclass_self__ never reaches __init__
    problems.extend(f"{where}.{k}: unknown key{did_you_mean(k, fields)} (known: {', '.join(sorted(fields))})"
                    for k in raw if k not in fields)
    kwargs = {k: v for k, v in raw.items() if k in fields}
    for key in [k for k, v in kwargs.items() if fields[k].annotation is dict and isinstance(v, dict)]:
        # metric names and bounds are text; YAML reads 1, true, null or 2001-01-01 as other types
        odd = [x for x in kwargs[key] if not isinstance(x, str)]
        if odd:
            problems.append(f"{where}.{key}: keys must be text, got {odd[0]} ({type(odd[0]).__name__}; quote a key "
                            "that YAML would read as a number, date, boolean or null)")
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
            raise ConfigError([f"nested more than {MAX_DEPTH} levels deep (or a YAML anchor inside itself); "
                               "a sweep file needs three or four levels"], source)
        if count > MAX_VALUES:
            raise ConfigError([f"more than {MAX_VALUES} values once YAML aliases are expanded; "
                               "a sweep file needs a few dozen"], source)
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise ConfigError([f"{at}an integer longer than {MAX_INT_BITS} bits (about 19 digits); no setting needs "
                               "one: write it as a float (1e30) or quote it"], source)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError([f"{at}{value} is not a finite number; no setting takes .nan or .inf (give a number, "
                               "or leave the setting out for its default)"], source)
        if isinstance(value, dict):
            for k, v in value.items():
                path = f"{where}.{str(k)[:40]}" if where else str(k)[:40]  # cut: a key may be megabytes long
                stack += [(k, depth + 1, f"{path} (a key)"), (v, depth + 1, path)]
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack += [(x, depth + 1, f"{where}[{i}]") for i, x in enumerate(value)]


# --------------------------------------------------------------------------- value checks


def _check_model(m: ModelConfig, where: str, need) -> None:
    """The checks of the student and of every teacher."""
    from kdtrain import plugins
    from kdtrain.models import MODELS, TORCHVISION, torchvision_names  # models imports this module

    if m.arch.startswith(TORCHVISION):
        name = m.arch[len(TORCHVISION):]
        need(name in torchvision_names(), f"{where}.arch: {m.arch}: torchvision has no classification model "
             f"{name!r}{did_you_mean(name, torchvision_names())} (e.g. {', '.join(torchvision_names()[:6])}, ...)")
    elif plugins.is_ref(m.arch):
        problem = plugins.ref_problem(m.arch[len(plugins.PREFIX):])
        need(problem is None, f"{where}.arch: {problem}")
    else:
        need(m.arch in MODELS, f"{where}.arch: unknown arch {m.arch!r}{did_you_mean(m.arch, MODELS)} (known: "
             f"{', '.join(sorted(MODELS))}, "
             f"{TORCHVISION}NAME, python:package.module:function)")
    max_width, max_depth = 65536, 1000  # far beyond any network kdtrain trains; torch fails on far larger ones
    need(m.width >= 1, f"{where}.width: must be >= 1, got {m.width}")
    need(m.width <= max_width, f"{where}.width: must be <= {max_width} (units or channels per layer), got {m.width}")
    need(m.depth is None or m.depth >= 1, f"{where}.depth: must be >= 1, got {m.depth}")
    need(m.depth is None or m.depth <= max_depth, f"{where}.depth: must be <= {max_depth} (layers), got {m.depth}")
    need(0 <= m.dropout < 1, f"{where}.dropout: must be in [0, 1), got {m.dropout}")
    if m.hidden is not None:
        need(m.arch == "mlp" or plugins.is_ref(m.arch),
             f"{where}.hidden: only the mlp family (and python: factories) take explicit hidden sizes")
        need(len(m.hidden) > 0 and all(type(h) is int and h >= 1 for h in m.hidden),
             f"{where}.hidden: must be a non-empty list of positive ints, got {m.hidden}")
        need(len(m.hidden) <= max_depth and all(type(h) is not int or h <= max_width for h in m.hidden),
             f"{where}.hidden: at most {max_depth} sizes, each <= {max_width}, got {len(m.hidden)} sizes, the "
             f"largest {max((h for h in m.hidden if type(h) is int), default=None)}")
    need(not m.pretrained or m.arch == "resnet18" or m.arch.startswith(TORCHVISION) or plugins.is_ref(m.arch),
         f"{where}.pretrained: only resnet18, torchvision: models and python: factories have pretrained weights")
    need(not m.pretrained or m.arch != "resnet18" or m.width == 64,
         f"{where}.pretrained: torchvision weights need width 64, got {m.width}")


def _check_data(d: DataConfig, need) -> None:
    """The data section: a built-in dataset, or the user's own (folder, arrays, csv, python) with its file."""
    from kdtrain import plugins
    from kdtrain.data import AUGMENTATIONS, DATASETS

    need(d.name in DATASETS, f"data.name: unknown dataset {d.name!r}{did_you_mean(d.name, DATASETS)} (known: "
         f"{', '.join(DATASETS)})")
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
            need(not p.exists() or p.is_dir() == (d.name == "folder"),
                 f"data.path: {p.resolve()} is {'not ' if d.name == 'folder' else ''}a folder; data.name "
                 f"{d.name} reads {kinds[d.name]}")
    else:
        need(d.path is None, f"data.path: only data.name folder, arrays or csv read a path, not {d.name}")
    if d.test_path is not None:
        need(d.name == "csv", "data.test_path: only data.name csv takes a test table")
        need(Path(d.test_path).expanduser().is_file(),
             f"data.test_path: no such file: {Path(d.test_path).expanduser().resolve()}")
    if d.name == "python":
        ref = (d.factory or "").removeprefix(plugins.PREFIX)
        need(bool(d.factory), "data.factory: data.name python needs data.factory: package.module:function")
        need(not d.factory or plugins.ref_problem(ref) is None, f"data.factory: {plugins.ref_problem(ref)}")
    else:
        need(d.factory is None, f"data.factory: only data.name python calls a factory, not {d.name}")
    need(bool(d.label), "data.label: name the label column")
    for key in ("mean", "std"):
        v = getattr(d, key)
        need(v is None or (len(v) > 0 and all(type(x) in (int, float) and x == x for x in v)),
             f"data.{key}: a list of numbers, one per channel, got {v}")
    need((d.mean is None) == (d.std is None), "data.mean and data.std: give both or neither")
    need(d.std is None or all(type(x) not in (int, float) or x > 0 for x in d.std),
         f"data.std: must be > 0, got {d.std}")


OPTIONS = {"mnist1d": ("iid_noise_scale", "corr_noise_scale", "shear_scale", "scale_coeff", "max_translation",
                       "train_split"),
           "synthetic": ("noise", "spread")}
"""data.options: the keyword settings each built-in generator takes (mnist1d's are its get_dataset_args)."""


def sub_data(raw: dict, parent: DataConfig) -> DataConfig:
    """A data section inside another (data.unlabeled, teachers[].data), with the parent's root and download unless
    it sets its own. Call on a validated config only."""
    return DataConfig(**{"root": parent.root, "download": parent.download, **raw})


def _check_scarce(d: DataConfig, need) -> None:
    """data.labels, data.options and data.classes: their form (counts against the data are checked on loading)."""
    from kdtrain import classmap

    if type(d.labels) is int:
        need(d.labels >= 1, f"data.labels: a count of labelled rows must be >= 1 (or give a fraction in (0, 1]), "
             f"got {d.labels}")
    elif d.labels is not None:
        need(0 < d.labels <= 1, f"data.labels: a fraction must be in (0, 1] (a whole number is a count of rows), "
             f"got {d.labels}")
    if d.options is not None:
        known = OPTIONS.get(d.name)
        need(known is not None, f"data.options: only the generators {', '.join(OPTIONS)} take options, not {d.name}")
        for k, v in (d.options.items() if known else ()):
            need(k in known, f"data.options.{k}: unknown option of {d.name} (known: {', '.join(known)})")
            need(type(v) in (int, float) and v >= 0, f"data.options.{k}: must be a number >= 0, got {v!r}")
    for p in classmap.syntax_problems(d.classes, "data.classes"):
        need(False, p)


def _check_sub_data(raw: Any, parent: DataConfig, where: str, refused: tuple, problems: list[str], need) -> None:
    """A nested data section: known keys of the right types, then the data section's own checks."""
    if not isinstance(raw, dict):
        need(False, f"{where}: expected a data section (a mapping such as {{name: mnist1d, size: 4000, seed: 7}}), "
             f"got {type(raw).__name__}")
        return
    for key in refused:
        need(key not in raw, f"{where}.{key}: not taken here (" + {
            "labels": "its labels are not used", "unlabeled": "one level of transfer data only",
            "classes": "its labels are not used", "val_fraction": "none of its rows is used for selection"}[key] + ")")
    sub = _section(DataConfig, {k: v for k, v in raw.items() if k not in refused}, where, problems)
    sub = dataclasses.replace(sub, root=sub.root if "root" in raw else parent.root)
    _check_data(sub, lambda cond, msg: need(cond, msg.replace("data.", f"{where}.")))
    _check_scarce(sub, lambda cond, msg: need(cond, msg.replace("data.", f"{where}.")))


def _check_teacher_domain(t, where: str, cfg, problems: list[str], need) -> None:
    """teachers[].data, .output and .classes: the teacher's own data and label space."""
    from kdtrain import classmap

    if t.data is not None:
        _check_sub_data(t.data, cfg.data, f"{where}.data", ("unlabeled",), problems, need)
    need(t.output is None or (type(t.output) is int and t.output >= 0) or (type(t.output) is str and t.output != ""),
         f"{where}.output: an index (>= 0) into the tuple the model returns, or a key of its dict, got {t.output!r}")
    need(t.output is None or not t.logits, f"{where}.output: a logits file holds one output; drop output")
    for p in classmap.syntax_problems(t.classes, f"{where}.classes"):
        need(False, p)
    if t.logits and cfg.data.unlabeled is not None:
        need(False, f"{where}.logits: a logits file has no rows for the transfer set data.unlabeled; give the "
             "teacher as a model (weights, ONNX, TorchScript) or drop data.unlabeled")


def _check_teacher_source(t, where: str, augment: list, need) -> None:
    """A teacher from a logits file, or from an exported model (ONNX, TorchScript) instead of its arch."""
    import importlib.util

    need(not (t.logits and t.weights), f"{where}: give weights or logits, not both")
    if t.logits:
        p = Path(t.logits).expanduser()  # read (and its rows checked) with the data, before any training
        need(p.suffix in (".npz", ".pt", ".pth"), f"{where}.logits: expected a .npz (or .pt) file with arrays "
             f"train and test, got {p.name}")
    if t.weights and t.weights.endswith(".onnx"):
        need(importlib.util.find_spec("onnxruntime") is not None,
             f"{where}.weights: an ONNX teacher needs onnxruntime (pip install 'kdtrain[onnx]')")
    if augment and (t.logits or (t.weights or "").endswith(".onnx")):
        need(False, f"{where}: data.augment needs a teacher model to run on the augmented inputs; a "
             f"{'logits file' if t.logits else 'ONNX file'} gives fixed logits only (turn data.augment off)")


def _check_values(cfg: Config, problems: list[str], search: bool = True) -> None:
    """Every value problem of cfg; search=False leaves out the search section's checks (for one trial's values)."""
    from kdtrain.losses import ENSEMBLES, LOSSES  # lazy: losses and train import this module
    from kdtrain.train import OPTIMIZERS, SCHEDULES

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    def get(key: str) -> Any:  # "train.lr" -> cfg.train.lr
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    def one_of(key: str, allowed) -> None:
        need(get(key) in allowed, f"{key}: one of {', '.join(allowed)}, got {get(key)!r}")

    for key, low in AT_LEAST.items():
        need(get(key) is None or get(key) >= low, f"{key}: must be >= {low}, got {get(key)}")
    for key in ABOVE_ZERO:
        need(get(key) > 0, f"{key}: must be > 0, got {get(key)}")

    s, d, kd, pr = cfg.study, cfg.data, cfg.kd, cfg.profile
    need(bool(s.name) and "/" not in s.name, f"study.name: must be a non-empty name without '/', got {s.name!r}")
    need(len(s.objectives) > 0, "study.objectives: give at least one metric -> maximize/minimize")
    for metric, direction in s.objectives.items():
        need(metric in METRICS, f"study.objectives.{metric}: unknown metric (known: {', '.join(METRICS)})")
        need(metric != "test_accuracy", "study.objectives.test_accuracy: the test split is never optimised on; "
             "use val_accuracy")
        need(direction in DIRECTIONS, f"study.objectives.{metric}: direction must be maximize or minimize, got {direction!r}")
    one_of("study.sampler", SAMPLERS)
    one_of("study.pruner", PRUNERS)
    need(s.pruner != "pareto" or pareto.prunable(s.objectives),
         f"study.pruner: pareto needs val_accuracy (maximize) plus cost objectives ({', '.join(pareto.COSTS)}), "
         f"got {', '.join(s.objectives)}; use auto or none")
    need(s.pruner not in ("median", "hyperband") or len(s.objectives) == 1,
         f"study.pruner: {s.pruner} prunes single-objective studies only; this study has {len(s.objectives)} "
         "objectives: use pareto, auto or none")
    for key, bound in s.constraints.items():
        metric = ("latency_ms_p50" if key == "max_latency_ms" else key[4:]) if isinstance(key, str) else None
        need(metric in METRICS and key[:4] in ("max_", "min_"),
             f"study.constraints.{key}: use max_<metric> or min_<metric> (e.g. max_params, max_latency_ms)")
        need(isinstance(bound, (int, float)) and not isinstance(bound, bool),
             f"study.constraints.{key}: expected a number, got {bound!r}")
    need(s.grace_period > s.heartbeat_interval,
         f"study.grace_period: must be longer than study.heartbeat_interval ({s.heartbeat_interval}), "
         f"got {s.grace_period}")
    for key in ("timeout", "storage_patience"):
        if getattr(s, key) is not None:
            try:
                parse_duration(getattr(s, key))
            except ValueError as e:
                problems.append(f"study.{key}: {e}")

    _check_data(d, need)
    _check_scarce(d, need)
    if d.unlabeled is not None:
        _check_sub_data(d.unlabeled, d, "data.unlabeled", ("labels", "unlabeled", "classes", "val_fraction"),
                        problems, need)
    need(d.seed < 2**32, f"data.seed: must be < 2**32 = {2**32} (numpy's seed range), got {d.seed}")

    _check_model(cfg.student, "student", need)
    names = [t.name for t in cfg.teachers]
    for i, t in enumerate(cfg.teachers):
        where = f"teachers[{i}]" + (f" ({t.name})" if t.name else "")
        need(bool(t.name), f"{where}.name: every teacher needs a name")
        _check_model(t, where, need)
        need(t.epochs is None or t.epochs >= 0, f"{where}.epochs: must be >= 0, got {t.epochs}")
        need(t.lr is None or t.lr > 0, f"{where}.lr: must be > 0, got {t.lr}")
        _check_teacher_source(t, where, d.augment, need)
        _check_teacher_domain(t, where, cfg, problems, need)
    need(not (cfg.student.arch.startswith("torchvision:") and "student.width" in cfg.search),
         f"search.student.width: {cfg.student.arch} has no width to search; use a family or a python: factory")
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"teachers: name {n!r} is used twice")

    one_of("train.optimizer", OPTIMIZERS)
    one_of("train.schedule", SCHEDULES)
    need(cfg.train.device in ("auto", "cpu", "cuda") or cfg.train.device.startswith("cuda:"),
         f"train.device: auto, cpu or cuda, got {cfg.train.device!r}")

    need(0 <= kd.alpha <= 1, f"kd.alpha: must be in [0, 1], got {kd.alpha}")
    one_of("kd.ensemble", ENSEMBLES)
    one_of("kd.loss", LOSSES)
    need(not (kd.standardize and kd.loss == "dist"),
         "kd.standardize: true applies to kd.loss kd and dkd, not to dist (logit standardisation is defined for "
         "the KL-based losses); use kd.loss: kd or dkd with it, or kd.standardize: false with dist")
    need(kd.loss != "dist" or cfg.train.batch_size >= 2,
         f"kd.loss: dist needs train.batch_size >= 2 (its intra-class term correlates each class across the batch), "
         f"got {cfg.train.batch_size}")
    if kd.teachers is not None:
        need(len(kd.teachers) > 0, "kd.teachers: must name at least one teacher (use kd.alpha: 0 for no teacher)")
        for n in kd.teachers:
            need(n in names, f"kd.teachers: {n!r} is not in the teacher pool ({', '.join(names) or 'empty'})")
    if kd.weights is not None:
        need(len(kd.weights) == len(cfg.kd_teachers),
             f"kd.weights: {len(kd.weights)} weights for {len(cfg.kd_teachers)} teachers")
        need(all(type(w) in (int, float) and w >= 0 for w in kd.weights) and any(w > 0 for w in kd.weights),
             f"kd.weights: must be non-negative numbers with a positive sum, got {kd.weights}")
    need(kd.alpha == 0 or bool(cfg.teachers), "kd.alpha: > 0 needs at least one teacher under teachers:")

    one_of("profile.backend", BACKENDS)
    if pr.backend == "onnxruntime":
        import importlib.util

        need(importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None,
             "profile.backend: onnxruntime is not installed (pip install 'kdtrain[onnx]')")
    need(pr.device in ("cpu", "cuda", "auto"), f"profile.device: cpu, cuda or auto, got {pr.device!r}")

    if search:
        _check_search(cfg, names, problems)


def _check_search(cfg: Config, teacher_names: list[str], problems: list[str]) -> None:
    """The search section: each range and list of choices, then the trials it gives. Every trial's config is
    validated again (config.replace), so each choice and each end of a range is substituted into the base config
    and run through the same value checks: a value they refuse would fail every trial that draws it."""
    import itertools

    from kdtrain.losses import ENSEMBLES, LOSS_SETTINGS, LOSSES

    registries = {"kd.loss": LOSSES, "kd.ensemble": ENSEMBLES}  # searchable only among their registered names
    flat = cfg.flat()
    base = list(problems)  # the base config's own problems
    drawn: dict[str, list[tuple[str, Any]]] = {}  # searched key -> (where, value) of the values its trials can get
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
                   "categorical": {"choices"}, "subset": {"of"}}.get(kind) if isinstance(kind, str) else None
        if allowed is None:
            problems.append(f"{where}.type: one of {', '.join(SEARCH_TYPES)}, got {kind!r}")
            continue
        for k in set(spec) - allowed - {"type"}:
            problems.append(f"{where}.{k}: unknown key for type {kind} (known: {', '.join(sorted(allowed))})")
        if key in registries and kind != "categorical":
            problems.append(f"{where}: use type categorical with choices from {', '.join(registries[key])}")
            continue
        if kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            num = (int,) if kind == "int" else (int, float)
            log, step = spec.get("log", False), spec.get("step")
            if not (isinstance(low, num) and isinstance(high, num)) or isinstance(low, bool) or isinstance(high, bool):
                problems.append(f"{where}: needs numeric low and high ({kind}), got low={low!r} high={high!r}")
            elif low > high:
                problems.append(f"{where}: low ({low}) is above high ({high})")
            elif spec.get("log") and low <= 0:
                problems.append(f"{where}: a log range needs low > 0, got {low}")
            else:  # suggest_float gives floats, suggest_int ints
                drawn[key] = [(f"{where}.low", float(low) if kind == "float" else low),
                              (f"{where}.high", float(high) if kind == "float" else high)]
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
                    problems.append(f"{where}.step: a log range takes no step (Optuna refuses both); remove step "
                                    "or log")
        elif kind == "categorical":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch:
                problems.append(f"{where}.choices: must be a non-empty list")
                continue
            drawn[key] = [(f"{where}.choices", c) for c in ch]
            if key in registries:
                for c in ch:
                    if not (isinstance(c, str) and c in registries[key]):
                        problems.append(f"{where}.choices: unknown {key.split('.')[1]} {c!r} "
                                        f"(known: {', '.join(registries[key])})")
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
                if len(of) <= 6 and all(isinstance(n, str) for n in of):  # each subset (at most 63) as kdtrain.space
                    drawn[key] = [(f"{where}.of", list(c)) for r in range(1, len(of) + 1)
                                  for c in itertools.combinations(of, r)]
    _check_loss_search(cfg, problems, LOSSES, LOSS_SETTINGS)

    # --- the trials: each drawn value in the base config, checked as config.replace will check the trial
    def used(key: str, loss: Any) -> bool:  # kdtrain.space.in_use: a trial of this loss is given the setting
        return key not in LOSS_SETTINGS or loss in LOSS_SETTINGS[key]

    def lead(problem: str) -> str:  # the setting a problem names: "student.width: must be ..." -> student.width
        return problem.split(": ", 1)[0]

    def trial(values: dict) -> tuple[list[str], list[str]]:
        """(type problems, value problems) of the base config with these dotted values, as a trial gets them."""
        if not used("kd.standardize", values.get("kd.loss", cfg.kd.loss)):
            values = {**values, "kd.standardize": False}  # as kdtrain.space.suggest
        changes: dict[str, dict] = {}
        for k, v in values.items():
            section, name = k.split(".", 1)
            changes.setdefault(section, {})[name] = v
        typed: list[str] = []
        sections = {s: _section(SECTIONS[s], {**dataclasses.asdict(getattr(cfg, s)), **c}, s, typed)
                    for s, c in changes.items()}
        found: list[str] = []
        if not typed:
            _check_values(dataclasses.replace(cfg, **sections), found, search=False)
        return typed, found

    def always(key: str, values: dict, name: str) -> bool:
        """Whether a problem naming `name` stays whatever each other searched setting draws (one at a time): a
        problem that another setting's choice removes fails some trials only, as it did before this check."""
        for other, values_of_other in drawn.items():
            for _, v in values_of_other if other != key else ():
                combo = {**values, other: v}
                loss = combo.get("kd.loss", cfg.kd.loss)
                if not (used(key, loss) and used(other, loss)):
                    continue  # no trial has both
                typed, found = trial(combo)
                if not typed and name not in map(lead, found):
                    return False
        return True

    base_problems, base_leads = set(base), {lead(p) for p in base}
    loss_choices = [v for _, v in drawn.get("kd.loss", [(None, cfg.kd.loss)]) if v in LOSSES]
    for key, values_of_key in drawn.items():
        if key in registries:
            continue  # checked above, with _check_loss_search
        kind = cfg.search[key]["type"]
        # a loss's own setting is drawn by trials of that loss only (kdtrain.space.suggest)
        loss = next((x for x in [cfg.kd.loss, *loss_choices] if x in loss_choices and used(key, x)), None)
        if loss is None:
            continue  # never drawn: reported by _check_loss_search
        fixed = {} if loss == cfg.kd.loss else {"kd.loss": loss}
        for where, value in values_of_key:
            values = {**fixed, key: value}
            typed, found = trial(values)
            if typed and kind in ("float", "int"):
                section, name = key.split(".", 1)
                expected = SECTIONS[section].__pydantic_fields__[name].annotation
                expected = getattr(expected, "__name__", None) or str(expected)  # int, int | None, str
                hint = "type int" if "int" in expected.split(" | ") else "type categorical with choices"
                problems.append(f"search.{key}.type: {'an' if kind == 'int' else 'a'} {kind} range gives "
                                f"{type(value).__name__} values, but {key} takes {expected} (use {hint})")
                break
            new = [f"{where}: {p.split(': ', 1)[1]}" for p in typed]  # "train.lr: expected float, got 'x'"
            for p in found:
                name = lead(p)
                if name != key and (p in base_problems or name in base_leads):
                    continue  # the base config's own problem: reported already
                if always(key, values, name):
                    new.append(f"{where}: {p.split(': ', 1)[1]}" if name == key else f"{where}: with {value!r}, {p}")
            problems.extend([p for p in dict.fromkeys(new) if p not in problems])


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
            problems.append(f"search.{key}: never used: only kd.loss {' and '.join(used_by)} uses it, and this "
                            f"sweep's kd.loss is {' or '.join(possible)} (set kd.loss, or search it)")
    if searched and "dist" in possible and "train.batch_size" not in cfg.search and cfg.train.batch_size < 2:
        problems.append(f"search.kd.loss: the choice dist needs train.batch_size >= 2 (its intra-class term "
                        f"correlates each class across the batch), got {cfg.train.batch_size}")
    # kd.standardize: true with a dist choice is fine: dist trials get kd.standardize: false (kdtrain.space.suggest)


# --------------------------------------------------------------------------- loading


def parse_duration(text: str | int | float) -> float:
    """'8h', '30m', '90s', '1h30m' or a number of seconds -> seconds (positive)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        total = float(text)
    else:
        stripped = "" if isinstance(text, bool) else str(text).strip()
        if re.fullmatch(r"(\d+(\.\d+)?[dhms])+\d+(\.\d+)?", stripped):  # 1h30: 1h30m or 1h30s? say, not guess
            raise ValueError(f"not a duration: {text!r} (a number after a unit needs its own unit: write "
                             f"{stripped}m or {stripped}s)")
        if not stripped or not re.fullmatch(r"(\d+(\.\d+)?[dhms])+|\d+(\.\d+)?", stripped):
            raise ValueError(f"not a duration: {text!r} (use e.g. 8h, 30m, 90s, 1h30m)")
        units = {"h": 3600, "m": 60, "s": 1, "d": 86400}
        total = sum(float(n) * units.get(u, 1) for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms]?)", stripped))
    if not total > 0 or total == float("inf"):
        raise ValueError(f"must be positive: {text!r}")
    return total


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
        if parts[0] not in TOP_LEVEL or len(parts) < 2 and parts[0] != "teachers":
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
        raise ConfigError([f"the file must be a mapping of sections, got {type(raw).__name__} "
                           "(see sweeps/quickstart.yaml)"], source)
    if overrides:
        over, p = parse_overrides(overrides)
        problems += p
        raw = _merge(_merge_teacher_overrides(raw, over, problems), over)
    _check_shape(raw, source)
    raw = copy.deepcopy(raw)  # the Config shares nothing with the caller
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown section{did_you_mean(key, TOP_LEVEL)} (known: {', '.join(sorted(TOP_LEVEL))})")
    sections = {name: _section(cls, raw.get(name), name, problems) for name, cls in SECTIONS.items()}
    teachers_raw = raw.get("teachers") or []
    if not isinstance(teachers_raw, list):
        problems.append("teachers: expected a list of teachers")
        teachers_raw = []
    teachers = []
    for i, t in enumerate(teachers_raw):
        name = t.get("name") if isinstance(t, dict) else None
        where = f"teachers[{i}]" + (f" ({name})" if isinstance(name, str) and name else "")
        teachers.append(_section(TeacherConfig, t, where, problems))
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        problems.append("search: expected a mapping of dotted key -> range")
        search = {}
    cfg = Config(teachers=tuple(teachers), search=search, source=source, **sections)
    _check_values(cfg, problems)
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
        raise ConfigError([f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start} "
                           f"(a sweep file is YAML text; save it as UTF-8)"], str(p)) from None
    raw, problem = _safe_load(text)
    if problem:
        raise ConfigError([problem], str(p))
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
