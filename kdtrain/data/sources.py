"""The user's own data: a folder of images, an arrays file, a CSV table, or a python factory.

Each source ends in the same raw arrays as the built-in datasets (x as float32 (N, C, L) or (N, C, H, W), y as
int64 class indices, class names) and goes through one check (kdtrain.data.checks.checked), so that a bad file is
one `DataError` naming the file and what is wrong, raised before anything is trained or written. A folder's images
are decoded once and cached as a tensor file keyed by the folder's listing (names, sizes, modification times).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np

from kdtrain import plugins
from kdtrain.data import checks
from kdtrain.errors import DataError, KdtrainError, first_line
from kdtrain.lazy import Module
from kdtrain.paths import data_root
from kdtrain.schema import DataConfig
from kdtrain.shared import atomic_write_bytes, content_key

torch = Module("torch")  # imported on first use

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_CACHE_VERSION = 2
decoded_images = 0
"""Images this process has decoded (a second run on the same folder decodes none: the tests read this)."""


def _split(n: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a source that has no test split of its own (data.test_fraction, data.seed)."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_test = max(1, round(n * cfg.test_fraction))
    return perm[n_test:], perm[:n_test]


def _path(cfg: DataConfig, key: str = "path") -> Path:
    return Path(getattr(cfg, key)).expanduser().resolve()


# --------------------------------------------------------------------------- arrays


def read_arrays(path: Path, what: str) -> dict:
    """A .npz or .pt file of named arrays -> {name: array}; one DataError when it cannot be read."""
    if path.suffix not in (".npz", ".pt", ".pth"):
        raise DataError(f"{what} {path}: expected a .npz (numpy.savez) or .pt (torch.save of a dict) file")
    if path.suffix == ".npz" and path.is_file() and not zipfile.is_zipfile(path):
        # np.load reads any other bytes as a pickle and would blame "pickled data" (an object array)
        raise DataError(f"{what} {path}: not a readable .npz file (not a zip archive, which numpy.savez writes)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        d = torch.load(path, map_location="cpu", weights_only=True)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(
                f"{what} {path}: holds Python objects (an object array); save labels and class "
                "names as string arrays, e.g. np.array(names, dtype=str)"
            ) from None
        raise DataError(f"{what} {path}: not a readable {path.suffix} file ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - the user's code failed; say where, once
        raise DataError(f"{what} {path}: not a readable {path.suffix} file ({first_line(e)})") from None
    if not isinstance(d, dict):
        raise DataError(f"{what} {path}: expected a dict of named arrays, got {type(d).__name__}")
    return d


def _arrays(cfg: DataConfig):
    path = _path(cfg)
    d = read_arrays(path, "data.path")
    missing = [k for k in ARRAY_KEYS if k not in d]
    if missing:
        raise DataError(
            f"data.path {path}: missing {', '.join(missing)} (an arrays file holds "
            f"{', '.join(ARRAY_KEYS)} and optionally class_names; it has {', '.join(map(str, d)) or 'nothing'})"
        )
    return checks.checked(*(d[k] for k in ARRAY_KEYS), d.get("class_names"), f"data.path {path}")


# --------------------------------------------------------------------------- csv


def _read_table(path: Path, label: str, what: str):
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"{what} {path}: not a readable CSV table ({first_line(e)})") from None
    if label not in df.columns:
        raise DataError(
            f"{what} {path}: no column {label!r} (columns: {', '.join(map(str, df.columns[:20]))}); "
            "set data.label to the label column"
        )
    features = [c for c in df.columns if c != label and pd.api.types.is_numeric_dtype(df[c])]
    if not features:
        raise DataError(f"{what} {path}: no numeric feature column besides {label!r}")
    empty = [str(c) for c in [*features, label] if df[c].isna().any()]
    if empty:
        raise DataError(f"{what} {path}: empty or non-numeric cells in column(s) {', '.join(empty[:10])}")
    y = df[label].to_numpy()
    if y.dtype.kind == "O":
        y = y.astype(str)
    ignored = [str(c) for c in df.columns if c != label and c not in features]
    return df[features].to_numpy(np.float32), y, [str(c) for c in features], ignored


def _csv(cfg: DataConfig):
    path = _path(cfg)
    x, y, features, ignored = _read_table(path, cfg.label, "data.path")
    if cfg.test_path:
        test = _path(cfg, "test_path")
        x_test, y_test, test_features, _ = _read_table(test, cfg.label, "data.test_path")
        if test_features != features:
            raise DataError(
                f"data.test_path {test}: feature columns differ from data.path's "
                f"({', '.join(sorted(set(features) ^ set(test_features))[:10])})"
            )
        if y.dtype.kind != y_test.dtype.kind and "U" in (y.dtype.kind, y_test.dtype.kind):
            y, y_test = y.astype(str), y_test.astype(str)
    else:
        train, test = _split(len(y), cfg)
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    out = checks.checked(x, y, x_test, y_test, None, f"data.path {path}")
    note = f"{len(features)} feature columns" + (
        f"; ignored non-numeric column(s) {', '.join(ignored)}" if ignored else ""
    )
    return (*out, note)


# --------------------------------------------------------------------------- folder of images


def _folder_listing(cfg: DataConfig) -> tuple[list[str], list[tuple[str, Path, int]], Path]:
    """(class names, [(split, file, class index)], root): train/<class>/ and test/<class>/, or <class>/ alone."""
    root = _path(cfg)
    if not root.is_dir():
        raise DataError(
            f"data.path {root}: not a folder (the folder source reads <class>/ or train/<class>/ "
            "and test/<class>/ folders of images)"
        )
    splits = [("train", root / "train"), ("test", root / "test")] if (root / "train").is_dir() else [("all", root)]
    subdirs = lambda d: sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))  # noqa: E731
    names = [p.name for p in subdirs(splits[0][1])]
    if splits[0][0] == "train" and not (root / "test").is_dir():
        splits = splits[:1]  # train/ alone: split by data.test_fraction
        splits[0] = ("all", root / "train")
    if len(names) < 2:
        raise DataError(
            f"data.path {splits[0][1]}: {len(names)} class folder(s) "
            f"({', '.join(names) or 'none'}); a classifier needs two or more, one folder of images each"
        )
    files = []
    for split, folder in splits:
        for d in subdirs(folder):
            if d.name not in names:
                raise DataError(
                    f"data.path {d}: class {d.name!r} has no folder under {splits[0][1]} "
                    "(every class needs training images)"
                )
            images = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images and split != "test":
                raise DataError(f"data.path {d}: no images ({', '.join(IMAGE_SUFFIXES)})")
            files += [(split, p, names.index(d.name)) for p in images]
    return names, files, root


def _decode(files: list[tuple[str, Path, int]], size: int) -> np.ndarray:
    """Decode every image once: (N, C, size, size) uint8, C = 1 (grayscale) or 3 (colour), one mode for all."""
    global decoded_images
    from PIL import Image, UnidentifiedImageError

    out, first = None, {}
    for i, (_, path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                kind = "grayscale" if len(img.getbands()) <= 2 and img.mode != "P" else "colour"
                first.setdefault(kind, (path, img.mode))
                if len(first) > 1:
                    (p1, m1), (p2, m2) = first["grayscale"], first["colour"]
                    raise DataError(
                        f"data.path: images of mixed modes: {p1} is {m1} (grayscale) but {p2} is "
                        f"{m2} (colour); convert them to one mode (all RGB or all L)"
                    )
                img = img.convert("L" if kind == "grayscale" else "RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"data.path: cannot decode image {path} ({first_line(e)})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(files), *a.shape), np.uint8)
        out[i] = a
        decoded_images += 1
    return out


def folder_key(cfg: DataConfig, listing: tuple | None = None) -> str:
    """The decoded folder's cache key: the listing (relative names, classes and each file's content) and image
    size. Content, not modification times: the same images written again (make_data.py run twice, a copy, a
    checkout) are the same data, for the cache and for a study's settings."""
    names, files, root = listing or _folder_listing(cfg)
    digests = _folder_digests(cfg, root, [p for _, p, _ in files])
    listing = [(split, str(p.relative_to(root)), digests[str(p.relative_to(root))], c) for split, p, c in files]
    return content_key({"version": FOLDER_CACHE_VERSION, "size": cfg.image_size, "names": names, "files": listing})


