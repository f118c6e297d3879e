"""Export to ONNX and TorchScript (kdtrain.deploy.export): files checked against PyTorch before anything is
written; `kdtrain export` of chosen trials."""

import json
import re

import pytest
import torch
from support import load_study, run_cli
from torch import nn

from kdtrain.config import KdtrainError
from kdtrain.deploy.export import export_model
from kdtrain.tracking import params
from kdtrain.tracking.client import Tracker


class _Linear16(nn.Module):
    """A 16 -> 4 linear layer; subclasses choose how their forward pass exports."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)


class OnnxDiffers(_Linear16):
    """Computes y in PyTorch and in TorchScript, y + 1 in the ONNX file (a module that special-cases ONNX export)."""

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


class TraceDiffers(_Linear16):
    """Data-dependent control flow: tracing on zeros freezes the negative branch into both exported files."""

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if bool(x.sum() > 0) else -y


@pytest.mark.parametrize("module, bad", [(OnnxDiffers, {"onnx"}), (TraceDiffers, {"onnx", "torchscript"})])
def test_export_refuses_a_model_whose_export_disagrees_with_pytorch(tmp_path, module, bad):
    torch.manual_seed(0)
    out = tmp_path / "out"
    with pytest.raises(KdtrainError) as e:
        export_model(module().eval(), (1, 16), out, torch.rand(64, 1, 16) + 0.1, {"trial": 7})
    msg = str(e.value)
    assert msg.startswith("exported model disagrees with PyTorch (max abs diff {") and "nothing written" in msg
    named = set(re.findall(r"'(onnx|torchscript)': ", msg))
    assert named == bad, msg
    assert not [f.name for f in out.iterdir()]  # no model.onnx, no model.ts, no card.json


def test_export_of_chosen_trials_writes_checked_files(sweep8, tmp_path):
    import onnx
    import onnxruntime as ort

    home, _, env, _ = sweep8
    r = run_cli("export", "--study", "tiny", "--trial", "0", "5", "--out", tmp_path / "exp", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "exp" / "tiny").iterdir()) == ["trial-0", "trial-5"]
    assert "max abs diff <= 1e-4 on 64 validation samples" in r.stdout
    assert "Warning" not in r.stderr, r.stderr  # torch's TorchScript deprecation notice, once per file, no more
    study = load_study(home)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    for n in (0, 5):
        folder = tmp_path / "exp" / "tiny" / f"trial-{n}"
        assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx", "model.ts"]
        assert str(folder) in r.stdout
        trial = study.trials[n]
        card = json.loads((folder / "card.json").read_text())
        assert card["trial"] == n and card["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert (
            card["metrics"]["params"] == trial.values[1] and card["student"]["width"] == trial.params["student.width"]
        )
        assert card["check"]["samples"] == 64 and card["files"] == {"onnx": "model.onnx", "torchscript": "model.ts"}
        assert max(card["check"]["max_abs_diff"].values()) <= 1e-4
        graph = onnx.load(str(folder / "model.onnx")).graph
        assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        # both files agree with the trial's student as MLflow stored it, at a batch size other than the traced one
        _, ds, model = params.trial_student(tracker, trial.user_attrs["mlflow_run_id"])
        x = ds.x_test[:5]
        with torch.no_grad():
            ref = model.eval()(x)
            ts = torch.jit.load(str(folder / "model.ts"))(x)
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert float((torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]) - ref).abs().max()) <= 1e-4
        assert float((ts - ref).abs().max()) <= 1e-4
