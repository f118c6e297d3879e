"""Deployment cost of a model: params, bytes, FLOPs, latency and throughput.

Latency is measured at batch 1 in inference mode on a fixed number of threads
(default 1, like an edge core), in blocks after a warm-up; the spread between
blocks is reported as ``latency_cv`` so a noisy measurement is visible.
A model's cost does not depend on its weights, so results are cached per
(arch, width, input shape, device) within a process.
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn

from kdtrain.models import count_params

_CACHE: dict[tuple, dict] = {}


def size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict (what torch.save writes)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one sample's forward pass as torch counts them (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def _time_calls(fn, calls: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()  # a GPU call returns before the kernel ends
        out.append(time.perf_counter() - t0)
    return out


def latency(model: nn.Module, input_shape, device: str | torch.device = "cpu", threads: int = 1,
            blocks: int = 5, calls_per_block: int = 40, warmup: int = 20, throughput_batch: int = 256) -> dict:
    """p50/p95 batch-1 latency (ms), block spread (cv) and throughput (samples/s) at a larger batch."""
    device = torch.device(device)
    m = copy.deepcopy(model).to(device).eval()
    x1 = torch.randn(1, *input_shape, device=device)
    xb = torch.randn(throughput_batch, *input_shape, device=device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            _time_calls(lambda: m(x1), warmup, device)
            samples, block_medians = [], []
            for _ in range(blocks):
                t = _time_calls(lambda: m(x1), calls_per_block, device)
                samples += t
                block_medians.append(statistics.median(t))
            _time_calls(lambda: m(xb), 2, device)
            tb = statistics.median(_time_calls(lambda: m(xb), 5, device))
    finally:
        torch.set_num_threads(old_threads)
    samples.sort()
    mean_block = statistics.fmean(block_medians)
    cv = statistics.pstdev(block_medians) / mean_block if mean_block > 0 else 0.0
    return {
        "latency_ms_p50": 1000 * samples[len(samples) // 2],
        "latency_ms_p95": 1000 * samples[min(len(samples) - 1, int(0.95 * len(samples)))],
        "latency_cv": cv,
        "throughput": throughput_batch / tb,
    }


def profile(model: nn.Module, input_shape, key: tuple | None = None, device: str = "cpu", threads: int = 1) -> dict:
    """All deployment metrics of a model; cached under ``key`` (e.g. arch, width, shape)."""
    full_key = (key, tuple(input_shape), str(device), threads) if key is not None else None
    if full_key is not None and full_key in _CACHE:
        return dict(_CACHE[full_key])
    out = {"params": count_params(model), "size_bytes": size_bytes(model), "flops": flops(model, input_shape)}
    out.update(latency(model, input_shape, device, threads))
    out["latency_noisy"] = float(out["latency_cv"] > 0.15)
    if full_key is not None:
        _CACHE[full_key] = dict(out)
    return out
