"""The teacher pool: trained (or loaded) once, cached by content, logits reused.

A teacher's cache key is a hash of its own config, the data config and the
training settings that shape it, so changing any of them trains a new teacher
and a second call with the same settings trains nothing. Beside the weights
sit the teacher's logits on train / val / test: every student trial reuses
them instead of running the teacher again.

What a teacher learns from and how its classes map to the student's is kdtrain.distill.teacher_data; reading
files made elsewhere and loading weights is kdtrain.distill.teacher_files.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdtrain.data.datasets import Dataset
from kdtrain.data.datasets import identity as data_identity
from kdtrain.data.sources import file_digest
from kdtrain.deploy.profile import count_params
from kdtrain.distill import models, references, teacher_data, teacher_files
from kdtrain.distill.losses import map_logits
from kdtrain.distill.train import EpochStats, predict, resolve_device, seed_all, train
from kdtrain.errors import DataError, first_line
from kdtrain.paths import home
from kdtrain.schema import Config, TeacherConfig, sub_data
from kdtrain.shared import atomic_dir, content_key

CACHE_VERSION = 1
MODEL_FILE, LOGITS_FILE, META_FILE = "model.pt", "logits.pt", "meta.json"
"""A cache entry's files (a folder per teacher; also the `teacher/` artifact of its MLflow run)."""


@dataclass
class Teacher:
    name: str
    config: TeacherConfig
    model: nn.Module | None
    """The teacher on the CPU in eval mode; None for a teacher known by its logits only (a logits or ONNX file)."""
    logits: dict[str, torch.Tensor]
    """Float32 logits on 'train', 'val' and 'test', in the dataset's order."""
    params: int | None
    """None where unknown (a logits file)."""
    val_accuracy: float
    test_accuracy: float
    source: str
    """Where it came from this time: 'cache', 'trained', 'checkpoint', 'mlflow', 'logits', 'onnx', 'torchscript',
    or what moved when its reference did ('reloaded: models:/x@champion names ...': kdtrain.distill.references)."""
    seconds: float
    """Time spent producing it on the run that first made it (training, loading)."""
    key: str
    path: Path
    classes: list[str] = dataclasses.field(default_factory=list)
    """Its own class names (its data's, or column numbers for a file); its logits have one column each."""
    groups: list[list[int]] | None = None
    """Its classes -> the student's (teachers[].classes resolved, kdtrain.data.classmap); None: the same classes."""
    view: tuple[list[float], list[float]] | None = None
    """(scale, shift) per channel turning the student's normalised inputs into its own (teachers[].data); None:
    the student's normalisation."""
    source_val_accuracy: float | None = None
    """Accuracy on its own data's validation and test splits (teachers[].data with a model); None otherwise."""
    source_test_accuracy: float | None = None

    def student_logits(self, split: str, temperature: float = 1.0) -> torch.Tensor:
        """Its logits on the student's rows, mapped to the student's classes (at this temperature)."""
        return map_logits(self.logits[split], self.groups, temperature)

    def as_student_model(self, temperature: float) -> nn.Module:
        """Its model taking the student's inputs and returning logits over the student's classes (for the online
        path, when augmentation changes the inputs every epoch)."""
        return TeacherView(self.model, self.view, self.groups, temperature)

    @classmethod
    def from_entry(
        cls,
        t: TeacherConfig,
        folder: Path,
        model: nn.Module | None,
        logits: dict[str, torch.Tensor],
        meta: dict,
        *,
        source: str,
        classes: list[str],
        groups: list[list[int]] | None = None,
    ) -> Teacher:
        """The teacher its cache entry describes (meta.json's fields, the folder named `name-key`): one place that
        reads them by name, for a teacher read back from the cache and one made now."""
        return cls(
            name=t.name,
            config=t,
            model=model,
            logits=logits,
            params=meta["params"],
            val_accuracy=meta["val_accuracy"],
            test_accuracy=meta["test_accuracy"],
            source=source,
            seconds=meta["seconds"],
            key=folder.name.rsplit("-", 1)[1],
            path=folder,
            classes=classes,
            groups=groups,
            view=meta.get("view"),
            source_val_accuracy=meta.get("source_val_accuracy"),
            source_test_accuracy=meta.get("source_test_accuracy"),
        )

    @property
    def cached(self) -> bool:
        return self.source == "cache"

    @property
    def arch(self) -> str:
        """What the teacher is, for tables: its arch, or the file it comes from."""
        c = self.config
        if c.from_study:  # a finished study's student (kdtrain.ship.study_teacher)
            return f"{c.arch} from {c.from_study}"
        if c.logits:
            return f"logits file {Path(c.logits).name}"
        if c.weights and (c.weights.endswith(".onnx") or isinstance(self.model, torch.jit.ScriptModule)):
            return f"{'ONNX' if c.weights.endswith('.onnx') else 'TorchScript'} file {Path(c.weights).name}"
        return c.arch

    @property
    def width(self) -> str:
        """Its width where its family has one, else '-'."""
        c = self.config
        return "-" if self.arch.split(" from ")[0] != c.arch or c.arch.startswith("torchvision:") else str(c.width)

    @property
    def described(self) -> str:
        return self.arch if self.width == "-" else f"{self.arch}, width {self.width}"

    @property
    def params_text(self) -> str:
        return f"{self.params:,}" if self.params is not None else "?"


