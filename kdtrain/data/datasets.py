"""Dataset registry: name -> in-memory tensors (train / val / test), shape, classes.

Everything is small enough to live in memory (and on the GPU): the trainer
indexes these tensors directly, no DataLoader. The validation split is carved
from the training set with a fixed seed; the test split is only ever reported.
"""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdtrain.data import classmap, rows, scarce, sources
from kdtrain.errors import DataError, KdtrainError
from kdtrain.lazy import Module
from kdtrain.paths import data_root
from kdtrain.schema import DataConfig, sub_data
from kdtrain.shared import atomic_write_bytes, content_key

torch = Module("torch")  # imported on first use: the registry's names need none of it


@dataclass
class Dataset:
    """A dataset in memory: train, validation and test tensors (on the device the trainer uses), the input shape, the
    number of classes and their names; ``note`` says what loading it did (a subset, labels hidden, ...)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    """Shape of one sample, without the batch dimension: (C, L) or (C, H, W)."""
    num_classes: int
    class_names: list[str]
    mean: list[float]
    """Per-channel mean subtracted from raw inputs (for deployment cards)."""
    std: list[float]
    """Per-channel std the centred inputs were divided by."""
    scale: float = 1.0
    """Raw inputs (pixels 0-255, ...) are multiplied by this before normalisation."""
    train_rows: np.ndarray | None = None
    """Which rows of the source's training set are x_train (the rest of the carve: val_rows); a teacher's
    logits file is indexed with them."""
    val_rows: np.ndarray | None = None
    source_rows: int = 0
    """Rows of the source's training set before the carve (and before data.limit)."""
    note: str = ""
    """What loading did worth saying (a folder decoded or read from its cache, ignored columns)."""
    labelled_rows: int = -1
    """Training rows with a label (data.labels); -1: all of them (set in __post_init__)."""
    transfer_rows: int = 0
    """Training rows from the transfer set data.unlabeled (the last rows of x_train), unlabelled."""
    keys: dict | None = None
    """Each row's content key (kdtrain.data.rows) per split, 'train', 'val' and 'test', in the tensors' order: a teacher's
    data is checked against the student's rows with them."""

    def __post_init__(self):
        if self.labelled_rows < 0:
            self.labelled_rows = int((self.y_train >= 0).sum())

    @property
    def unlabelled_rows(self) -> int:
        """Training rows without a label: the unlabelled part of the training split plus the transfer set."""
        return len(self.y_train) - self.labelled_rows

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std shaped to broadcast over x's channels, on x's device and dtype."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return tuple(torch.tensor(v, dtype=x.dtype, device=x.device).reshape(shape) for v in (self.mean, self.std))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Undo this data's normalisation (to renormalise its inputs for a teacher trained on other data)."""
        mean, std = self._stats(x)
        return x * std + mean

    def normalized(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw inputs normalised as this data's own (a teacher sees the student's rows through this)."""
        mean, std = self._stats(raw)
        return (raw - mean) / std

    def to(self, device: torch.device | str) -> Dataset:
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Dataset(**fields)


Loader = Callable[[DataConfig], "tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]"]
DATASETS: dict[str, Loader] = {}


def register(name: str):
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- loaders
# Each returns raw (x_train, y_train, x_test, y_test, class_names); x as float32
# arrays (N, C, L) or (N, C, H, W) in their natural scale.

DIGIT_NAMES = [str(i) for i in range(10)]


@register("mnist1d")
def _mnist1d(cfg: DataConfig):
    # Generating 5000 samples takes ~3 s, so the result is cached on disk.
    opts = f"_{content_key(cfg.options)}" if cfg.options else ""  # data.options: another generator, another file
    path = data_root(cfg) / "mnist1d" / f"mnist1d_n{cfg.size}_seed{cfg.seed}{opts}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = cfg.size, cfg.seed
        for k, v in (cfg.options or {}).items():  # noise, shear, scale, translation: a shifted domain
            setattr(args, k, int(v) if k == "max_translation" else v)
        # mnist1d seeds numpy's and random's global generators; keep the caller's state.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        atomic_write_bytes(path, buf.getvalue())  # two workers on a cold data root: each writes its own temp file
    with np.load(path) as z:
        f = lambda a: a.astype(np.float32)[:, None, :]  # noqa: E731  (N, 1, 40)
        return f(z["x"]), z["y"].astype(np.int64), f(z["x_test"]), z["y_test"].astype(np.int64), DIGIT_NAMES


@register("digits")
def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :] / 16.0  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(cfg.seed).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test], DIGIT_NAMES


@register("synthetic")
def _synthetic(cfg: DataConfig):
    """Gaussian clusters in 1x16 signals: learnable in a few epochs, for fast tests. data.options (noise: the
    samples' spread, 0.8; spread: the centres', 1.0) fixes the class centres (seed 0), so that sections with
    options pose one task, data.seed drawing only the samples: a shifted domain is the same task, noisier."""
    g = np.random.default_rng(cfg.seed)
    classes, length = 4, 16
    opts = {"noise": 0.8, "spread": 1.0, **(cfg.options or {})}
    centers = (
        np.random.default_rng(0).normal(0, opts["spread"], size=(classes, 1, length)).astype(np.float32)
        if cfg.options
        else g.normal(0, 1.0, size=(classes, 1, length)).astype(np.float32)
    )
    n = cfg.size + cfg.size // 4
    y = g.integers(0, classes, size=n)
    x = centers[y] + g.normal(0, opts["noise"], size=(n, 1, length)).astype(np.float32)
    return (
        x[: cfg.size],
        y[: cfg.size].astype(np.int64),
        x[cfg.size :],
        y[cfg.size :].astype(np.int64),
        [f"class{i}" for i in range(classes)],
    )


def _missing(name: str, where: Path) -> KdtrainError:
    return KdtrainError(
        f"dataset {name!r} not found under {where}. Put its files there (data.root), "
        f"or allow the download with --set data.download=true (needs network)."
    )


def _torchvision_mnist(cls_name: str, cfg: DataConfig):
    import torchvision

    root = data_root(cfg)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as e:
        if "not found" in str(e).lower():
            raise _missing(cfg.name, root / cls_name / "raw") from None
        raise
    except OSError as e:  # download attempted without network
        raise KdtrainError(f"could not download {cfg.name} into {root}: {e}") from None
    f = lambda t: t.numpy().astype(np.float32)[:, None, :, :] / 255.0  # noqa: E731
    return (
        f(train.data),
        train.targets.numpy().astype(np.int64),
        f(test.data),
        test.targets.numpy().astype(np.int64),
        list(train.classes),
    )


@register("mnist")
def _mnist(cfg: DataConfig):
    return _torchvision_mnist("MNIST", cfg)


@register("fashion_mnist")
def _fashion_mnist(cfg: DataConfig):
    return _torchvision_mnist("FashionMNIST", cfg)


def _read_cifar(folder: Path, train_files: list[str], test_file: str, label_key: str, meta: tuple[str, str]):
    """Read the CIFAR python pickles (the format torchvision downloads) directly."""

    def read(name):
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return x, np.asarray(entry[label_key], dtype=np.int64)

    parts = [read(f) for f in train_files]
    x_test, y_test = read(test_file)
    with open(folder / meta[0], "rb") as fh:
        names = pickle.load(fh, encoding="latin1")[meta[1]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test, names


def _cifar(cfg: DataConfig, cls_name: str, folder: str, train_files, test_file, label_key, meta):
    root = data_root(cfg)
    needed = [root / folder / f for f in [*train_files, test_file, meta[0]]]
    if not all(p.exists() for p in needed):
        if not cfg.download:
            raise _missing(cfg.name, root / folder)
        import torchvision

        try:  # torchvision downloads, checks the archive's md5 and extracts
            getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
        except OSError as e:
            raise KdtrainError(f"could not download {cfg.name} into {root}: {e}") from None
    try:
        return _read_cifar(root / folder, train_files, test_file, label_key, meta)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise KdtrainError(
            f"dataset {cfg.name!r} under {root / folder} is unreadable ({e}); delete the folder and download again"
        ) from None


@register("cifar10")
def _cifar10(cfg: DataConfig):
    return _cifar(
        cfg,
        "CIFAR10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
        ("batches.meta", "label_names"),
    )


@register("cifar100")
def _cifar100(cfg: DataConfig):
    return _cifar(cfg, "CIFAR100", "cifar-100-python", ["train"], "test", "fine_labels", ("meta", "fine_label_names"))


DATASETS.update(sources.SOURCES)  # the user's own data: folder, arrays, csv, python

# --------------------------------------------------------------------------- assembly

RAW_SCALE = {
    "digits": 1 / 16,
    "mnist": 1 / 255,
    "fashion_mnist": 1 / 255,
    "cifar10": 1 / 255,
    "cifar100": 1 / 255,
    **sources.RAW_SCALE,
}
"""What each loader multiplied raw values by (for deployment cards)."""


UNLABELLED = -1
"""y_train of a row without a label (data.labels, data.unlabeled): cross-entropy skips it, distillation uses it."""


def load(cfg: DataConfig) -> Dataset:
    """Load a dataset, carve the validation split, normalise with train statistics (or data.mean / data.std).

    With data.classes the labels are remapped first; with data.labels only that many training rows keep their
    label (the validation split is carved from them) and the rest are UNLABELLED; data.unlabeled's rows are
    appended to the training split, UNLABELLED, normalised with the same statistics."""
    if cfg.name not in DATASETS:
        raise KdtrainError(f"unknown dataset {cfg.name!r} (known: {', '.join(DATASETS)})")
    x, y, x_test, y_test, names, *note = DATASETS[cfg.name](cfg)
    notes = [note[0]] if note and note[0] else []
    if cfg.classes is not None:
        x, y, x_test, y_test, names = _relabel(cfg.classes, x, y, x_test, y_test, list(names))
    val_idx, train_idx, labelled = _split_rows(cfg, y, len(names))
    x_train, y_train, x_val, y_val = x[train_idx], np.where(labelled, y[train_idx], UNLABELLED), x[val_idx], y[val_idx]

    mean, std = _statistics(cfg, x_train)
    keys, test_keys = rows.keys(x), rows.keys(x_test)
    train_keys = keys[train_idx]
    transfer = 0
    if cfg.unlabeled is not None:
        x_u, keys_u, note_u = transfer_inputs(cfg, tuple(x.shape[1:]), np.concatenate([keys[val_idx], test_keys]))
        transfer, train_keys = len(x_u), np.concatenate([train_keys, keys_u])
        x_train = np.concatenate([x_train, x_u])
        y_train = np.concatenate([y_train, np.full(transfer, UNLABELLED, y_train.dtype)])
        notes.append(note_u)
    if cfg.labels is not None or transfer:
        notes.append(
            f"labels: {int(labelled.sum())} rows to train on, {len(val_idx)} to select on, "
            f"{int((~labelled).sum()) + transfer} unlabelled"
            + (f" ({transfer} of them transfer data)" if transfer else "")
        )
    norm = lambda a: torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))  # noqa: E731
    return Dataset(
        x_train=norm(x_train),
        y_train=torch.from_numpy(y_train),
        x_val=norm(x_val),
        y_val=torch.from_numpy(y_val),
        x_test=norm(x_test),
        y_test=torch.from_numpy(y_test),
        input_shape=tuple(x.shape[1:]),
        num_classes=len(names),
        class_names=list(names),
        mean=mean.reshape(-1).tolist(),
        std=std.reshape(-1).tolist(),
        scale=RAW_SCALE.get(cfg.name, 1.0),
        train_rows=train_idx,
        val_rows=val_idx,
        source_rows=len(y),
        note="; ".join(notes),
        labelled_rows=int(labelled.sum()),
        transfer_rows=transfer,
        keys={"train": train_keys, "val": keys[val_idx], "test": test_keys},
    )


def _split_rows(cfg: DataConfig, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation rows, training rows, which training rows keep their label): data.val_fraction of the rows drawn
    with data.seed, or data.labels' stratified few (kdtrain.data.scarce); data.limit keeps the first training rows."""
    if cfg.labels is None:
        perm = np.random.default_rng(cfg.seed).permutation(len(y))
        n_val = max(1, round(len(y) * cfg.val_fraction))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        labelled = np.ones(len(train_idx), bool)
    else:
        val_idx, train_idx, labelled = scarce.scarce_split(y, classes, cfg)
    if cfg.limit is not None:
        train_idx, labelled = train_idx[: cfg.limit], labelled[: cfg.limit]
    return val_idx, train_idx, labelled


