"""The teacher pool: trained (or loaded) once, cached by content, logits reused.

A teacher's cache key is a hash of its own config, the data config and the
training settings that shape it, so changing any of them trains a new teacher
and a second call with the same settings trains nothing. Beside the weights
sit the teacher's logits on train / val / test: every student trial reuses
them instead of running the teacher again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kdtrain import models
from kdtrain.config import Config, KdtrainError, TeacherConfig, home
from kdtrain.config import DataError, first_line
from kdtrain.data import Dataset
from kdtrain.data import identity as data_identity
from kdtrain.sources import file_digest, read_arrays
from kdtrain.shared import atomic_dir, content_key
from kdtrain.train import EpochStats, predict, resolve_device, seed_all, train

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
    """Where it came from this time: 'cache', 'trained', 'checkpoint', 'mlflow', 'logits', 'onnx' or
    'torchscript'."""
    seconds: float
    """Time spent producing it on the run that first made it (training, loading)."""
    key: str
    path: Path

    @property
    def cached(self) -> bool:
        return self.source == "cache"

    @property
    def arch(self) -> str:
        """What the teacher is, for tables: its arch, or the file it comes from."""
        c = self.config
        if c.logits:
            return f"logits file {Path(c.logits).name}"
        if c.weights and (c.weights.endswith(".onnx") or isinstance(self.model, torch.jit.ScriptModule)):
            return f"{'ONNX' if c.weights.endswith('.onnx') else 'TorchScript'} file {Path(c.weights).name}"
        return c.arch

    @property
    def width(self) -> str:
        """Its width where its family has one, else '-'."""
        c = self.config
        return "-" if self.arch != c.arch or c.arch.startswith("torchvision:") else str(c.width)

    @property
    def described(self) -> str:
        return self.arch if self.width == "-" else f"{self.arch}, width {self.width}"

    @property
    def params_text(self) -> str:
        return f"{self.params:,}" if self.params is not None else "?"


def _weights_identity(ref: str) -> dict:
    """What identifies a weights source: a file's size and mtime, or a URI as is."""
    p = Path(ref).expanduser()
    if p.exists():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"uri": ref}


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
    if t.weights:
        ident["weights"] = _weights_identity(t.weights)
    if t.logits and Path(t.logits).expanduser().is_file():
        ident["logits"] = file_digest(t.logits)
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
        raise KdtrainError(f"teacher checkpoint {p} is not a readable PyTorch state dict ({first_line(e)})") from None
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


def _save_atomic(folder: Path, model: nn.Module | None, logits: dict, meta: dict) -> None:
    with atomic_dir(folder) as tmp:  # another process may finish the same teacher first: either copy will do
        if isinstance(model, torch.jit.ScriptModule):
            with _torchscript_quiet():
                torch.jit.save(model, str(tmp / MODEL_FILE))  # the module itself: no arch rebuilds it
        elif model is not None:
            torch.save(model.state_dict(), tmp / MODEL_FILE)
        torch.save(logits, tmp / LOGITS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def _from_cache(t: TeacherConfig, cfg: Config, data: Dataset, folder: Path) -> Teacher | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
        logits = torch.load(folder / LOGITS_FILE, map_location="cpu", weights_only=True)
        model = None
        if meta.get("source") == "torchscript":
            model = _jit_load(folder / MODEL_FILE)
        elif meta.get("source") not in ("logits", "onnx"):
            state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
            model = models.from_config(t, data.input_shape, data.num_classes)
            model.load_state_dict(state)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError):
        return None  # missing or damaged: train again
    return Teacher(t.name, t, model.eval() if model is not None else None, logits, meta["params"],
                   meta["val_accuracy"], meta["test_accuracy"], "cache", meta["seconds"], folder.name.rsplit("-", 1)[1],
                   folder)


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


def _where(t: TeacherConfig, key: str) -> str:
    return f"teachers ({t.name}).{key} {Path(getattr(t, key)).expanduser().resolve()}"