def _folder_digests(cfg: DataConfig, root: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 of each file under root by relative name, read again only for a file whose size or modification
    time changed since the last time (kept in the data root, one small JSON per folder)."""
    import json

    memo_file = data_root(cfg) / "folders" / f"digests-{content_key(str(root))}.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = {}, False
    for p in paths:
        rel, st = str(p.relative_to(root)), p.stat()
        seen = memo.get(rel)
        if not seen or seen[:2] != [st.st_size, st.st_mtime_ns]:
            memo[rel], changed = [st.st_size, st.st_mtime_ns, file_digest(p)], True
        out[rel] = memo[rel][2]
    if changed:  # written once the folder decodes (_folder): a bad folder leaves nothing behind
        _digest_memos[memo_file] = memo
    return out


_digest_memos: dict[Path, dict] = {}


def _save_digest_memos() -> None:
    import json

    while _digest_memos:
        memo_file, memo = _digest_memos.popitem()
        atomic_write_bytes(memo_file, json.dumps(memo).encode())


def _decoded(files: list[tuple[str, Path, int]], size: int, cache: Path, extra: dict) -> tuple[np.ndarray, str]:
    """The images decoded (uint8), from the cache file when it is there and readable, else decoded now and
    cached (with extra beside them); and what happened, in words."""
    t0 = time.perf_counter()
    try:
        x = torch.load(cache, map_location="cpu", weights_only=True)["x"].numpy()
        return x, f"{len(files)} images from the cache {cache}"
    except Exception:  # noqa: BLE001 - missing or damaged: decode again (and rewrite it)
        x = _decode(files, size)
        buf = io.BytesIO()
        torch.save({"x": torch.from_numpy(x), **extra}, buf)
        atomic_write_bytes(cache, buf.getvalue())  # two workers on a cold data root never share a temp file
        return x, f"decoded {len(files)} images to {size}x{size} in {time.perf_counter() - t0:.1f}s; cached in {cache}"


def _all_images(root: Path) -> list[tuple[str, Path, int]]:
    """Every image under root, in subfolders or not, as the folder listing's (split, file, class) rows."""
    return [("all", p, 0) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _folder(cfg: DataConfig):
    names, files, root = listing = _folder_listing(cfg)
    key = folder_key(cfg, listing)
    cache = data_root(cfg) / "folders" / f"{key}.pt"
    x, note = _decoded(files, cfg.image_size, cache, {"names": names})
    _save_digest_memos()
    x = x.astype(np.float32) / 255.0
    y = np.array([c for _, _, c in files], np.int64)
    split = np.array([s for s, _, _ in files])
    if (split == "test").any():
        train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    else:
        train, test = _split(len(y), cfg)
    return (*checks.checked(x[train], y[train], x[test], y[test], names, f"data.path {root}"), note)


# --------------------------------------------------------------------------- python factory

_factory_results: dict[str, tuple] = {}


def _call_factory(cfg: DataConfig, key: str) -> tuple[str, object]:
    """(how to name it, what it returned) for data.factory: the user's function called with the data section
    when it takes an argument; its own failure is one DataError naming it."""
    ref = cfg.factory.removeprefix(plugins.PREFIX)
    what = f"{key} {ref}"
    fn = plugins.load_object(ref, what)
    try:
        return what, (fn(cfg) if plugins.positional_count(fn) >= 1 else fn())
    except KdtrainError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code failed; say where, once
        raise DataError(f"{what} raised {type(e).__name__}: {first_line(e, 300)}") from None


def _python(cfg: DataConfig):
    key = content_key(dataclasses.asdict(cfg))
    if key in _factory_results:  # the identity (cache keys) and the load read it once per process
        return _factory_results[key]
    what, out = _call_factory(cfg, "data.factory")
    if isinstance(out, dict):
        missing = [k for k in ARRAY_KEYS if k not in out]
        if missing:
            raise DataError(f"{what}: returned a dict without {', '.join(missing)}")
        arrays = [out[k] for k in ARRAY_KEYS] + [out.get("class_names")]
    elif isinstance(out, (tuple, list)) and len(out) in (4, 5):
        arrays = [*out, None][:5]
    else:
        raise DataError(
            f"{what}: must return a dict with {', '.join(ARRAY_KEYS)} (and optionally class_names), "
            f"or a tuple (x_train, y_train, x_test, y_test[, class_names]); got {type(out).__name__}"
        )
    result = checks.checked(*arrays, what)
    _factory_results[key] = result
    return result


# --------------------------------------------------------------------------- identity

_file_digests: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per path, size and modification time)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _file_digests:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _file_digests[memo] = h.hexdigest()[:16]
    return _file_digests[memo]


def identity(cfg: DataConfig) -> str | None:
    """What the user's data holds, for cache keys and the study's settings (None for the built-in datasets, which
    their settings identify): the files' content, a folder's listing, or the factory's arrays."""
    if cfg.name in ("arrays", "csv"):
        return "+".join(file_digest(_path(cfg, k)) for k in ("path", "test_path") if getattr(cfg, k))
    if cfg.name == "folder":
        return folder_key(cfg)
    if cfg.name == "python":
        x_train, y_train, x_test, y_test, names = _python(cfg)
        h = hashlib.sha256()
        for a in (x_train, y_train, x_test, y_test):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(names).encode())
        return h.hexdigest()[:16]
    return None


