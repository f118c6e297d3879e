"""Deployment cost of a model: params, bytes, FLOPs, latency and throughput.

Latency is measured at batch 1 in inference mode, on a fixed number of threads
(default 1, like an edge core), in blocks after a warm-up; the spread between
block medians is ``latency_cv``, and a measurement whose spread stays above
``profile.max_cv`` after one retry is flagged (``latency_noisy = 1``) and not
cached. Measurements hold the machine's CPU room exclusively (see shared.py),
so they never overlap a neighbouring worker's training epoch.

A model's cost does not depend on its weights, so results are cached on disk
per (architecture, input shape, backend, device, threads, settings).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdtrain.deploy.export import onnx_session, state_dict_bytes, to_onnx
from kdtrain.errors import KdtrainError
from kdtrain.paths import home
from kdtrain.schema import ProfileConfig
from kdtrain.shared import atomic_write_text, content_key, cpu_room


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict (what torch.save writes)."""
    return state_dict_bytes(model)


def flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one sample's forward pass as torch counts them (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def _time(fn: Callable[[], object], calls: int, sync: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(calls):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()  # on CUDA a call returns before its kernels end: time to completion
        out.append(time.perf_counter() - t0)
    return out


def _runner(model: nn.Module, input_shape, pcfg: ProfileConfig, device: torch.device, tmp: str):
    """(call at batch 1, call at the throughput batch, sync) for the chosen backend; an ONNX file (a teacher given
    as one) runs in ONNX Runtime whatever the backend."""
    if isinstance(model, Path) or pcfg.backend == "onnxruntime":
        sess = onnx_session(
            model if isinstance(model, Path) else to_onnx(model, input_shape, Path(tmp) / "m.onnx"), pcfg.threads
        )
        name = sess.get_inputs()[0].name
        x1 = torch.randn(1, *input_shape).numpy()
        xb = torch.randn(pcfg.throughput_batch, *input_shape).numpy()
        return (lambda: sess.run(None, {name: x1})), (lambda: sess.run(None, {name: xb})), (lambda: None)
    m = copy.deepcopy(model).to(device).eval()
    x1 = torch.randn(1, *input_shape, device=device)
    xb = torch.randn(pcfg.throughput_batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return (lambda: m(x1)), (lambda: m(xb)), sync


def latency(model: nn.Module, input_shape, pcfg: ProfileConfig = ProfileConfig()) -> dict:
    """p50/p95 batch-1 latency (ms), the block spread (cv) and throughput (samples/s)."""
    device = torch.device(
        "cuda"
        if pcfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if pcfg.device == "auto" else pcfg.device)
    )
    old_threads = torch.get_num_threads()
    torch.set_num_threads(pcfg.threads)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            one, batch, sync = _runner(model, input_shape, pcfg, device, tmp)
            _time(one, pcfg.warmup, sync)  # (the garbage collector is off: its pauses are not the model's)
            samples, medians = [], []
            for _ in range(pcfg.blocks):
                t = _time(one, pcfg.calls, sync)
                samples += t
                medians.append(statistics.median(t))
            _time(batch, 2, sync)
            tb = statistics.median(_time(batch, 5, sync))
    finally:
        torch.set_num_threads(old_threads)
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    mean = statistics.fmean(medians)
    return {
        "latency_ms_p50": 1000 * samples[len(samples) // 2],
        "latency_ms_p95": 1000 * samples[min(len(samples) - 1, int(0.95 * len(samples)))],
        "latency_cv": statistics.pstdev(medians) / mean if mean > 0 else 0.0,
        "throughput": pcfg.throughput_batch / tb,
        "latency_threads": float(pcfg.threads),
    }


def _cache_path(identity: dict, input_shape, pcfg: ProfileConfig) -> Path:
    ident = {
        "model": identity,
        "shape": list(input_shape),
        "profile": pcfg.__dict__,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if pcfg.device != "cpu" and torch.cuda.is_available() else None,
    }
    return home() / "cache" / "profiles" / f"{content_key(ident, 20)}.json"


def profile(
    model: nn.Module,
    input_shape,
    pcfg: ProfileConfig = ProfileConfig(),
    identity: dict | None = None,
    log: Callable[[str], None] | None = None,
    timing: bool = True,
) -> dict:
    """All deployment metrics of a model. With ``identity`` (its architecture, e.g. arch/width/classes),
    the result is cached on disk and reused by every model of that architecture. Without ``timing`` only what is
    counted (params, bytes, FLOPs: milliseconds) unless the cache has the whole measurement."""
    path = _cache_path(identity, input_shape, pcfg) if identity is not None else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    out = {"params": count_params(model), "size_bytes": size_bytes(model), "flops": flops(model, input_shape)}
    if not timing:
        return out
    with cpu_room(exclusive=True):
        timing = latency(model, input_shape, pcfg)
        if timing["latency_cv"] > pcfg.max_cv:  # one retry: a stray process may have woken up
            retry = latency(model, input_shape, pcfg)
            timing = min(timing, retry, key=lambda t: t["latency_cv"])
    out.update(timing)
    out["latency_noisy"] = float(timing["latency_cv"] > pcfg.max_cv)
    if out["latency_noisy"]:
        if log:
            log(
                f"latency measurement is noisy (block spread {timing['latency_cv']:.0%} > {pcfg.max_cv:.0%}); "
                "flagged latency_noisy=1 and not cached"
            )
    elif path is not None:
        atomic_write_text(path, json.dumps(out))
    return out


def profile_onnx(path: Path, input_shape, pcfg: ProfileConfig = ProfileConfig()) -> dict:
    """Deployment metrics of an ONNX file (a teacher given as one): its parameters (the initializers' values), its
    bytes on disk, and latency and throughput in ONNX Runtime on the CPU (not cached: the file defines it)."""
    from kdtrain.deploy.export import onnx_params

    out = {"params": onnx_params(path), "size_bytes": path.stat().st_size}
    with cpu_room(exclusive=True):
        out.update(latency(path, input_shape, dataclasses.replace(pcfg, device="cpu")))
    out["latency_noisy"] = float(out["latency_cv"] > pcfg.max_cv)
    return out


def model_identity(m, num_classes: int) -> dict:
    """What determines a model's cost: its family settings and its output size (not its weights)."""
    return {
        "arch": m.arch,
        "width": m.width,
        "depth": m.depth,
        "hidden": m.hidden,
        "dropout": m.dropout,
        "classes": num_classes,
    }


def width_ladder(cfg, given: str | None = None) -> list[int]:
    """Student widths to profile: the given comma-separated ones, else powers of two across the searched range
    (or around the base width)."""
    if given:
        parts = given.split(",")
        if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise KdtrainError(f"--widths: expected positive integers separated by commas, e.g. 4,8,16; got {given!r}")
        return [int(p) for p in parts]
    spec = cfg.search.get("student.width")
    if spec and spec.get("type") == "int":
        low, high = spec["low"], spec["high"]
    else:
        low, high = max(1, cfg.student.width // 4), cfg.student.width * 4
    widths, w = {low, high, cfg.student.width}, 1
    while w <= high:
        if w >= low:
            widths.add(w)
        w *= 2
    return sorted(widths)
