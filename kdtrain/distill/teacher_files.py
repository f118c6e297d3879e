"""Teachers made elsewhere, read from their files: a logits file (checked for the data's order), an ONNX model
(its logits computed once with ONNX Runtime), a TorchScript file, a state-dict checkpoint; each problem one
DataError naming the file; and a teacher's weights (a checkpoint or an MLflow model URI) loaded into its arch.
kdtrain.distill.teachers caches what these give."""

from __future__ import annotations

import contextlib
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdtrain.data.datasets import Dataset
from kdtrain.data.sources import read_arrays
from kdtrain.distill import nets, references
from kdtrain.distill.losses import map_logits
from kdtrain.errors import DataError, KdtrainError, first_line
from kdtrain.schema import TeacherConfig


def viewed(x: torch.Tensor, view) -> torch.Tensor:
    """x (the student's normalised inputs) as the teacher's own data would have it: x * scale + shift per channel."""
    if view is None:
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale, shift = (torch.tensor(v, dtype=x.dtype, device=x.device).reshape(shape) for v in view)
    return x * scale + shift


def read_checkpoint(ref: str) -> dict:
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


def file_of(t: TeacherConfig, key: str) -> str:
    return f"teachers ({t.name}).{key} {Path(getattr(t, key)).expanduser().resolve()}"


def columns(t: TeacherConfig, data: Dataset, got: int, where: str) -> None:
    """A file teacher's logits have one column per class: the student's classes, or with teachers[].classes any
    number (the mapping's indices are checked against it)."""
    if t.classes is None and got != data.num_classes:
        raise DataError(
            f"{where}: {got} logits per sample, this data has {data.num_classes} classes (map the "
            "teacher's classes to the student's with teachers[].classes)"
        )


def file_logits(t: TeacherConfig, data: Dataset) -> dict[str, torch.Tensor]:
    """A logits file's rows, split as the data is: 'train' holds the source's training rows in their order (the
    validation rows are carved from them here), 'test' the test rows."""
    where = file_of(t, "logits")
    if not Path(t.logits).expanduser().is_file():
        raise DataError(f"{where}: no such file")
    d = read_arrays(Path(t.logits).expanduser().resolve(), f"teachers ({t.name}).logits")
    missing = [k for k in ("train", "test") if k not in d]
    if missing:
        raise DataError(
            f"{where}: missing array(s) {', '.join(missing)} (a logits file holds train and test, one "
            f"row of {data.num_classes} logits per sample; it has {', '.join(map(str, d)) or 'nothing'})"
        )
    out = {}
    for split, rows in (("train", data.source_rows), ("test", len(data.y_test))):
        a = torch.as_tensor(d[split]).float() if not isinstance(d[split], torch.Tensor) else d[split].float()
        cols = a.shape[1] if a.ndim == 2 else -1
        if (
            a.ndim != 2
            or a.shape[0] != rows
            or (t.classes is None and cols != data.num_classes)
            or (split == "test" and cols != out["train"].shape[1])
        ):
            need = f"({rows}, {data.num_classes})" if t.classes is None else f"({rows}, teacher classes)"
            raise DataError(
                f"{where}: {split} has shape {tuple(a.shape)}, the data needs {need}: one row of logits "
                f"per {split} sample, one column per class"
            )
        if not torch.isfinite(a).all():
            raise DataError(f"{where}: {split} holds NaN or infinite values")
        out[split] = a
    train = out["train"]
    return {
        "train": train[torch.as_tensor(data.train_rows)],
        "val": train[torch.as_tensor(data.val_rows)],
        "test": out["test"],
    }


def check_order(t: TeacherConfig, logits: dict[str, torch.Tensor], groups, data: Dataset, log: Callable[[str], None]):
    """Print a logits teacher's accuracy; refuse one that agrees with the labels no better than it would with
    the rows shuffled (its rows are then almost surely in another order than the data's)."""
    y = data.y_train.cpu()
    labelled = y >= 0  # data.labels: only these rows have a label to agree with
    pred, y = map_logits(logits["train"], groups, 1.0).argmax(1)[labelled], y[labelled]
    accuracy = (pred == y).float().mean().item()
    k = data.num_classes
    shuffled = float(
        torch.bincount(pred, minlength=k).float() / len(y) @ (torch.bincount(y, minlength=k).float() / len(y))
    )
    log(
        f"teacher {t.name}: logits file agrees with the labels on {accuracy:.1%} of the training rows "
        f"(rows in a random order would agree on about {shuffled:.1%})"
    )
    if accuracy - shuffled < 0.1:
        raise DataError(
            f"{file_of(t, 'logits')}: the logits agree with the labels on {accuracy:.1%} of the training "
            f"rows, about what shuffled rows would ({shuffled:.1%}): rows not in the data's order? (the "
            "train rows follow the data's training set, before kdtrain carves its validation split)"
        )