# --------------------------------------------------------------------------- inputs only (data.unlabeled)


def _folder_inputs(cfg: DataConfig) -> tuple[np.ndarray, str]:
    """Every image under the folder, class folders or none (their names are ignored), decoded once and cached."""
    root = _path(cfg)
    if not root.is_dir():
        raise DataError(f"data.unlabeled.path {root}: not a folder of images")
    files = _all_images(root)
    if not files:
        raise DataError(f"data.unlabeled.path {root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    key = folder_key(cfg, (["unlabelled"], files, root))
    x, _ = _decoded(files, cfg.image_size, data_root(cfg) / "folders" / f"{key}.pt", {})
    subfolders = any(p.parent != root for _, p, _ in files)
    return x.astype(np.float32) / 255.0, "its folder names are ignored" if subfolders else ""


def _arrays_inputs(cfg: DataConfig) -> tuple[np.ndarray, str]:
    path = _path(cfg)
    d = read_arrays(path, "data.unlabeled.path")
    key = next((k for k in ("x", "x_train") if k in d), None)
    if key is None:
        raise DataError(
            f"data.unlabeled.path {path}: no array x (a transfer set's file holds its inputs as x; it "
            f"has {', '.join(map(str, d)) or 'nothing'})"
        )
    labels = [k for k in d if k.startswith("y")]
    x = checks.features(
        d[key].numpy() if isinstance(d[key], torch.Tensor) else d[key], key, f"data.unlabeled.path {path}"
    )
    return x, f"its array(s) {', '.join(labels)} are ignored" if labels else ""


def _csv_inputs(cfg: DataConfig) -> tuple[np.ndarray, str]:
    import pandas as pd

    path = _path(cfg)
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"data.unlabeled.path {path}: not a readable CSV table ({first_line(e)})") from None
    ignored = [str(c) for c in df.columns if c == cfg.label or not pd.api.types.is_numeric_dtype(df[c])]
    features = [c for c in df.columns if str(c) not in ignored]
    if not features:
        raise DataError(f"data.unlabeled.path {path}: no numeric feature column")
    if df[features].isna().any().any():
        raise DataError(f"data.unlabeled.path {path}: empty cells in the feature columns")
    return checks.features(
        df[features].to_numpy(np.float32), "rows", f"data.unlabeled.path {path}"
    ), f"column(s) {', '.join(ignored)} ignored" if ignored else ""


