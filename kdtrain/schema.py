"""The sweep file's sections as frozen pydantic dataclasses: every field with its type, default and docstring (the
documentation of the key), and the config-only vocabularies. Choices a registry owns (datasets, models, losses,
optimizers, schedules, ensembles) are checked against it by kdtrain.config.validate, not listed here.

A sweep file's dotted keys (``kd.temperature``, ``student.width``) are the names used everywhere: in ``--set``, in
the ``search:`` section, as Optuna parameter names and as MLflow params. Types are checked strictly: a bool is not
an int, a number is not a str; an int is taken for a float.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from kdtrain import pareto

# --------------------------------------------------------------------------- sections

SECTION = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
"""Unknown keys are errors; no coercion (a str is not a number, a bool is not an int) but int -> float."""


@dataclass(frozen=True, config=SECTION)
class StudyConfig:
    """The ``study:`` section: the study's name, objectives and constraints, how many trials, the sampler and pruner,
    and what a long sweep does when a store goes away."""

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
    follow_up: str = "after"
    """When a complete trial's follow-up is done: its width's no-teacher baseline and its gain over it, its latency
    (unless an objective or constraint needs it at once) and its MLflow logged model. after: once the study has its
    trials, or while a worker waits for other workers' trials, the front's widths first (the front moves sooner);
    per_trial: before the trial reports (each gain is known as its trial ends)."""
    spread: bool = True
    """With a cost objective (params, size_bytes, flops, latency, throughput) and student.width or student.depth
    searched as an int range, the trials after the base trial train the base settings at student sizes spread
    across that range (a factor of about 1.4 apart in width, about 2 in parameters, log scale, smallest first; the
    base trial's size left out; at most 6 and at most a third of the study's trials), so that the front spans the
    sizes from its first trials; the sampler draws every trial after them. false: the sampler draws every trial
    after the base trial."""
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
    """The ``data:`` section (and a teacher's or transfer set's own ``data:``): which dataset, how many rows, how they
    are split and labelled, and where files come from."""

    name: str = "mnist1d"
    """Dataset (see kdtrain.data.datasets.DATASETS)."""
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
    """Random augmentation on tensors (see kdtrain.data.datasets.AUGMENTATIONS; flip for images only)."""
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
    """What builds a network (kdtrain.distill.models.from_config); shared by the student and the teachers."""

    arch: str = "mlp"
    """Model family (see kdtrain.distill.models.MODELS), torchvision:NAME or python:package.module:function."""
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
    """One entry of ``teachers:``: a model trained, loaded from weights, logits, an ONNX or TorchScript file, an MLflow
    model or a finished study's student, with its own data and label space when it has them."""

    arch: str = "cnn1d"
    """Model family (see kdtrain.distill.models.MODELS)."""
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
    """The teacher's classes -> the student's: a list with one teacher class (a subset) or a list of them (a group)
    per student class, or {student class: [teacher classes]} (a coarser task: probabilities summed within each
    group). A class by its index (a number) or its name (text: quote a class named by a number)."""
    from_study: str | None = None
    """A finished study's student as this teacher (born-again networks): STUDY#N for trial N, or STUDY for its
    confirmed pick (the best mean val accuracy over kdtrain confirm's seeds). The trial's arch, width, depth, hidden,
    dropout and trained weights (its run's model.pt) replace the entry's; name, data, output and classes stay. The
    study is looked up in --storage (else $KDTRAIN_STORAGE, else the default journal), its runs in the MLflow store
    it recorded."""


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    """The ``train:`` section: how the student trains (epochs, batch size, optimizer, schedule, device, seed)."""

    epochs: int = 30
    """Epochs of student training."""
    batch_size: int = 256
    """Minibatch size."""
    optimizer: str = "adam"
    """Optimizer (see kdtrain.distill.train.OPTIMIZERS)."""
    lr: float = 0.01
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum."""
    schedule: str = "onecycle"
    """Learning-rate schedule (see kdtrain.distill.train.SCHEDULES)."""
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
    """The distillation term and its settings: the kd.* keys that kdtrain.distill.losses reads (one source of their
    defaults for the sweep file and for the loss functions)."""

    loss: str = "kd"
    """Distillation term (see kdtrain.distill.losses.LOSSES): kd (Hinton), dkd (decoupled KD), dist (correlation relations)."""
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
    """The ``kd:`` section: temperature, alpha, which teachers and how their outputs are combined, the distillation
    loss (``kd.loss``) and feature pairs (``kd.features``)."""

    temperature: float = 4.0
    """Softening temperature T (> 0)."""
    alpha: float = 0.7
    """Weight of the teacher term; 1 - alpha weights the label cross-entropy."""
    teachers: list | None = None
    """Teachers forming the ensemble; default the first teacher of the pool."""
    ensemble: str = "mean_probs"
    """Teacher aggregation (see kdtrain.distill.losses.ENSEMBLES)."""
    weights: list | None = None
    """Optional per-teacher weights (same order as kd.teachers); normalised to sum 1."""
    features: list | None = None
    """Feature distillation: layer pairs, each {teacher_layer, student_layer, loss, weight, name, teacher}. Layers
    are module paths (layer3, features.4, 0.conv; `kdtrain layers` lists them); loss at (attention transfer), hint
    (FitNets, through a learned regressor) or sp (similarity-preserving), default hint; weight adds weight x the
    pair's loss to the run's loss (default at 1000, hint 100, sp 3000); name defaults to loss:student->teacher;
    teacher defaults to the first of kd.teachers. A pair whose teacher a trial does not use is skipped."""
    feature_pair: str = "all"
    """Which kd.features pairs a run uses: all, none, or one pair's name (search it as a categorical)."""
    feature_weight: float | None = None
    """The weight of every pair in use, instead of their own (search it on a log scale); None: each pair's own."""


