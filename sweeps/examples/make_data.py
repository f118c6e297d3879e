"""Write the data of the example sweeps (sweeps/examples/*.yaml) under DIR (default: data), in the formats
kdtrain reads, so that every example runs on a fresh clone without a download:

    python sweeps/examples/make_data.py data

- DIR/shapes/{train,test}/{circle,square,triangle}/*.png   folder.yaml: 32x32 RGB images, one folder per class
- DIR/waves.npz        arrays.yaml: x_train (N, 2, 32) two-channel signals, y_train, x_test, y_test, class_names
- DIR/flowers.csv      csv.yaml: four numeric columns, a text column (ignored) and a string label column `species`
- DIR/waves_logits.npz logits.yaml: a teacher's logits on waves.npz (a nearest-centroid classifier fitted by
                       another tool), arrays train and test, rows in the file's order
- DIR/waves_teacher.onnx  onnx.yaml: a small 1-D CNN trained here on kdtrain's own preprocessing of waves.npz
                       (kdtrain.data.load), exported with torch.onnx.export (needs the onnx package)

Seeded: the same files every time (takes a few seconds).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")
WAVES = ("sine", "square", "sawtooth")
SPECIES = ("alba", "rosea", "lutea")


def shapes(root: Path, train_per_class: int = 80, test_per_class: int = 20, size: int = 32, seed: int = 0) -> None:
    """A folder of PNG images: a filled circle, square or triangle of random colour, size and place."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = tuple(int(v) for v in rng.integers(0, 90, 3))
                fg = tuple(int(v) for v in rng.integers(140, 256, 3))
                img = Image.new("RGB", (size, size), bg)
                draw = ImageDraw.Draw(img)
                r = rng.uniform(0.22, 0.4) * size
                cx, cy = rng.uniform(r, size - r, 2)
                if name == "circle":
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
                elif name == "square":
                    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
                img.save(folder / f"{name}-{i:03d}.png")


def waves(n_train: int = 240, n_test: int = 60, length: int = 32, seed: int = 0) -> dict:
    """Two-channel signals: a sine, square or sawtooth wave of random frequency and phase (channel 0) and its
    noisy copy (channel 1)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, len(WAVES), n)
        t = np.arange(length) / length
        freq, phase = rng.uniform(1.5, 3.5, (n, 1)), rng.uniform(0, 1, (n, 1))
        u = (freq * t + phase) % 1.0
        wave = np.where(y[:, None] == 0, np.sin(2 * np.pi * u), np.where(y[:, None] == 1, np.sign(u - 0.5), 2 * u - 1))
        x = np.stack([wave, wave + rng.normal(0, 0.5, wave.shape)], axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "class_names": np.array(WAVES)}


def waves_logits(arrays: dict) -> dict:
    """A teacher known only by its logits: minus the distance of each sample's spectrum to each class's mean
    spectrum (fitted on the training rows). Rows follow waves.npz's own order, as kdtrain expects."""
    spectrum = lambda x: np.abs(np.fft.rfft(x[:, 0], axis=1))  # noqa: E731 - phase-free features
    f_train = spectrum(arrays["x_train"])
    centroids = np.stack([f_train[arrays["y_train"] == c].mean(0) for c in range(len(WAVES))])
    logits = lambda x: -np.linalg.norm(spectrum(x)[:, None] - centroids[None], axis=2)  # noqa: E731
    return {"train": logits(arrays["x_train"]).astype(np.float32), "test": logits(arrays["x_test"]).astype(np.float32)}


def flowers(path: Path, n: int = 300, seed: int = 0) -> None:
    """A CSV table: four measurements, a free-text column and the species as a string label."""
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(0, 0.35, (n, 4))
    lines = ["petal_length,petal_width,sepal_length,sepal_width,garden,species"]
    for i, (row, c) in enumerate(zip(x, y, strict=False)):
        lines.append(",".join(f"{v:.2f}" for v in row) + f",garden-{i % 7},{SPECIES[c]}")
    path.write_text("\n".join(lines) + "\n")


def onnx_teacher(arrays_path: Path, out: Path, epochs: int = 30, seed: int = 0) -> None:
    """Train a small 1-D CNN on exactly what kdtrain feeds a teacher (kdtrain.data.load: the same file, the same
    per-channel standardisation with the training rows' statistics) and export it to ONNX."""
    import torch
    from torch import nn

    from kdtrain import config
    from kdtrain.data.datasets import load

    torch.manual_seed(seed)
    # onnx.yaml's data section (its val_fraction and seed decide the training rows whose statistics standardise
    # every input): x_train, x_val are then exactly what kdtrain will feed the teacher
    data = config.load(Path(__file__).with_name("onnx.yaml"), [f"data.path={arrays_path}"]).data
    ds = load(data)
    channels = ds.input_shape[0]
    net = nn.Sequential(
        nn.Conv1d(channels, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, ds.num_classes),
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(len(ds.y_train)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
    net.eval()
    with warnings.catch_warnings():  # torch 2.9+ says the TorchScript-based exporter is legacy; it is exact here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (ds.x_val[:2],),
            str(out),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    with torch.no_grad():
        acc = (net(ds.x_val).argmax(1) == ds.y_val).float().mean().item()
    print(f"{out}: a {sum(p.numel() for p in net.parameters()):,}-parameter 1-D CNN, val accuracy {acc:.3f}")


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shapes(root / "shapes")
    print(f"{root / 'shapes'}: {len(list((root / 'shapes').rglob('*.png')))} PNG images in {len(CLASSES)} classes")
    arrays = waves()
    np.savez(root / "waves.npz", **arrays)
    np.savez(root / "waves_logits.npz", **waves_logits(arrays))
    flowers(root / "flowers.csv")
    print(f"{root / 'waves.npz'}, {root / 'waves_logits.npz'}, {root / 'flowers.csv'}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnx or onnxruntime is not installed (pip install 'kdtrain[onnx]'): skipped waves_teacher.onnx")
        return
    onnx_teacher(root / "waves.npz", root / "waves_teacher.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data"))