class TeacherView(nn.Module):
    """A teacher seen from the student's side: the student's inputs renormalised as the teacher's own data was,
    its logits mapped to the student's classes."""

    def __init__(self, model: nn.Module, view, groups, temperature: float):
        super().__init__()
        self.model, self.view, self.groups, self.temperature = model, view, groups, temperature

    def forward(self, x):
        return map_logits(self.model(teacher_files.viewed(x, self.view)).float(), self.groups, self.temperature)


def build(t: TeacherConfig, tds: Dataset) -> nn.Module:
    """The teacher's network for its own data, seen through teachers[].output when it returns several."""
    return teacher_files.pick(t, models.from_config(t, tds.input_shape, tds.num_classes))


def _weights_identity(ref: str) -> dict:
    """What identifies a weights source: a file's size and mtime, or a URI as is."""
    p = Path(ref).expanduser()
    if p.exists():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"uri": ref, "names": references.named(ref)} if references.moving(ref) else {"uri": ref}


def teacher_key(t: TeacherConfig, cfg: Config) -> str:
    data = dataclasses.asdict(cfg.data)
    for k in ("root", "download", "path", "test_path"):  # where files live does not change the teacher...
        data.pop(k)
    data["content"] = data_identity(cfg.data)  # ...what they hold does
    tr = dataclasses.asdict(cfg.train)
    for k in ("device", "threads", "eval_batch_size", "epochs", "lr"):
        tr.pop(k)
    ident = {
        "version": CACHE_VERSION,
        "teacher": dataclasses.asdict(t),
        "epochs": t.epochs if t.epochs is not None else cfg.train.epochs,
        "lr": t.lr if t.lr is not None else cfg.train.lr,
        "data": data,
        "train": tr,
    }
    if kind(t) in ("logits", "onnx"):  # a file's logits, not training: the train settings cannot change them
        for k in ("epochs", "lr", "train"):
            ident.pop(k)
    if t.data is not None:  # its own data: what the files hold, as for the student's
        ident["teacher_data_content"] = data_identity(sub_data(t.data, cfg.data))
    if t.weights:
        ident["weights"] = _weights_identity(t.weights)
    if t.logits and Path(t.logits).expanduser().is_file():
        ident["logits"] = file_digest(t.logits)
    if t.arch.startswith("python:"):  # edited code trains a new teacher
        ident["code"] = references.code_key(t.arch)
    return content_key(ident)


def reference(t: TeacherConfig) -> dict | None:
    """A reference that can move (an MLflow model alias, a python: arch) and what it names now, for the cache's
    meta (references.moved_note compares entries)."""
    if references.moving(t.weights):
        return {"ref": t.weights, "names": references.named(t.weights)}
    if t.arch.startswith("python:"):
        return {"ref": t.arch, "names": references.code_key(t.arch)}
    return None