def _python_inputs(cfg: DataConfig) -> tuple[np.ndarray, str]:
    key = "inputs:" + content_key(dataclasses.asdict(cfg))
    if key not in _factory_results:  # the identity (cache keys) and the load read it once per process
        _factory_results[key] = _read_python_inputs(cfg)
    return _factory_results[key]


def _read_python_inputs(cfg: DataConfig) -> tuple[np.ndarray, str]:
    what, out = _call_factory(cfg, "data.unlabeled.factory")
    said = ""
    if isinstance(out, dict):
        if "x" not in out and "x_train" not in out:
            raise DataError(f"{what}: returned a dict without x (a transfer set's factory returns its inputs)")
        said = "its labels are ignored" if any(k.startswith("y") for k in out) else ""
        out = out.get("x", out.get("x_train"))
    elif isinstance(out, (tuple, list)):
        out, said = out[0], "only the first of the values it returns is used (its inputs)"
    x = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return checks.features(x, "inputs", what), said


def inputs_identity(cfg: DataConfig) -> str | None:
    """identity() of a transfer set read by INPUT_SOURCES (None for a built-in generator)."""
    if cfg.name not in INPUT_SOURCES or cfg.name in ("arrays", "csv"):
        return identity(cfg)
    if cfg.name == "folder":
        root = _path(cfg)
        return folder_key(cfg, (["unlabelled"], _all_images(root), root))
    return hashlib.sha256(np.ascontiguousarray(_python_inputs(cfg)[0]).tobytes()).hexdigest()[:16]


INPUT_SOURCES = {"folder": _folder_inputs, "arrays": _arrays_inputs, "csv": _csv_inputs, "python": _python_inputs}
"""data.unlabeled.name -> reader of inputs alone (raw x, what was ignored); built-in datasets drop their labels."""

SOURCES = {"folder": _folder, "arrays": _arrays, "csv": _csv, "python": _python}
"""data.name -> loader of the user's data (registered in kdtrain.data.DATASETS)."""
RAW_SCALE = {"folder": 1 / 255}