def _file_logits(t: TeacherConfig, data: Dataset) -> dict[str, torch.Tensor]:
    """A logits file's rows, split as the data is: 'train' holds the source's training rows in their order (the
    validation rows are carved from them here), 'test' the test rows."""
    where = _where(t, "logits")
    if not Path(t.logits).expanduser().is_file():
        raise DataError(f"{where}: no such file")
    d = read_arrays(Path(t.logits).expanduser().resolve(), f"teachers ({t.name}).logits")
    missing = [k for k in ("train", "test") if k not in d]
    if missing:
        raise DataError(f"{where}: missing array(s) {', '.join(missing)} (a logits file holds train and test, one "
                        f"row of {data.num_classes} logits per sample; it has {', '.join(map(str, d)) or 'nothing'})")
    out = {}
    for split, rows in (("train", data.source_rows), ("test", len(data.y_test))):
        a = torch.as_tensor(d[split]).float() if not isinstance(d[split], torch.Tensor) else d[split].float()
        if tuple(a.shape) != (rows, data.num_classes):
            raise DataError(f"{where}: {split} has shape {tuple(a.shape)}, the data needs ({rows}, "
                            f"{data.num_classes}): one row of logits per {split} sample, one column per class")
        if not torch.isfinite(a).all():
            raise DataError(f"{where}: {split} holds NaN or infinite values")
        out[split] = a
    train = out["train"]
    return {"train": train[torch.as_tensor(data.train_rows)], "val": train[torch.as_tensor(data.val_rows)],
            "test": out["test"]}


def _check_order(t: TeacherConfig, logits: dict[str, torch.Tensor], data: Dataset, log: Callable[[str], None]):
    """Print a logits teacher's accuracy; refuse one that agrees with the labels no better than it would with
    the rows shuffled (its rows are then almost surely in another order than the data's)."""
    pred, y = logits["train"].argmax(1), data.y_train.cpu()
    accuracy = (pred == y).float().mean().item()
    k = data.num_classes
    shuffled = float((torch.bincount(pred, minlength=k).float() / len(y)
                      @ (torch.bincount(y, minlength=k).float() / len(y))))
    log(f"teacher {t.name}: logits file agrees with the labels on {accuracy:.1%} of the training rows "
        f"(rows in a random order would agree on about {shuffled:.1%})")
    if accuracy - shuffled < 0.1:
        raise DataError(f"{_where(t, 'logits')}: the logits agree with the labels on {accuracy:.1%} of the training "
                        f"rows, about what shuffled rows would ({shuffled:.1%}): rows not in the data's order? (the "
                        "train rows follow the data's training set, before kdtrain carves its validation split)")


def _onnx_logits(t: TeacherConfig, data: Dataset, threads: int) -> dict[str, torch.Tensor]:
    """An ONNX teacher's logits on each split, run once with ONNX Runtime."""
    from kdtrain.export import onnx_session

    where = _where(t, "weights")
    if not Path(t.weights).expanduser().is_file():
        raise DataError(f"{where}: no such file")
    try:
        sess = onnx_session(Path(t.weights).expanduser(), max(1, threads))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
        raise DataError(f"{where}: not a readable ONNX model ({first_line(e)})") from None
    inp = sess.get_inputs()[0]
    fixed = [d if isinstance(d, int) else None for d in inp.shape]
    sample = tuple(data.input_shape)
    if len(fixed) != len(sample) + 1 or any(f is not None and f != s for f, s in zip(fixed[1:], sample)):
        raise DataError(f"{where}: takes inputs of shape {tuple(inp.shape)}, the data's samples are {sample}")
    batch = fixed[0] or 1024
    out = {}
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}").cpu().numpy()
        parts = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            if fixed[0] and len(chunk) < batch:  # a fixed batch size: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *sample), np.float32)])
            try:
                parts.append(sess.run(None, {inp.name: chunk})[0][: len(x[i:i + batch])])
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{where}: failed on the data ({first_line(e)})") from None
        out[split] = torch.from_numpy(np.concatenate(parts)).float()
        if tuple(out[split].shape) != (len(x), data.num_classes):
            raise DataError(f"{where}: returns {tuple(out[split].shape[1:])} per sample; this data has "
                            f"{data.num_classes} classes")
    return out


@contextlib.contextmanager
def _torchscript_quiet():
    with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; users still export it
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _jit_load(path: Path) -> nn.Module:
    with _torchscript_quiet():
        return torch.jit.load(str(path), map_location="cpu")


def _torchscript(t: TeacherConfig, data: Dataset) -> nn.Module:
    try:
        model = _jit_load(Path(t.weights).expanduser())
    except (RuntimeError, ValueError) as e:
        raise DataError(f"{_where(t, 'weights')}: not a loadable TorchScript file "
                        f"({first_line(e)})") from None
    try:
        with torch.no_grad():
            out = model.eval()(data.x_val[:2].cpu())
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{_where(t, 'weights')}: does not run on the data's samples of shape "
                        f"{tuple(data.input_shape)} ({first_line(e)})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != (data.num_classes,):
        raise DataError(f"{_where(t, 'weights')}: returns {getattr(out, 'shape', type(out).__name__)} for 2 "
                        f"samples; this data has {data.num_classes} classes")
    return model