def cache_dir(t: TeacherConfig, cfg: Config) -> Path:
    return home() / "cache" / "teachers" / f"{t.name}-{teacher_key(t, cfg)}"


def is_cached(t: TeacherConfig, cfg: Config) -> bool:
    return (cache_dir(t, cfg) / META_FILE).exists()


def _save_atomic(folder: Path, model: nn.Module | None, logits: dict, meta: dict) -> None:
    with atomic_dir(folder) as tmp:  # another process may finish the same teacher first: either copy will do
        inner = teacher_files.inner(model)
        if isinstance(inner, torch.jit.ScriptModule):
            with teacher_files.torchscript_quiet():
                torch.jit.save(inner, str(tmp / MODEL_FILE))  # the module itself: no arch rebuilds it
        elif model is not None:
            torch.save(model.state_dict(), tmp / MODEL_FILE)
        torch.save(logits, tmp / LOGITS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def _from_cache(t: TeacherConfig, cfg: Config, data: Dataset, folder: Path) -> Teacher | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
        logits = torch.load(folder / LOGITS_FILE, map_location="cpu", weights_only=True)
        classes = meta.get("classes") or list(data.class_names)
        model = None
        if meta.get("source") == "torchscript":
            model = teacher_files.pick(t, teacher_files.jit_load(folder / MODEL_FILE))
        elif meta.get("source") not in ("logits", "onnx"):
            state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
            model = teacher_files.pick(t, models.from_config(t, data.input_shape, len(classes)))
            model.load_state_dict(state)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError):
        return None  # missing or damaged: train again
    model = model.eval() if model is not None else None
    return Teacher.from_entry(t, folder, model, logits, meta, source="cache", classes=classes)


def kind(t: TeacherConfig) -> str:
    """How the teacher is made: 'logits' (a file of logits), 'onnx' or 'torchscript' (an exported model file),
    'weights' (a state dict or MLflow model for its arch) or 'train'."""
    if t.logits:
        return "logits"
    if not t.weights:
        return "train"
    if t.weights.endswith(".onnx"):
        return "onnx"
    p = Path(t.weights).expanduser()
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:  # a TorchScript archive holds its code; a state dict only data
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()):
                return "torchscript"
    return "weights"


def _accuracies(cfg: Config, data: Dataset, model, logits, groups, tds: Dataset | None) -> dict[str, float | None]:
    """A teacher's accuracy on the student's splits (mapped to the student's classes) and, when it learnt from its
    own data, on that data's splits (None otherwise)."""
    acc = {
        f"{split}_accuracy": (map_logits(logits[split], groups, 1.0).argmax(1) == y.cpu()).float().mean().item()
        for split, y in (("val", data.y_val), ("test", data.y_test))
    }
    acc["source_val_accuracy"] = acc["source_test_accuracy"] = None
    if tds is not None and tds is not data and model is not None:
        bs, bf16 = cfg.train.eval_batch_size, cfg.train.bf16
        for split in ("val", "test"):
            x, y = getattr(tds, f"x_{split}"), getattr(tds, f"y_{split}")
            acc[f"source_{split}_accuracy"] = (predict(model, x, bs, bf16).argmax(1) == y).float().mean().item()
    return acc


def _made(
    t: TeacherConfig,
    cfg: Config,
    data: Dataset,
    folder: Path,
    model,
    logits,
    source: str,
    start: float,
    classes: list[str],
    view=None,
    tds: Dataset | None = None,
) -> Teacher:
    """Cache a teacher made now and return it: its accuracy on the student's splits (mapped to the student's
    classes) and, when it learnt from its own data, on that data's splits."""
    groups = teacher_data.resolve_groups(t, data, classes)
    acc = _accuracies(cfg, data, model, logits, groups, tds)
    params = count_params(model) if model is not None else None
    if source == "onnx":
        from kdtrain.deploy.export import onnx_params

        params = onnx_params(Path(t.weights).expanduser())
    seconds = time.perf_counter() - start
    ref = reference(t)
    meta = {
        "name": t.name,
        "config": dataclasses.asdict(t),
        "params": params,
        "val_accuracy": acc["val_accuracy"],
        "test_accuracy": acc["test_accuracy"],
        "seconds": seconds,
        "source": source,
        "classes": list(classes),
        "view": view,
        "source_val_accuracy": acc["source_val_accuracy"],
        "source_test_accuracy": acc["source_test_accuracy"],
        "reference": ref,
    }
    moved = references.moved_note(folder, ref) if ref else None  # said where it came from (its run, the tables)
    _save_atomic(folder, model, logits, meta)
    return Teacher.from_entry(
        t, folder, model, logits, meta, source=moved or source, classes=list(classes), groups=groups
    )