def onnx_logits(t: TeacherConfig, data: Dataset, threads: int, view=None) -> dict[str, torch.Tensor]:
    """An ONNX teacher's logits on each split, run once with ONNX Runtime."""
    from kdtrain.deploy.export import onnx_session

    where = file_of(t, "weights")
    if not Path(t.weights).expanduser().is_file():
        raise DataError(f"{where}: no such file")
    try:
        sess = onnx_session(Path(t.weights).expanduser(), max(1, threads))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: not a readable ONNX model ({first_line(e)})") from None
    inp = sess.get_inputs()[0]
    names = [o.name for o in sess.get_outputs()]
    if t.output is None:
        which = 0
    elif type(t.output) is int and t.output < len(names):
        which = t.output
    elif t.output in names:
        which = names.index(t.output)
    else:
        raise DataError(f"{where}: output {t.output!r} is not among the model's outputs ({', '.join(names)})")
    fixed = [d if isinstance(d, int) else None for d in inp.shape]
    sample = tuple(data.input_shape)
    if len(fixed) != len(sample) + 1 or any(f is not None and f != s for f, s in zip(fixed[1:], sample, strict=False)):
        raise DataError(f"{where}: takes inputs of shape {tuple(inp.shape)}, the data's samples are {sample}")
    batch = fixed[0] or 1024
    out = {}
    for split in ("train", "val", "test"):
        x = viewed(getattr(data, f"x_{split}").cpu(), view).numpy()
        parts = []
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            if fixed[0] and len(chunk) < batch:  # a fixed batch size: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *sample), np.float32)])
            try:
                parts.append(sess.run(None, {inp.name: chunk})[which][: len(x[i : i + batch])])
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{where}: failed on the data ({first_line(e)})") from None
        out[split] = torch.from_numpy(np.concatenate(parts)).float()
        if out[split].ndim != 2 or len(out[split]) != len(x):
            raise DataError(
                f"{where}: returns {tuple(out[split].shape[1:])} per sample; a classifier returns one logit per class"
            )
        columns(t, data, out[split].shape[1], where)
    return out


@contextlib.contextmanager
def torchscript_quiet():
    with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; users still export it
        warnings.simplefilter("ignore", FutureWarning)
        yield


def jit_load(path: Path) -> nn.Module:
    with torchscript_quiet():
        return torch.jit.load(str(path), map_location="cpu")


def torchscript(t: TeacherConfig, data: Dataset, view=None) -> nn.Module:
    try:
        model = pick(t, jit_load(Path(t.weights).expanduser()))
    except (RuntimeError, ValueError) as e:
        raise DataError(f"{file_of(t, 'weights')}: not a loadable TorchScript file ({first_line(e)})") from None
    try:
        with torch.no_grad():
            out = model.eval()(viewed(data.x_val[:2].cpu(), view))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{file_of(t, 'weights')}: does not run on the data's samples of shape "
            f"{tuple(data.input_shape)} ({first_line(e)})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise DataError(
            f"{file_of(t, 'weights')}: returns {getattr(out, 'shape', type(out).__name__)} for 2 "
            f"samples; a classifier returns (batch, classes)"
        )
    columns(t, data, out.shape[1], file_of(t, "weights"))
    return model


def pick(t: TeacherConfig, model: nn.Module) -> nn.Module:
    """The model seen through teachers[].output (unchanged without one)."""
    return nets.PickOutput(model, t.output, f"teachers ({t.name}).output") if t.output is not None else model


def inner(model: nn.Module | None) -> nn.Module | None:
    """The model inside pick's wrapper: what a checkpoint loads into and a TorchScript file holds."""
    return model.model if isinstance(model, nets.PickOutput) else model


LoadURI = Callable[[str], dict]
"""URI (runs:/..., models:/...) -> state dict; given by the caller (the tracking wing's load_state_dict), so that
the teacher cache itself knows nothing of MLflow."""
URI_SCHEMES = ("runs", "models", "mlflow-artifacts", "s3", "gs", "http", "https")


def load_weights(t: TeacherConfig, model: nn.Module, load_uri: LoadURI | None) -> str:
    """Load teachers[].weights into model; returns the source kind."""
    ref = t.weights
    if ref.split(":", 1)[0] in URI_SCHEMES:
        if load_uri is None:
            raise KdtrainError(
                f"teacher {t.name!r}: weights {ref} is a model URI; load the pool through "
                "kdtrain.load_pool, which reads MLflow models"
            )
        state, source = references.state(ref, load_uri) if references.moving(ref) else load_uri(ref), "mlflow"
    else:
        state, source = read_checkpoint(ref), "checkpoint"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:4]
        raise KdtrainError(
            f"teacher {t.name!r}: weights {ref} do not fit arch {t.arch} at width {t.width}: " + " ".join(lines)[:400]
        ) from None
    return source
