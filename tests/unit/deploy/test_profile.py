import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from kdtrain.config import ProfileConfig, home
from kdtrain.deploy.export import export_model, max_diff_onnx, to_onnx
from kdtrain.deploy.profile import count_params, flops, latency, profile, size_bytes
from kdtrain.distill.models import MODELS, create_model
from kdtrain.shared import cpu_room

QUICK = ProfileConfig(blocks=3, calls=10, warmup=3, throughput_batch=32)


def test_flops_of_the_classic_student_equal_the_hand_count():
    m = create_model("mlp", (1, 28, 28), 10, 128)
    assert flops(m, (1, 28, 28)) == 2 * (784 * 128 + 128 * 10)


def _tiny_cnn_params(w: int) -> int:
    """Hand count of tiny_cnn on 1x28x28, 10 classes: Conv(w)-Pool-Conv(2w)-Pool-FC(8w)-FC (7x7 after two pools)."""
    return (1 * w * 9 + w) + (w * 2 * w * 9 + 2 * w) + (2 * w * 7 * 7 * 8 * w + 8 * w) + (8 * w * 10 + 10)


RECORD_PAD = 64
"""torch.save's zip aligns each tensor's record to 64 bytes: sizes of equal-layout files differ by at most this
per tensor beyond their data."""


def test_size_bytes_is_the_fp32_weights_plus_a_small_file_overhead():
    """size_bytes is the serialized state dict: 4 bytes per fp32 parameter plus the archive's headers and pickle,
    checked against hand-counted parameters (not against another torch.save)."""
    m = create_model("tiny_cnn", (1, 28, 28), 10, 16)
    p16 = _tiny_cnn_params(16)
    assert p16 == 206_922 and count_params(m) == p16 and len(m.state_dict()) == 8
    size = size_bytes(m)
    # measured overhead 3,145 bytes for these 8 tensors (zip headers, the pickled key map, alignment): < 0.5%
    assert 4 * p16 <= size <= 4 * p16 + 4096

    wide = create_model("tiny_cnn", (1, 28, 28), 10, 32)
    p32 = _tiny_cnn_params(32)
    assert size_bytes(wide) > size  # grows with the width...
    assert abs((size_bytes(wide) - size) - 4 * (p32 - p16)) <= RECORD_PAD * 8  # ...by its extra fp32 weights

    # the bytes of the stored dtype, not 4 x params: fp16 weights save 2 bytes per parameter
    assert abs((size - size_bytes(copy.deepcopy(m).half())) - 2 * p16) <= RECORD_PAD * 8
    # stored uncompressed, so new weights of the same architecture have the same size (profile caches on it)
    assert size_bytes(create_model("tiny_cnn", (1, 28, 28), 10, 16)) == size


def test_size_bytes_counts_the_buffers_of_the_state_dict():
    """cnn1d's three BatchNorms add buffers that are not parameters: running mean and var (fp32, width each) and
    num_batches_tracked (one int64) each."""

    def params(w):  # convs, BatchNorm affine, head
        return (1 * w * 5 + w) + 2 * (w * w * 3 + w) + 3 * (2 * w) + (2 * w * 10 + 10)

    def data_bytes(w):
        return 4 * params(w) + 3 * (4 * 2 * w + 8)

    m = create_model("cnn1d", (1, 40), 10, 64)
    assert count_params(m) == params(64) == 26_762 and len(m.state_dict()) == 23
    # measured overhead 6,180 bytes for these 23 tensors
    assert data_bytes(64) <= size_bytes(m) <= data_bytes(64) + 8192
    # from width 64 to 256 the buffers add 3 x 2 x 192 fp32 values (4,608 bytes), more than the records' padding
    wide = create_model("cnn1d", (1, 40), 10, 256)
    assert abs((size_bytes(wide) - size_bytes(m)) - (data_bytes(256) - data_bytes(64))) <= RECORD_PAD * 23


def test_latency_reports_percentiles_spread_and_threads():
    m = create_model("cnn1d", (1, 40), 10, 8)
    r = latency(m, (1, 40), QUICK)
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
    assert r["latency_cv"] >= 0 and r["throughput"] > 0 and r["latency_threads"] == 1
    assert torch.get_num_threads() == 1  # restored (conftest runs on one thread)


def test_profile_is_cached_per_architecture(tmp_path):
    m = create_model("mlp", (1, 16), 4, 8)
    ident = {"arch": "mlp", "width": 8, "classes": 4}
    first = profile(m, (1, 16), ProfileConfig(blocks=3, calls=10, warmup=3, max_cv=10.0), ident)
    files = list((home() / "cache" / "profiles").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == first
    other_weights = create_model("mlp", (1, 16), 4, 8)  # same architecture, new weights: cost is the same
    assert profile(other_weights, (1, 16), ProfileConfig(blocks=3, calls=10, warmup=3, max_cv=10.0), ident) == first
    for k in ("params", "size_bytes", "flops", "latency_ms_p50", "latency_ms_p95", "throughput", "latency_cv"):
        assert k in first


def test_noisy_measurement_is_flagged_and_not_cached():
    m = create_model("mlp", (1, 16), 4, 8)
    logs = []
    r = profile(m, (1, 16), ProfileConfig(blocks=3, calls=5, warmup=1, max_cv=1e-12), {"arch": "x"}, logs.append)
    assert r["latency_noisy"] == 1 and any("noisy" in line for line in logs)
    assert not (home() / "cache" / "profiles").exists() or not list((home() / "cache" / "profiles").glob("*.json"))


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_onnx_export_matches_pytorch(arch, tmp_path):
    shape = (3, 32, 32) if arch in ("tiny_cnn", "resnet18") else (1, 40)
    torch.manual_seed(0)
    m = create_model(arch, shape, 10, 4).eval()
    path = to_onnx(m, shape, tmp_path / "m.onnx")
    assert max_diff_onnx(m, path, torch.randn(16, *shape)) <= 1e-4


def test_onnxruntime_backend_profiles():
    m = create_model("cnn1d", (1, 40), 10, 8)
    r = latency(m, (1, 40), ProfileConfig(backend="onnxruntime", blocks=3, calls=10, warmup=3, throughput_batch=32))
    assert r["latency_ms_p50"] > 0 and r["throughput"] > 0


def test_export_writes_files_and_card(tmp_path):
    m = create_model("tiny_cnn", (1, 8, 8), 10, 4).eval()
    card = export_model(m, (1, 8, 8), tmp_path / "out", torch.randn(8, 1, 8, 8), {"trial": 3})
    assert (tmp_path / "out" / "model.onnx").exists() and (tmp_path / "out" / "model.ts").exists()
    saved = json.loads((tmp_path / "out" / "card.json").read_text())
    assert saved == json.loads(json.dumps(card)) and saved["trial"] == 3
    assert saved["check"]["max_abs_diff"]["onnx"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "out" / "model.ts"))
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(loaded(x), m(x), atol=1e-5)


def test_measurement_waits_for_a_neighbours_training_epoch():
    """cpu_room: an exclusive holder (latency) waits until a shared holder (an epoch) in another process ends."""
    code = (
        "import time; from kdtrain.shared import cpu_room\n"
        "with cpu_room():\n    print('in', flush=True); time.sleep(1.5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "in"
    t0 = time.perf_counter()
    with cpu_room(exclusive=True):
        waited = time.perf_counter() - t0
    proc.wait()
    assert waited > 0.5
    with cpu_room(), cpu_room():  # shared holders do not block each other
        pass