@dataclass(frozen=True, config=SECTION)
class ProfileConfig:
    """The ``profile:`` section: how a model's deployment cost is measured (runtime, device, threads, batch sizes)."""

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
    """A whole sweep file, validated: its sections as frozen dataclasses (``kdtrain.load`` builds one, ``kdtrain.replace``
    changes dotted keys). ``search`` maps dotted keys to their ranges; ``teacher(name)`` finds a teacher by name."""

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
FOLLOW_UPS = ("after", "per_trial")
SEARCH_TYPES = ("float", "int", "categorical", "subset")
BACKENDS = ("eager", "onnxruntime")
METRICS = (
    "val_accuracy",
    "test_accuracy",
    "params",
    "size_bytes",
    "flops",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput",
)
"""Metrics every trial records; objectives and constraints name them."""

AT_LEAST = {
    "study.trials": 1,
    "study.heartbeat_interval": 1,
    "data.size": 20,
    "data.limit": 10,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.eval_batch_size": 1,
    "train.threads": 0,
    "train.weight_decay": 0,
    "profile.threads": 1,
    "profile.throughput_batch": 1,
    "profile.blocks": 1,
    "profile.calls": 1,
    "profile.warmup": 0,
    "study.baseline_seeds": 1,
    "study.max_requeues": 0,
    "kd.dkd_alpha": 0,
    "kd.dkd_beta": 0,
    "kd.warmup_epochs": 0,
    "kd.dist_beta": 0,
    "kd.dist_gamma": 0,
    "study.prune_warmup_epochs": 0,
    "study.prune_margin": 0,
    "data.image_size": 1,
    "data.seed": 0,
}
"""Lower bounds (inclusive) of single settings; None passes where the type allows it."""
ABOVE_ZERO = ("train.lr", "kd.temperature", "profile.max_cv")


OPTIONS = {
    "mnist1d": ("iid_noise_scale", "corr_noise_scale", "shear_scale", "scale_coeff", "max_translation", "train_split"),
    "synthetic": ("noise", "spread"),
}
"""data.options: the keyword settings each built-in generator takes (mnist1d's are its get_dataset_args)."""


def sub_data(raw: dict, parent: DataConfig) -> DataConfig:
    """A data section inside another (data.unlabeled, teachers[].data), with the parent's root and download unless
    it sets its own. Call on a validated config only."""
    return DataConfig(**{"root": parent.root, "download": parent.download, **raw})
    # kd.standardize: true with a dist choice is fine: dist trials get kd.standardize: false (kdtrain.study.space.suggest)


# --------------------------------------------------------------------------- loading


def parse_duration(text: str | int | float) -> float:
    """'8h', '30m', '90s', '1h30m' or a number of seconds -> seconds (positive)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        total = float(text)
    else:
        stripped = "" if isinstance(text, bool) else str(text).strip()
        if re.fullmatch(r"(\d+(\.\d+)?[dhms])+\d+(\.\d+)?", stripped):  # 1h30: 1h30m or 1h30s? say, not guess
            raise ValueError(
                f"not a duration: {text!r} (a number after a unit needs its own unit: write {stripped}m or {stripped}s)"
            )
        if not stripped or not re.fullmatch(r"(\d+(\.\d+)?[dhms])+|\d+(\.\d+)?", stripped):
            raise ValueError(f"not a duration: {text!r} (use e.g. 8h, 30m, 90s, 1h30m)")
        units = {"h": 3600, "m": 60, "s": 1, "d": 86400}
        total = sum(float(n) * units.get(u, 1) for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms]?)", stripped))
    if not total > 0 or total == float("inf"):
        raise ValueError(f"must be positive: {text!r}")
    return total