def _made(t: TeacherConfig, cfg: Config, data: Dataset, folder: Path, model, logits, source: str, start: float):
    """Cache a teacher made now and return it."""
    val_acc = (logits["val"].argmax(1) == data.y_val.cpu()).float().mean().item()
    test_acc = (logits["test"].argmax(1) == data.y_test.cpu()).float().mean().item()
    params = models.count_params(model) if model is not None else None
    if source == "onnx":
        from kdtrain.export import onnx_params

        params = onnx_params(Path(t.weights).expanduser())
    seconds = time.perf_counter() - start
    meta = {"name": t.name, "config": dataclasses.asdict(t), "params": params, "val_accuracy": val_acc,
            "test_accuracy": test_acc, "seconds": seconds, "source": source}
    _save_atomic(folder, model, logits, meta)
    return Teacher(t.name, t, model, logits, params, val_acc, test_acc, source, seconds,
                   folder.name.rsplit("-", 1)[1], folder)


def _predict_all(model: nn.Module, cfg: Config, data: Dataset) -> dict[str, torch.Tensor]:
    device = resolve_device(cfg.train.device)
    model.to(device)
    bs, bf16 = cfg.train.eval_batch_size, cfg.train.bf16
    logits = {split: predict(model, getattr(data, f"x_{split}").to(device), bs, bf16).cpu()
              for split in ("train", "val", "test")}
    model.cpu().eval()
    return logits


def get_teacher(t: TeacherConfig, cfg: Config, data: Dataset, log: Callable[[str], None] = print,
                on_epoch: Callable[[EpochStats], None] | None = None, load_uri: LoadURI | None = None) -> Teacher:
    """Return a teacher from the cache, or train / load it and cache it."""
    folder = cache_dir(t, cfg)
    hit = _from_cache(t, cfg, data, folder)
    if hit is not None:
        return hit

    start = time.perf_counter()
    how = kind(t)
    if how == "logits":
        logits = _file_logits(t, data)
        _check_order(t, logits, data, log)
        return _made(t, cfg, data, folder, None, logits, "logits", start)
    if how == "onnx":
        log(f"teacher {t.name}: computing its logits with ONNX Runtime from {t.weights}")
        return _made(t, cfg, data, folder, None, _onnx_logits(t, data, cfg.train.threads), "onnx", start)
    if how == "torchscript":
        log(f"teacher {t.name}: loaded TorchScript model {t.weights}")
        model = _torchscript(t, data)
        return _made(t, cfg, data, folder, model, _predict_all(model, cfg, data), "torchscript", start)
    seed_all(cfg.train.seed)
    model = models.from_config(t, data.input_shape, data.num_classes)
    if t.weights:
        source = _load_weights(t, model, load_uri)
        log(f"teacher {t.name}: loaded weights from {t.weights}")
    else:
        epochs = t.epochs if t.epochs is not None else cfg.train.epochs
        family = "" if t.arch.startswith("torchvision:") else f"width {t.width}, "
        log(f"teacher {t.name}: training {t.arch} ({family}{models.count_params(model):,} params) for {epochs} epochs")
        source = "trained"
        if epochs > 0:
            model = train(model, data, cfg.train, augment_kinds=cfg.data.augment, on_epoch=on_epoch,
                          epochs=epochs, lr=t.lr).model
    return _made(t, cfg, data, folder, model, _predict_all(model, cfg, data), source, start)


def check_weights(cfg: Config, data: Dataset, names: list[str], load_uri: LoadURI | None = None) -> None:
    """Read every not-yet-cached teacher's file (a checkpoint into its arch, a TorchScript model, a logits file's
    shapes), so that a corrupt or ill-fitting one is reported before any other teacher spends time training."""
    for name in names:
        t = cfg.teacher(name)
        if is_cached(t, cfg):
            continue
        how = kind(t)
        if how == "logits":
            _check_order(t, _file_logits(t, data), data, log=lambda line: None)
        elif how == "torchscript":
            _torchscript(t, data)
        elif how == "onnx" and not Path(t.weights).expanduser().is_file():
            raise DataError(f"{_where(t, 'weights')}: no such file")
        elif how == "weights":
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
