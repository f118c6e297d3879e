import pickle
import struct

import numpy as np
import pytest
import torch

from kdtrain.config import DataConfig, KdtrainError, data_root
from kdtrain.data import datasets, sources


def test_synthetic_split_shapes_and_disjoint_val():
    ds = datasets.load(DataConfig(name="synthetic", size=500, val_fraction=0.2, seed=3))
    assert len(ds.y_train) == 400 and len(ds.y_val) == 100 and len(ds.y_test) == 125
    assert ds.input_shape == (1, 16) and ds.num_classes == 4 == len(ds.class_names)
    # normalised with train statistics
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 0.01
    # the validation rows are not training rows
    train_rows = {tuple(r.tolist()) for r in ds.x_train.reshape(len(ds.x_train), -1)}
    assert not any(tuple(r.tolist()) in train_rows for r in ds.x_val.reshape(len(ds.x_val), -1))


def test_split_is_fixed_by_seed():
    a = datasets.load(DataConfig(name="synthetic", size=300, seed=5))
    b = datasets.load(DataConfig(name="synthetic", size=300, seed=5))
    c = datasets.load(DataConfig(name="synthetic", size=300, seed=6))
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)


def test_limit_caps_training_set():
    ds = datasets.load(DataConfig(name="synthetic", size=500, limit=50))
    assert len(ds.y_train) == 50


def test_digits_are_8x8_images():
    ds = datasets.load(DataConfig(name="digits"))
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797


def test_mnist1d_generated_once_and_cached(tmp_path):
    cfg = DataConfig(name="mnist1d", size=500, seed=2, root=str(tmp_path / "d"))
    ds = datasets.load(cfg)
    files = list((tmp_path / "d" / "mnist1d").glob("*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    assert ds.input_shape == (1, 40) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) == 400 and len(ds.y_test) == 100
    again = datasets.load(cfg)
    assert files[0].stat().st_mtime_ns == mtime  # read from the cache, not regenerated
    assert torch.equal(ds.x_train, again.x_train)
    # mnist1d seeds numpy's global RNG internally; kdtrain restores the caller's state
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    datasets.load(DataConfig(name="mnist1d", size=300, seed=4, root=str(tmp_path / "d")))
    assert np.random.rand() == expected


# ------------------------------------------------------------- torchvision datasets from real on-disk files


def write_idx(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, name, folder):
    g = np.random.default_rng(0)
    raw = tmp_path / "root" / folder / "raw"
    train_x = g.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    train_y = (np.arange(60) % 10).astype(np.uint8)
    write_idx(raw, "train", train_x, train_y)
    write_idx(raw, "t10k", g.integers(0, 256, (20, 28, 28), dtype=np.uint8), (np.arange(20) % 10).astype(np.uint8))
    ds = datasets.load(DataConfig(name=name, root=str(tmp_path / "root"), val_fraction=0.1, normalize=False))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.y_train) == 54 and len(ds.y_val) == 6 and len(ds.y_test) == 20
    # pixel values survive the round trip (scaled to [0, 1])
    first = torch.cat([ds.x_train, ds.x_val])
    assert torch.isclose(first.sum() * 255, torch.tensor(float(train_x.astype(np.int64).sum())), rtol=1e-5)


def write_cifar10(root, n_per_batch=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": g.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": list(g.integers(0, 10, n_per_batch)),
            "batch_label": name,
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            fh,
        )


def test_cifar10_reads_python_pickles(tmp_path):
    write_cifar10(tmp_path / "root")
    ds = datasets.load(DataConfig(name="cifar10", root=str(tmp_path / "root"), val_fraction=0.2))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert len(ds.y_train) == 40 and len(ds.y_val) == 10 and len(ds.y_test) == 10
    assert len(ds.mean) == 3


def test_cifar100_reads_python_pickles(tmp_path):
    folder = tmp_path / "root" / "cifar-100-python"
    folder.mkdir(parents=True)
    g = np.random.default_rng(2)
    for name, n in (("train", 30), ("test", 10)):
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {"data": g.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(g.integers(0, 100, n))}, fh
            )
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    ds = datasets.load(DataConfig(name="cifar100", root=str(tmp_path / "root")))
    assert ds.num_classes == 100 and len(ds.y_test) == 10


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_offline_names_path_and_flag(tmp_path, name):
    with pytest.raises(KdtrainError) as e:
        datasets.load(DataConfig(name=name, root=str(tmp_path / "empty")))
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "data.download=true" in msg


def test_augment_crop_and_flip_on_tensors():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = datasets.augment(img, ["crop", "flip"], g)
    assert out.shape == img.shape and not torch.equal(out, img)
    sig = torch.randn(5, 1, 40)
    shifted = datasets.augment(sig, ["crop"], g)
    assert shifted.shape == sig.shape
    # each output row is a (zero-padded) shift of its input row
    for a, b in zip(sig[:, 0], shifted[:, 0], strict=False):
        padded = torch.nn.functional.pad(a, (4, 4))
        assert any(torch.equal(padded[s : s + 40], b) for s in range(9))
    assert torch.equal(datasets.augment(img, []), img)


def test_the_mnist1d_cache_is_written_through_a_temporary_file_of_its_own():
    """Two workers on a cold data root used to write the same fixed temporary name; another writer's file there
    (here a folder, which no write can replace) broke this one's write."""
    cfg = DataConfig(name="mnist1d", size=200, seed=5)
    folder = data_root(cfg) / "mnist1d"
    (folder / "mnist1d_n200_seed5.tmp.npz").mkdir(parents=True)  # the name every worker shared
    d = datasets.load(cfg)
    assert len(d.y_train) + len(d.y_val) == 160
    assert sorted(p.name for p in folder.iterdir()) == ["mnist1d_n200_seed5.npz", "mnist1d_n200_seed5.tmp.npz"]


def test_the_folder_cache_is_written_through_a_temporary_file_of_its_own(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / "imgs" / c / f"{i}.png")
    cfg = DataConfig(name="folder", path=str(tmp_path / "imgs"), image_size=8)
    cache = data_root(cfg) / "folders" / f"{sources.folder_key(cfg)}.pt"
    (cache.parent / f".{cache.name}.tmp").mkdir(parents=True)  # the name every worker shared
    assert len(datasets.load(cfg).y_test) == 2 and cache.is_file()
