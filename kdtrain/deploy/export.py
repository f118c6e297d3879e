"""Deployable files for a student: ONNX and TorchScript, checked against PyTorch, with a JSON card; and the capture
of an MLflow logged model (torch.export, else TorchScript). Every export is verified one way (`max_abs_diff`
against TOLERANCE): what `kdtrain export` writes and what a trial's logged model holds."""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdtrain.errors import KdtrainError

TOLERANCE = 1e-4
"""The largest absolute difference in logits between an export and PyTorch that kdtrain accepts, for every export
(`kdtrain export`'s ONNX and TorchScript files, a logged model's torch.export or TorchScript capture). 1e-4 rather
than the 1e-5 logged models were once held to: ONNX Runtime's fused kernels round float32 otherwise than PyTorch
(differences near 1e-5 on logits of magnitude 10 are ordinary there), and one bound for all exports means a model
`kdtrain export` accepts is one its logged model may hold. What the check is for, a capture that is wrong (a batch
dimension fixed, a branch taken another way), is off by far more than either bound."""


def need_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise KdtrainError(f"{' and '.join(missing)} not installed: pip install 'kdtrain[onnx]'")


def to_onnx(model: nn.Module, input_shape, path: str | Path) -> Path:
    """Export with a dynamic batch dimension (input 'input', output 'logits')."""
    need_onnx()
    path = Path(path)
    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: fast and exact for these families; the dynamo
        # exporter also works but takes seconds per model, too slow to profile every trial.
        torch.onnx.export(
            m,
            (torch.zeros(2, *input_shape),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def onnx_params(path: str | Path) -> int:
    """Parameters of an ONNX model: the values of its initializers (weights and biases)."""
    need_onnx()
    import math

    import onnx

    return sum(math.prod(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def onnx_session(path: str | Path, threads: int = 1):
    need_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def to_torchscript(model: nn.Module, input_shape, path: str | Path) -> Path:
    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.zeros(2, *input_shape))
        traced.save(str(path))  # torch 2.9+ calls TorchScript deprecated (FutureWarning); users still ship it
    return Path(path)


def max_abs_diff(run: Callable[[torch.Tensor], object], model: nn.Module, x: torch.Tensor) -> float:
    """The one check of an export: the largest absolute difference between `run`'s logits (an exported file read
    back, a capture in memory) and the PyTorch model's, on x and on a batch of another size (an export whose batch
    dimension was fixed fails there). Compare with TOLERANCE."""
    model = model.cpu().eval()
    x = x.cpu()
    with torch.no_grad():
        return max(float((torch.as_tensor(run(a)) - model(a)).abs().max()) for a in (x, torch.cat([x, x[:1]])))


def max_diff_onnx(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """max_abs_diff of an ONNX file run by ONNX Runtime."""
    sess = onnx_session(path)
    return max_abs_diff(lambda a: torch.from_numpy(sess.run(None, {"input": a.numpy()})[0]), model, x)


def max_diff_torchscript(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """max_abs_diff of a TorchScript file loaded back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    return max_abs_diff(loaded, model, x)


def export_model(model: nn.Module, input_shape, out_dir: str | Path, sample: torch.Tensor, card: dict) -> dict:
    """Write model.onnx, model.ts and card.json under out_dir; refuse if an export disagrees with PyTorch."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = to_onnx(model, input_shape, out / "model.onnx")
    ts_path = to_torchscript(model, input_shape, out / "model.ts")
    diffs = {
        "onnx": max_diff_onnx(model, onnx_path, sample),
        "torchscript": max_diff_torchscript(model, ts_path, sample),
    }
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if bad:
        for p in (onnx_path, ts_path):
            p.unlink(missing_ok=True)
        raise KdtrainError(f"exported model disagrees with PyTorch (max abs diff {bad}); nothing written")
    card = {
        **card,
        "files": {"onnx": onnx_path.name, "torchscript": ts_path.name},
        "check": {"samples": len(sample), "max_abs_diff": diffs, "tolerance": TOLERANCE},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2, default=str))
    return card


WEIGHTS_FILE = "model.pt"
"""Name of the weights file kdtrain writes (MLflow artifact, teacher cache)."""


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the file torch.save writes for the state dict, under kdtrain's file name
    (the zip archive embeds the name, so the size depends on it by a few bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / WEIGHTS_FILE
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def make_card(cfg, ds, study: str, trial: int, run_id: str | None, metrics: dict) -> dict:
    """The deployment card of a student: what it is, how it was distilled, what it measured (and how), and the
    preprocessing that its inputs need."""
    from kdtrain.schema import METRICS

    return {
        "study": study,
        "trial": trial,
        "mlflow_run_id": run_id,
        "student": {"arch": cfg.student.arch, "width": cfg.student.width, "depth": cfg.student.depth},
        "distillation": {
            "temperature": cfg.kd.temperature,
            "alpha": cfg.kd.alpha,
            "teachers": cfg.kd_teachers,
            "ensemble": cfg.kd.ensemble,
        },
        "metrics": {k: metrics.get(k) for k in METRICS},
        "latency_measured": {
            "batch": 1,
            "backend": cfg.profile.backend,
            "threads": cfg.profile.threads,
            "device": cfg.profile.device,
        },
        "preprocessing": {
            "input_shape": list(ds.input_shape),
            "dataset": cfg.data.name,
            "scale": ds.scale,
            "mean": ds.mean,
            "std": ds.std,
            "formula": "x = (raw * scale - mean[c]) / std[c], per channel c; batch first",
        },
        "classes": ds.class_names,
    }


def card_text(card: dict, gains: dict) -> str:
    """The deployment card as Markdown (a registered model version's description): accuracy and the gain over
    the no-teacher baseline, size and cost with how latency was measured, and the preprocessing its inputs need."""
    m, lat, pre, kd = card["metrics"], card["latency_measured"], card["preprocessing"], card["distillation"]
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "?"  # noqa: E731
    lines = [
        (
            f"**{card['student']['arch']}, width {card['student']['width']}**: trial {card['trial']} of study "
            f"`{card['study']}` (MLflow run `{card['mlflow_run_id']}`), distilled from {'+'.join(kd['teachers']) or 'no teacher'} "
            f"(T={fmt(kd['temperature'], '.3g')}, alpha={fmt(kd['alpha'], '.3g')}, {kd['ensemble']})."
        ),
        "",
        f"- accuracy: {fmt(m.get('val_accuracy'), '.4f')} validation, {fmt(m.get('test_accuracy'), '.4f')} test",
        (
            f"- gain over the no-teacher baseline (its mean over seeds): {fmt(gains.get('kd_gain'), '+.4f')} validation, "
            f"{fmt(gains.get('kd_gain_test'), '+.4f')} test ({fmt(gains.get('kd_gain_sigma'), '.1f')} baseline standard "
            f"deviations on validation)"
        ),
        (
            f"- size: {fmt(m.get('params'), ',.0f')} parameters, {fmt(m.get('size_bytes'), ',.0f')} bytes; "
            f"{fmt(m.get('flops'), ',.0f')} FLOPs per sample"
        ),
        (
            f"- latency: {fmt(m.get('latency_ms_p50'), '.4f')} ms p50, {fmt(m.get('latency_ms_p95'), '.4f')} ms p95 at "
            f"batch {lat['batch']}, {lat['threads']} thread(s), {lat['device']}, {lat['backend']}; throughput "
            f"{fmt(m.get('throughput'), ',.0f')} samples/s"
        ),
        (
            f"- input: float32 of shape (batch, {', '.join(map(str, pre['input_shape']))}), preprocessed as "
            f"{pre['formula']} with scale {pre['scale']:.6g}, mean {[round(v, 6) for v in pre['mean']]}, std "
            f"{[round(v, 6) for v in pre['std']]} (data {pre['dataset']})"
        ),
        f"- output: logits over {len(card['classes'])} classes {card['classes'][:20]}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- an MLflow logged model's capture
def logged_model_files(model: nn.Module, example) -> dict[str, bytes] | None:
    """The files of a model's MLflow logged model (Tracker.log_model, in the tracking wing), in MLflow's pytorch
    flavor so that mlflow.pyfunc.load_model needs torch alone: example.pt (the input example) and a torch.export
    program (model.pt2, which loads without a warning), else TorchScript (model.ts: a model export cannot capture;
    torch warns that TorchScript is deprecated when it loads). None when neither reproduces the model (within
    TOLERANCE, on the example and a batch of another size)."""
    x = torch.as_tensor(example).float().cpu()
    files = {"example.pt": io.BytesIO()}
    torch.save(x, files["example.pt"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's notes on buffers, TorchScript's deprecation notice
        program = exported(model, x)
        if program is not None:
            files["model.pt2"] = io.BytesIO()
            torch.export.save(program, files["model.pt2"])
        elif (ts := torchscript(model, x)) is not None:
            files["model.ts"] = io.BytesIO()
            torch.jit.save(ts, files["model.ts"])
        else:
            return None
    return {k: b.getvalue() for k, b in files.items()}


def exported(model, x):
    """A torch.export program of the model, its batch dimension dynamic, that reproduces the model (max_abs_diff
    within TOLERANCE); None when export cannot capture it (a ScriptModule, a model with data-dependent control
    flow). Call with warnings silenced."""
    if isinstance(model, torch.jit.ScriptModule) or len(x) < 2:
        return None
    model = model.cpu().eval()
    try:
        with torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            if max_abs_diff(program.module(), model, x) <= TOLERANCE:
                return program
    except Exception:  # noqa: BLE001 - export refused the model: the caller tries TorchScript
        pass
    return None


def torchscript(model, x):
    """TorchScript of a model that reproduces it (max_abs_diff within TOLERANCE): traced, else scripted; a
    ScriptModule as it is; None when neither reproduces the model."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    model = model.cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice and tracer warnings
        for make in (lambda: torch.jit.trace(model, x, check_trace=False), lambda: torch.jit.script(model)):
            try:
                ts = make()
                if max_abs_diff(ts, model, x) <= TOLERANCE:
                    return ts
            except Exception:  # noqa: BLE001 - trace or script refused the model: try the next, else None
                continue
    return None