def _statistics(cfg: DataConfig, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std, shaped to broadcast over rows: data.mean / data.std, else the training rows'
    (data.normalize), else none (0 and 1)."""
    axes = (0, *range(2, x_train.ndim))  # per channel
    channels = (1, x_train.shape[1]) + (1,) * (x_train.ndim - 2)
    if cfg.mean is not None:
        if len(cfg.mean) not in (1, x_train.shape[1]) or len(cfg.std) not in (1, x_train.shape[1]):
            raise DataError(
                f"data.mean / data.std: {len(cfg.mean)} and {len(cfg.std)} values for data with "
                f"{x_train.shape[1]} channel(s); give one value per channel (or one for all)"
            )
        mean = np.broadcast_to(np.asarray(cfg.mean, np.float32).reshape(-1, *channels[2:]), channels[1:])[None]
        std = np.broadcast_to(np.asarray(cfg.std, np.float32).reshape(-1, *channels[2:]), channels[1:])[None]
    elif cfg.normalize:
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True) + 1e-8
    else:
        mean = np.zeros(channels, np.float32)
        std = np.ones_like(mean)
    return mean, std


def _relabel(spec, x, y, x_test, y_test, names: list[str]):
    """data.classes: every label through the mapping; a list's left-out classes drop their rows."""
    new, new_names = classmap.relabel(spec, names)
    lookup = np.array([-1 if v is None else v for v in new], np.int64)
    keep, keep_test = lookup[y] >= 0, lookup[y_test] >= 0
    return x[keep], lookup[y[keep]], x_test[keep_test], lookup[y_test[keep_test]], new_names


def transfer_inputs(cfg: DataConfig, shape: tuple, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """data.unlabeled's raw inputs (the loaders' natural scale), checked against the data's sample shape, less its
    rows that are the student's validation or test rows (`held_out`: their content keys): put back into training,
    unlabelled, they would be distilled on before they are selected or scored on. With their content keys."""
    sub = sub_data(cfg.unlabeled, cfg)
    if sub.name in sources.INPUT_SOURCES:
        x, said = sources.INPUT_SOURCES[sub.name](sub)
    else:
        x, _, _, _, _, *_rest = DATASETS[sub.name](sub)
        said = f"its labels are ignored ({sub.name} is labelled)"
    if tuple(x.shape[1:]) != shape:
        raise DataError(
            f"data.unlabeled ({sub.name}): samples of shape {tuple(x.shape[1:])}, but the data's "
            f"samples are {shape}; a transfer set holds inputs like the student's"
        )
    keys = rows.keys(x)
    fresh = ~np.isin(keys, held_out)
    if not fresh.all():
        said += ("; " if said else "") + (
            f"{int((~fresh).sum())} of its {len(x)} rows are the student's validation or test rows and were dropped "
            "(give data.unlabeled another seed or other files than data's)"
        )
    return (
        x[fresh],
        keys[fresh],
        f"transfer set {sub.name}: {int(fresh.sum())} unlabelled rows" + (f"; {said}" if said else ""),
    )


def identity(cfg: DataConfig) -> str | None:
    """What the user's data holds (its files' content), for cache keys and study settings; None for the built-in
    datasets, which their settings identify."""
    own = sources.identity(cfg)
    if cfg.unlabeled is None:
        return own
    return f"{own}+unlabeled:{sources.inputs_identity(sub_data(cfg.unlabeled, cfg))}"


AUGMENTATIONS = ("crop", "flip")
"""data.augment: what augment() does (flip only to images)."""


def augment(x: torch.Tensor, kinds: list[str], generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop (zero pad then crop back, per sample) and horizontal flip, on tensors.

    Works on (N, C, L) signals and (N, C, H, W) images on any device: one pad and
    one gather, so it costs about as much as a copy of the batch.
    """
    if not kinds:
        return x
    dev = x.device
    n = x.shape[0]
    if "crop" in kinds:
        spatial = x.shape[2:]
        padded = torch.nn.functional.pad(x, (pad, pad) * len(spatial))
        idx = []
        for size in spatial:
            shift = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(dev)
            idx.append(shift[:, None] + torch.arange(size, device=dev)[None, :])
        if len(spatial) == 1:
            x = padded.gather(2, idx[0][:, None, :].expand(-1, x.shape[1], -1))
        else:
            rows = idx[0][:, None, :, None].expand(-1, x.shape[1], -1, padded.shape[3])
            x = padded.gather(2, rows)
            cols = idx[1][:, None, None, :].expand(-1, x.shape[1], x.shape[2], -1)
            x = x.gather(3, cols)
    if "flip" in kinds and x.ndim == 4:
        flip = torch.rand(n, generator=generator, device="cpu").to(dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
