"""Fuzzing the readers of the user's own data: whatever a data file or a factory holds, kdtrain either loads it
into valid arrays or refuses it with one DataError; no other exception escapes (a traceback for the user)."""

import io
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdtrain.config import DataConfig, DataError
from kdtrain.data import sources

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(name: str, path, **kw):
    return sources.SOURCES[name](DataConfig(name=name, path=str(path), **kw))


def _valid(out) -> None:
    """What a source returns when it accepts the data: arrays kdtrain's loader can use as they are."""
    x_train, y_train, x_test, y_test, names = out[:5]
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert x_train.ndim in (3, 4) and x_train.shape[1:] == x_test.shape[1:]
    assert np.isfinite(x_train).all() and np.isfinite(x_test).all()
    assert y_train.dtype == np.int64 and len(y_train) == len(x_train) and len(y_test) == len(x_test)
    assert len(np.unique(y_train)) >= 2 and y_train.min() >= 0 and y_train.max() < len(names)
    assert y_test.min() >= 0 and y_test.max() < len(names)


def _accepts_or_refuses(fn) -> str:
    try:
        _valid(fn())
        return "loaded"
    except DataError as e:
        assert "\n" not in str(e) and str(e), str(e)  # one line, saying something
        return "refused"


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".npz", ".pt", ".csv"]))
def test_random_bytes_in_a_data_file_are_refused_in_one_line(tmp_path, blob, suffix):
    p = tmp_path / f"d{suffix}"
    p.write_bytes(blob)
    assert _accepts_or_refuses(lambda: _load("csv" if suffix == ".csv" else "arrays", p)) in ("loaded", "refused")


def test_a_zip_that_is_not_an_npz_and_a_pickle_are_refused(tmp_path):
    z = tmp_path / "zip.npz"
    with zipfile.ZipFile(z, "w") as f:
        for key in sources.ARRAY_KEYS:
            f.writestr(f"{key}.npy", b"not an array")
    with pytest.raises(DataError, match=r"not a readable \.npz|x_train must be numeric"):
        _load("arrays", z)
    p = tmp_path / "obj.pt"
    torch.save({"x_train": io.BytesIO(b"data")}, p)  # a pickled object: weights_only refuses it
    with pytest.raises(DataError, match=r"not a readable \.pt"):
        _load("arrays", p)


ARRAYS = st.one_of(
    st.builds(
        lambda n, f, k, dt: (np.random.default_rng(n).normal(size=(n, f)) * 3).astype(dt),
        st.integers(0, 30),
        st.integers(1, 5),
        st.just(0),
        st.sampled_from(["float32", "float64", "int16"]),
    ),
    st.builds(
        lambda shape, fill: np.full(shape, fill),
        st.lists(st.integers(0, 4), min_size=0, max_size=5),
        st.sampled_from([0, 1.5, np.nan, np.inf, -1, "a", True]),
    ),
)
LABELS = st.one_of(
    st.lists(st.integers(-2, 5), min_size=0, max_size=30).map(np.array),
    st.lists(st.sampled_from(["cat", "dog", "", "émeu"]), min_size=0, max_size=30).map(np.array),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=30).map(np.array),
    st.builds(lambda shape: np.zeros(shape, np.int64), st.lists(st.integers(0, 3), min_size=2, max_size=3)),
)


@FUZZ
@given(
    ARRAYS, LABELS, ARRAYS, LABELS, st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c", "a"]), max_size=4))
)
def test_any_arrays_are_loaded_valid_or_refused_in_one_line(tmp_path, x_train, y_train, x_test, y_test, names):
    d = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if names is not None:
        d["class_names"] = np.array(names, dtype=str)
    p = tmp_path / "d.npz"
    np.savez(p, **d)
    _accepts_or_refuses(lambda: _load("arrays", p))


@FUZZ
@given(
    st.lists(
        st.lists(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=4)), min_size=1, max_size=4),
        min_size=0,
        max_size=25,
    ),
    st.sampled_from(["label", "c0", "c3"]),
)
def test_any_csv_table_is_loaded_valid_or_refused_in_one_line(tmp_path, rows, label):
    width = max((len(r) for r in rows), default=1)
    header = ",".join(f"c{i}" for i in range(width))
    text = header + "\n" + "\n".join(",".join(str(v).replace(",", ";").replace("\n", " ") for v in r) for r in rows)
    p = tmp_path / "t.csv"
    p.write_text(text)
    _accepts_or_refuses(lambda: _load("csv", p, label=label))


def test_a_well_formed_table_loads_with_its_class_names(tmp_path):
    """The fuzzers above would pass on a reader that refuses everything: a good table must load."""
    g = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{'yes' if a > 0 else 'no'}" for a, b in g.normal(size=(40, 2))]
    p = tmp_path / "t.csv"
    p.write_text("a,b,label\n" + "\n".join(rows))
    x_train, y_train, _x_test, y_test, names, _ = _load("csv", p)
    assert names == ["no", "yes"] and x_train.shape[1:] == (1, 2) and len(y_train) + len(y_test) == 40