def _predict_all(model: nn.Module, cfg: Config, data: Dataset, view=None) -> dict[str, torch.Tensor]:
    device = resolve_device(cfg.train.device)
    model.to(device)
    bs, bf16 = cfg.train.eval_batch_size, cfg.train.bf16
    logits = {
        split: predict(model, teacher_files.viewed(getattr(data, f"x_{split}").cpu(), view).to(device), bs, bf16).cpu()
        for split in ("train", "val", "test")
    }
    model.cpu().eval()
    return logits


def get_teacher(
    t: TeacherConfig,
    cfg: Config,
    data: Dataset,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochStats], None] | None = None,
    load_uri: teacher_files.LoadURI | None = None,
) -> Teacher:
    """Return a teacher from the cache, or train / load it and cache it."""
    folder = cache_dir(t, cfg)
    hit = _from_cache(t, cfg, data, folder)
    if hit is not None:
        teacher_data.own_data(t, cfg, data)  # its data checked against the student's rows, cached or not
        hit.groups = teacher_data.resolve_groups(t, data, hit.classes)
        return hit

    start = time.perf_counter()
    how = kind(t)
    if how == "logits":
        logits = teacher_files.file_logits(t, data)
        classes = teacher_data.file_classes(t, cfg, data, logits["train"].shape[1])
        teacher_files.check_order(t, logits, teacher_data.resolve_groups(t, data, classes), data, log)
        return _made(t, cfg, data, folder, None, logits, "logits", start, classes)
    tds, view = teacher_data.domain(t, cfg, data)
    if how == "onnx":
        log(f"teacher {t.name}: computing its logits with ONNX Runtime from {t.weights}")
        logits = teacher_files.onnx_logits(t, data, cfg.train.threads, view)
        classes = teacher_data.file_classes(t, cfg, data, logits["train"].shape[1])
        return _made(t, cfg, data, folder, None, logits, "onnx", start, classes, view)
    if how == "torchscript":
        log(f"teacher {t.name}: loaded TorchScript model {t.weights}")
        model = teacher_files.torchscript(t, data, view)
        logits = _predict_all(model, cfg, data, view)
        classes = teacher_data.file_classes(t, cfg, data, logits["train"].shape[1])
        return _made(t, cfg, data, folder, model, logits, "torchscript", start, classes, view, tds)
    model, source = _loaded_or_trained(t, cfg, tds, log, on_epoch, load_uri)
    logits = _predict_all(model, cfg, data, view)
    return _made(t, cfg, data, folder, model, logits, source, start, list(tds.class_names), view, tds)


def _loaded_or_trained(
    t: TeacherConfig,
    cfg: Config,
    tds: Dataset,
    log: Callable[[str], None],
    on_epoch: Callable[[EpochStats], None] | None,
    load_uri: teacher_files.LoadURI | None,
) -> tuple[nn.Module, str]:
    """The teacher's network for its arch, with teachers[].weights loaded or trained on its data; and its source."""
    seed_all(cfg.train.seed)
    model = build(t, tds)
    if t.weights:
        source = teacher_files.load_weights(t, teacher_files.inner(model), load_uri)
        log(f"teacher {t.name}: loaded weights from {t.weights}")
        return model, source
    epochs = t.epochs if t.epochs is not None else cfg.train.epochs
    family = "" if t.arch.startswith("torchvision:") else f"width {t.width}, "
    own = f" on its own data ({t.data.get('name', 'mnist1d')})" if t.data is not None else ""
    log(f"teacher {t.name}: training {t.arch} ({family}{count_params(model):,} params) for {epochs} epochs{own}")
    augment = sub_data(t.data, cfg.data).augment if t.data is not None else cfg.data.augment
    if epochs > 0:
        model = train(model, tds, cfg.train, augment_kinds=augment, on_epoch=on_epoch, epochs=epochs, lr=t.lr).model
    return model, "trained"


