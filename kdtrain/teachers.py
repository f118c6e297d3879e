"""The teacher pool: trained (or loaded) once, cached by content, logits reused.

A teacher's cache key is a hash of its own config, the data config and the
training settings that shape it, so changing any of them trains a new teacher
and a second call with the same settings trains nothing. Beside the weights
sit the teacher's logits on train / val / test: every student trial reuses
them instead of running the teacher again.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdtrain import models
from kdtrain.config import Config, KdtrainError, TeacherConfig, home
from kdtrain.data import Dataset
from kdtrain.shared import atomic_dir, content_key
from kdtrain.train import EpochStats, predict, resolve_device, seed_all, train

CACHE_VERSION = 1
MODEL_FILE, LOGITS_FILE, META_FILE = "model.pt", "logits.pt", "meta.json"
"""A cache entry's files (a folder per teacher; also the `teacher/` artifact of its MLflow run)."""


@dataclass
class Teacher:
    name: str
    config: TeacherConfig
    model: nn.Module
    """The teacher on the CPU in eval mode."""
    logits: dict[str, torch.Tensor]
    """Float32 logits on 'train', 'val' and 'test', in the dataset's order."""
    params: int
    val_accuracy: float
    test_accuracy: float
    source: str
    """Where it came from this time: 'cache', 'trained', 'checkpoint' or 'mlflow'."""
    seconds: float
    """Time spent producing it on the run that first made it (training, loading)."""
    key: str
    path: Path

    @property
    def cached(self) -> bool:
        return self.source == "cache"


def _weights_identity(ref: str) -> dict:
    """What identifies a weights source: a file's size and mtime, or a URI as is."""
    p = Path(ref).expanduser()
    if p.exists():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"uri": ref}


def teacher_key(t: TeacherConfig, cfg: Config) -> str:
    data = dataclasses.asdict(cfg.data)
    for k in ("root", "download"):  # where files live does not change the teacher
        data.pop(k)
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
    if t.weights:
        ident["weights"] = _weights_identity(t.weights)
    return content_key(ident)


def cache_dir(t: TeacherConfig, cfg: Config) -> Path:
    return home() / "cache" / "teachers" / f"{t.name}-{teacher_key(t, cfg)}"


def is_cached(t: TeacherConfig, cfg: Config) -> bool:
    return (cache_dir(t, cfg) / META_FILE).exists()


