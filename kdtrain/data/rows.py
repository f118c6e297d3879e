"""Rows by content: each row's raw input hashed once, so that two data sections can be compared whatever settings or
files produced them (the same generator seed twice, a folder or file given twice, a copy under another name).

kdtrain.data hashes every row it loads (its float32 bytes in the loader's natural scale, before normalisation) and
keeps the keys beside the tensors: a transfer set loses the student's validation and test rows (data.unlabeled), and
a teacher with its own data (teachers[].data) that would learn from the student's held-out rows or hidden labels is
refused (kdtrain.distill.teachers). Hashing reads the inputs once at memory speed: about 1 s for CIFAR-10's 60,000 images
(600 MB of float32) on one core, milliseconds for MNIST-1D; the comparisons are sorts of 8-byte keys.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kdtrain.errors import DataError


def keys(x: np.ndarray) -> np.ndarray:
    """One 64-bit key per row of x (N, ...): blake2b of the row's float32 bytes. Equal rows, equal keys; two
    different rows share a key with odds of about N² / 2^65 (nil for data that fits in memory)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(r, digest_size=8).digest(), "little", signed=True) for r in flat),
        np.int64,
        len(flat),
    )


def teacher_overlap(student: dict[str, np.ndarray], hidden: np.ndarray, taught: np.ndarray) -> dict[str, int]:
    """How many of the student's rows a teacher learns from with their labels: its validation and test rows, and
    its training rows whose labels data.labels hides (`hidden`: their keys). `taught`: the keys of the rows the
    teacher trains on with a label. Only the non-zero counts."""
    found = {"hidden": hidden, "validation": student["val"], "test": student["test"]}
    counts = {what: int(np.isin(k, taught).sum()) for what, k in found.items()}
    return {what: n for what, n in counts.items() if n}


def overlap_message(where: str, counts: dict[str, int], taught: int, generator: bool) -> str:
    """The one message refusing a teacher whose data holds the student's held-out rows or hidden labels."""
    said = {
        "hidden": "{} of the student's training rows whose labels data.labels hides",
        "validation": "{} of its validation rows",
        "test": "{} of its test rows",
    }
    parts = [said[what].format(f"{n:,}") for what, n in counts.items()]
    change = (
        f"set {where}.seed to another value than data.seed (a generator's seed draws other rows)"
        if generator
        else f"point {where} at other data"
    )
    return (
        f"{where}: {', '.join(parts[:-1]) + ' and ' + parts[-1] if len(parts) > 1 else parts[0]} are among the "
        f"{taught:,} rows the teacher would learn with their labels (compared by content): it would hand the "
        "student labels it is denied or rows it is scored on, and kd_gain would not be earned. Give the teacher "
        f"other rows: {change}, or drop {where} (it then learns the student's labelled rows)"
    )


def check_teacher(where: str, name: str, ds, tds) -> None:
    """A teacher's own data (tds) must not hold, among the rows it trains on with their labels, the student's (ds)
    validation or test rows or its training rows whose labels data.labels hides: compared by content, so that the
    same seed, folder or file given twice is caught whatever the settings say. DataError naming `where`."""
    if ds.keys is None or tds.keys is None:
        return
    own = len(ds.y_train) - ds.transfer_rows
    hidden = ds.keys["train"][:own][(ds.y_train[:own] < 0).cpu().numpy()]
    taught = tds.keys["train"][(tds.y_train >= 0).cpu().numpy()]
    counts = teacher_overlap(ds.keys, hidden, taught)
    if counts:
        raise DataError(overlap_message(where, counts, len(taught), name in ("mnist1d", "synthetic")))