def _first_batch(t: TeacherConfig, model: nn.Module, tds: Dataset) -> None:
    """Run two of the teacher's own samples through it: teachers[].output naming an output it does not return is
    found here, before any training."""
    with torch.no_grad():
        try:
            out = model.eval()(tds.x_val[:2].cpu())
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - user code
            raise DataError(
                f"teachers ({t.name}).arch {t.arch} does not run on its data's samples of shape "
                f"{tuple(tds.input_shape)}: {type(e).__name__}: {first_line(e, 300)}"
            ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, tds.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"teachers ({t.name}): returns {shape} for a batch of 2; its data has {tds.num_classes} "
            "classes" + ("" if t.output is not None else " (a model with several outputs needs teachers[].output)")
        )


def check_weights(cfg: Config, data: Dataset, names: list[str], load_uri: teacher_files.LoadURI | None = None) -> None:
    """Read every not-yet-cached teacher's file (a checkpoint into its arch, a TorchScript model, a logits file's
    shapes), run every model once on its data and check its classes against the student's, so that a corrupt or
    ill-fitting teacher is reported before any other teacher spends time training. A moving MLflow model URI
    (models:/NAME@alias) is read first: the teacher's cache key holds the weights it names now."""
    for t in [cfg.teacher(n) for n in names if references.moving(cfg.teacher(n).weights) and load_uri]:
        references.resolve(t.weights, load_uri)
    for name in names:
        t = cfg.teacher(name)
        if is_cached(t, cfg):
            continue
        how = kind(t)
        if how == "logits":
            logits = teacher_files.file_logits(t, data)
            classes = teacher_data.file_classes(t, cfg, data, logits["train"].shape[1])
            teacher_files.check_order(
                t, logits, teacher_data.resolve_groups(t, data, classes), data, log=lambda line: None
            )
            continue
        tds, view = teacher_data.domain(t, cfg, data)
        if how == "torchscript":
            model = teacher_files.torchscript(t, data, view)
            with torch.no_grad():
                columns = model(teacher_files.viewed(data.x_val[:2].cpu(), view)).shape[1]
            teacher_data.resolve_groups(t, data, teacher_data.file_classes(t, cfg, data, columns))
        elif how == "onnx" and not Path(t.weights).expanduser().is_file():
            raise DataError(f"{teacher_files.file_of(t, 'weights')}: no such file")
        elif how in ("weights", "train"):
            model = build(t, tds)
            if how == "weights":
                teacher_files.load_weights(t, teacher_files.inner(model), load_uri)
            if t.output is not None or t.data is not None or t.arch not in models.MODELS:
                _first_batch(t, model, tds)
            teacher_data.resolve_groups(t, data, list(tds.class_names))


def load_pool(
    cfg: Config,
    data: Dataset,
    names: list[str] | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[str, EpochStats], None] | None = None,
    load_uri: teacher_files.LoadURI | None = None,
) -> dict[str, Teacher]:
    """The named teachers (default: the whole pool), each cached or trained."""
    wanted = names if names is not None else [t.name for t in cfg.teachers]
    check_weights(cfg, data, wanted, load_uri)  # resolves the moving references first
    pool = {}
    for name in wanted:
        t = cfg.teacher(name)
        cb = (lambda s, n=name: on_epoch(n, s)) if on_epoch else None
        pool[name] = get_teacher(t, cfg, data, log=log, on_epoch=cb, load_uri=load_uri)
    return pool


def stacked_logits(
    pool: dict[str, Teacher], names: list[str], split: str = "train", temperature: float = 1.0
) -> torch.Tensor:
    """(K, N, C) logits of the named teachers on a split, each mapped to the student's classes at this
    temperature (teachers[].classes)."""
    return torch.stack([pool[n].student_logits(split, temperature) for n in names])