def _read_checkpoint(ref: str) -> dict:
    p = Path(ref).expanduser()
    if not p.exists():
        raise KdtrainError(f"teacher checkpoint {p} does not exist (teachers[].weights)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdtrainError(f"teacher checkpoint {p} is not a readable PyTorch state dict ({first[:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdtrainError(f"teacher checkpoint {p} does not hold a state dict of tensors")
    return state


LoadURI = Callable[[str], dict]
"""URI (runs:/..., models:/...) -> state dict; given by the caller (kdtrain.tracking.load_state_dict), so that
the teacher cache itself knows nothing of MLflow."""
URI_SCHEMES = ("runs", "models", "mlflow-artifacts", "s3", "gs", "http", "https")


def _load_weights(t: TeacherConfig, model: nn.Module, load_uri: LoadURI | None) -> str:
    """Load teachers[].weights into model; returns the source kind."""
    ref = t.weights
    if ref.split(":", 1)[0] in URI_SCHEMES:
        if load_uri is None:
            raise KdtrainError(f"teacher {t.name!r}: weights {ref} is a model URI; load the pool through "
                               "kdtrain.worker.load_pool, which reads MLflow models")
        state, source = load_uri(ref), "mlflow"
    else:
        state, source = _read_checkpoint(ref), "checkpoint"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:4]
        raise KdtrainError(f"teacher {t.name!r}: weights {ref} do not fit arch {t.arch} at width {t.width}: "
                           + " ".join(lines)[:400]) from None
    return source


def _save_atomic(folder: Path, model: nn.Module, logits: dict, meta: dict) -> None:
    with atomic_dir(folder) as tmp:  # another process may finish the same teacher first: either copy will do
        torch.save(model.state_dict(), tmp / MODEL_FILE)
        torch.save(logits, tmp / LOGITS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def _from_cache(t: TeacherConfig, cfg: Config, data: Dataset, folder: Path) -> Teacher | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
        state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        logits = torch.load(folder / LOGITS_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError):
        return None  # missing or damaged: train again
    model = models.from_config(t, data.input_shape, data.num_classes)
    model.load_state_dict(state)
    return Teacher(t.name, t, model.eval(), logits, models.count_params(model), meta["val_accuracy"],
                   meta["test_accuracy"], "cache", meta["seconds"], folder.name.rsplit("-", 1)[1], folder)


def get_teacher(t: TeacherConfig, cfg: Config, data: Dataset, log: Callable[[str], None] = print,
                on_epoch: Callable[[EpochStats], None] | None = None, load_uri: LoadURI | None = None) -> Teacher:
    """Return a teacher from the cache, or train / load it and cache it."""
    folder = cache_dir(t, cfg)
    hit = _from_cache(t, cfg, data, folder)
    if hit is not None:
        return hit

    start = time.perf_counter()
    seed_all(cfg.train.seed)
    model = models.from_config(t, data.input_shape, data.num_classes)
    if t.weights:
        source = _load_weights(t, model, load_uri)
        log(f"teacher {t.name}: loaded weights from {t.weights}")
    else:
        epochs = t.epochs if t.epochs is not None else cfg.train.epochs
        log(f"teacher {t.name}: training {t.arch} (width {t.width}, {models.count_params(model):,} params) "
            f"for {epochs} epochs")
        source = "trained"
        if epochs > 0:
            model = train(model, data, cfg.train, augment_kinds=cfg.data.augment, on_epoch=on_epoch,
                          epochs=epochs, lr=t.lr).model
    device = resolve_device(cfg.train.device)
    model.to(device)
    bs, bf16 = cfg.train.eval_batch_size, cfg.train.bf16
    logits = {split: predict(model, getattr(data, f"x_{split}").to(device), bs, bf16).cpu()
              for split in ("train", "val", "test")}
    model.cpu().eval()
    val_acc = (logits["val"].argmax(1) == data.y_val).float().mean().item()
    test_acc = (logits["test"].argmax(1) == data.y_test).float().mean().item()
    seconds = time.perf_counter() - start
    meta = {"name": t.name, "config": dataclasses.asdict(t), "params": models.count_params(model),
            "val_accuracy": val_acc, "test_accuracy": test_acc, "seconds": seconds, "source": source}
    _save_atomic(folder, model, logits, meta)
    return Teacher(t.name, t, model, logits, models.count_params(model), val_acc, test_acc, source, seconds,
                   folder.name.rsplit("-", 1)[1], folder)


def check_weights(cfg: Config, data: Dataset, names: list[str], load_uri: LoadURI | None = None) -> None:
    """Load every not-yet-cached teacher's weights file into its arch, so that a corrupt or ill-fitting
    checkpoint is reported before any other teacher spends time training."""
    for name in names:
        t = cfg.teacher(name)
        if t.weights and not is_cached(t, cfg):
            _load_weights(t, models.from_config(t, data.input_shape, data.num_classes), load_uri)


def load_pool(cfg: Config, data: Dataset, names: list[str] | None = None,
              log: Callable[[str], None] = print, on_epoch: Callable[[str, EpochStats], None] | None = None,
              load_uri: LoadURI | None = None) -> dict[str, Teacher]:
    """The named teachers (default: the whole pool), each cached or trained."""
    wanted = names if names is not None else [t.name for t in cfg.teachers]
    check_weights(cfg, data, wanted, load_uri)
    pool = {}
    for name in wanted:
        t = cfg.teacher(name)
        cb = (lambda s, n=name: on_epoch(n, s)) if on_epoch else None
        pool[name] = get_teacher(t, cfg, data, log=log, on_epoch=cb, load_uri=load_uri)
    return pool


def stacked_logits(pool: dict[str, Teacher], names: list[str], split: str = "train") -> torch.Tensor:
    """(K, N, C) logits of the named teachers on a split."""
    return torch.stack([pool[n].logits[split] for n in names])
