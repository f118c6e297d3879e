"""Feature distillation (kd.features, kdtrain.distill.features): the three losses against hand computations, their
gradients (into the student and the adapter, never the teacher), hooks and adapters through a training run."""

import math

import pytest
import torch
from torch import nn

from kdtrain.config import DataConfig, TrainConfig
from kdtrain.data.datasets import load
from kdtrain.distill import models
from kdtrain.distill.features import FeatureError, FeatureKD, Pair, at_loss, hint_loss, regressor, sp_loss
from kdtrain.distill.train import Distill, seed_all, train

# --------------------------------------------------------------------------- the losses by hand


def test_attention_transfer_by_hand():
    # student (B=1, C=2, L=2): mean over channels of the squares = [5, 2], normalised [5, 2] / sqrt(29);
    # teacher (C=1): [4, 0] -> [1, 0]. Two unit vectors: ||a - b||^2 = 2 - 2 a.b, a.b = 5 / sqrt(29); the mean over
    # the 2 positions is 1 - 5 / sqrt(29)
    fs = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    ft = torch.tensor([[[2.0, 0.0]]])
    assert at_loss(fs, ft).item() == pytest.approx(1 - 5 / math.sqrt(29), rel=1e-6)
    # torchdistill's ATLoss (mode 'code'), written out: normalize(f.pow(2).mean(1).flatten(1)), (a_s - a_t)^2 mean
    ref = lambda f: torch.nn.functional.normalize(f.pow(2).mean(1).flatten(1))  # noqa: E731
    assert at_loss(fs, ft).item() == pytest.approx((ref(fs) - ref(ft)).pow(2).mean().item(), rel=1e-6)


def test_attention_transfer_pools_the_larger_map_to_the_smaller():
    # student length 4 pooled to the teacher's 2: [1, 3, 5, 7] -> [2, 6]; squares' mean [4, 36] -> [1, 9] / sqrt(82);
    # the teacher [6, 2] -> [36, 4] -> [9, 1] / sqrt(82): a.b = 18 / 82, loss = (2 - 36 / 82) / 2
    fs = torch.tensor([[[1.0, 3.0, 5.0, 7.0]]])
    ft = torch.tensor([[[6.0, 2.0]]])
    assert at_loss(fs, ft).item() == pytest.approx((2 - 36 / 82) / 2, rel=1e-6)
    assert at_loss(ft, fs).item() == pytest.approx((2 - 36 / 82) / 2, rel=1e-6)  # whichever side is larger
    # RepDistiller's Attention.at_loss, written out, on random 2-D maps of two sizes
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)
    at = lambda f: torch.nn.functional.normalize(f.pow(2).mean(1).view(3, -1))  # noqa: E731
    ref = (at(torch.nn.functional.adaptive_avg_pool2d(fs, (4, 4))) - at(ft)).pow(2).mean()
    assert at_loss(fs, ft).item() == pytest.approx(ref.item(), rel=1e-5)


def test_similarity_preserving_by_hand():
    # G_s = I (rows already unit); G_t = all ones, rows [1, 1] / sqrt(2): ||G_s - G_t||^2 = 2 ((1 - 1/sqrt2)^2 + 1/2)
    # = 4 - 2 sqrt(2); divided by B^2 = 4
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sp_loss(fs, ft).item() == pytest.approx((4 - 2 * math.sqrt(2)) / 4, rel=1e-6)
    # RepDistiller's Similarity ("verified by original author"), written out, on random outputs of two shapes
    torch.manual_seed(0)
    fs, ft = torch.randn(5, 3, 4, 4), torch.randn(5, 8, 2, 2)
    g = lambda f: torch.nn.functional.normalize(f.view(5, -1) @ f.view(5, -1).t())  # noqa: E731
    assert sp_loss(fs, ft).item() == pytest.approx(((g(ft) - g(fs)) ** 2).sum().item() / 25, rel=1e-5)
    # any two shapes: only the batch's similarities are compared (a conv output against a vector)
    assert sp_loss(torch.randn(3, 4, 5), torch.randn(3, 7)).ndim == 0


def test_hint_by_hand_with_its_gradients():
    # student (B=2, D=1) [1, 2] through the regressor 2 s + 0.5 -> [2.5, 4.5] against the teacher's [3, 4]: the
    # errors are [-0.5, 0.5], MSE 0.25; dL/dw = (2/N) sum e s = 0.5, dL/db = (2/N) sum e = 0, dL/ds = (2/N) e w
    reg = regressor((2, 1), (2, 1), "test")
    with torch.no_grad():
        reg.weight.fill_(2.0)
        reg.bias.fill_(0.5)
    s = torch.tensor([[1.0], [2.0]], requires_grad=True)
    t = torch.tensor([[3.0], [4.0]], requires_grad=True)
    loss = hint_loss(reg(s), t.detach())
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert reg.weight.grad.item() == pytest.approx(0.5)
    assert reg.bias.grad.item() == pytest.approx(0.0, abs=1e-7)
    assert s.grad.flatten().tolist() == pytest.approx([-1.0, 1.0])
    assert t.grad is None


def test_hint_regressor_is_a_1x1_convolution_pooled_to_the_teachers_positions():
    reg = regressor((1, 1, 4), (1, 1, 2), "test")
    with torch.no_grad():
        reg[0].weight.fill_(1.0)
        reg[0].bias.zero_()
    # [1, 3, 5, 7] -> pooled [2, 6] against [2, 5]: errors [0, 1], MSE 0.5
    out = reg(torch.tensor([[[1.0, 3.0, 5.0, 7.0]]]))
    assert hint_loss(out, torch.tensor([[[2.0, 5.0]]])).item() == pytest.approx(0.5)
    assert isinstance(regressor((8, 4, 6, 6), (8, 16, 3, 3), "t")[0], nn.Conv2d)


def test_no_adapter_joins_a_feature_map_to_a_vector():
    with pytest.raises(
        FeatureError,
        match=r"no adapter joins the student's output \(B, 4, 6, 6\) to the teacher's "
        r"\(B, 10\)",
    ):
        regressor((8, 4, 6, 6), (8, 10), "kd.features (p)")


# --------------------------------------------------------------------------- hooks, adapters, gradients


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 6, 3, padding=1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8, 3))

    def forward(self, x):
        return self.head(self.body(x))


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8, 3))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


@pytest.mark.parametrize("loss", ["at", "hint", "sp"])
def test_gradients_reach_the_student_and_the_adapter_never_the_teacher(loss):
    torch.manual_seed(0)
    teacher, student = Teacher(), Student()
    before = [p.detach().clone() for p in teacher.parameters()]
    kd = FeatureKD([Pair("p", "t", "body.2", "conv", loss, 1.0)], {"t": (teacher, teacher)})
    x = torch.randn(4, 1, 8)
    adapters = kd.attach(student, x, torch.device("cpu"))
    assert len(adapters) == (1 if loss == "hint" else 0)  # only hints learn an adapter
    student(x)
    value = kd.loss(x)
    value.backward()
    assert value.item() > 0
    assert student.conv.weight.grad.abs().sum() > 0
    assert student.head[1].weight.grad is None  # after the hooked layer: untouched by the feature term
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), before, strict=False))
    if loss == "hint":
        assert all(p.grad.abs().sum() > 0 for p in adapters.parameters())
    kd.close()
    assert not student.conv._forward_hooks and not teacher.body[2]._forward_hooks


def test_the_teacher_stops_at_its_last_hooked_layer():
    teacher, student = Teacher(), Student()
    ran = []
    teacher.head.register_forward_hook(lambda *a: ran.append("head"))
    kd = FeatureKD([Pair("p", "t", "body.0", "conv", "sp", 1.0)], {"t": (teacher, teacher)})
    kd.attach(student, torch.randn(4, 1, 8), torch.device("cpu"))
    assert ran == []  # the dry batch stopped after body.0
    kd.teacher_outputs(torch.randn(2, 1, 8))
    assert ran == [] and kd.teacher_out["t"]["body.0"].shape == (2, 6, 8)
    teacher(torch.randn(2, 1, 8))  # run by someone else (the online logits): its whole forward, not stopped
    assert ran == ["head"]
    kd.close()


def test_a_wrong_path_names_the_nearest_valid_ones():
    teacher, student = Teacher(), Student()
    kd = FeatureKD([Pair("p", "t", "body.7", "conv", "sp", 1.0)], {"t": (teacher, teacher)})
    with pytest.raises(FeatureError) as e:
        kd.attach(student, torch.randn(4, 1, 8), torch.device("cpu"))
    msg = str(e.value)
    assert (
        msg.startswith(
            "kd.features (p).teacher_layer: no module 'body.7' in the teacher t; nearest: body.2, body.1, body.0"
        )
        and "kdtrain layers SWEEPFILE lists every path" in msg
        and "\n" not in msg
    )
    kd.close()


def test_attention_transfer_refuses_vectors_before_training():
    teacher, student = Teacher(), Student()
    kd = FeatureKD([Pair("p", "t", "head.1", "conv", "at", 1.0)], {"t": (teacher, teacher)})
    with pytest.raises(FeatureError, match=r"attention transfer needs two outputs with positions"):
        kd.attach(student, torch.randn(4, 1, 8), torch.device("cpu"))
    kd.close()


@pytest.fixture(scope="module")
def ds():
    return load(DataConfig(name="synthetic", size=400, val_fraction=0.2, seed=0))


class Recorded(FeatureKD):
    """Keeps the adapters' parameters as the dry batch made them."""

    def attach(self, student, x, device):
        adapters = super().attach(student, x, device)
        self.initial = [p.detach().clone() for p in adapters.parameters()]
        return adapters


def test_a_feature_run_trains_the_adapter_and_returns_the_bare_student(ds):
    seed_all(0)
    teacher = models.create_model("cnn1d", ds.input_shape, ds.num_classes, 8).eval()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = models.create_model("cnn1d", ds.input_shape, ds.num_classes, 4, depth=2)
    keys = set(student.state_dict())
    kd = Recorded([Pair("p", "t", "3", "3", "hint", 10.0)], {"t": (teacher, teacher)})
    cfg = TrainConfig(epochs=2, batch_size=64, threads=1)
    r = train(student, ds, cfg, distill=Distill(2.0, 0.5, models=[teacher], features=kd))
    assert set(r.model.state_dict()) == keys  # no adapter inside the returned (logged, exported) model
    assert not any(m._forward_hooks for m in r.model.modules())  # nor a hook
    assert not any(m._forward_hooks for m in teacher.modules())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_state.items())  # the teacher unchanged
    reg = kd.adapters["0"][0]
    assert reg.in_channels == 4 and reg.out_channels == 8  # sized from the dry batch: student 4 -> teacher 8
    # the adapter trained with the student: its parameters are in the optimizer
    assert all(not torch.equal(p, q) for p, q in zip(kd.adapters.parameters(), kd.initial, strict=False))
    # the feature term is in the loss the run reports: the same run without it has a lower train loss
    seed_all(0)
    plain = models.create_model("cnn1d", ds.input_shape, ds.num_classes, 4, depth=2)
    first = train(
        plain, ds, TrainConfig(epochs=1, batch_size=64, threads=1), distill=Distill(2.0, 0.5, models=[teacher])
    ).history[0]
    assert r.history[0].train_loss > first.train_loss


def test_a_run_stopped_midway_leaves_no_hook_on_the_student_or_the_shared_teacher(ds):
    seed_all(0)
    teacher = models.create_model("cnn1d", ds.input_shape, ds.num_classes, 8).eval()
    student = models.create_model("cnn1d", ds.input_shape, ds.num_classes, 4, depth=2)
    kd = FeatureKD([Pair("p", "t", "3", "3", "at", 1000.0)], {"t": (teacher, teacher)})

    def prune(stats):
        assert student[3]._forward_hooks and teacher[3]._forward_hooks  # hooked while it trains
        raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        train(
            student,
            ds,
            TrainConfig(epochs=3, batch_size=64, threads=1),
            distill=Distill(2.0, 0.5, features=kd, models=[teacher]),
            on_epoch=prune,
        )
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])


class Shared(nn.Module):
    """One ReLU module called twice in a forward, as torchvision's BasicBlock does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8, 3))

    def forward(self, x):
        return self.head(self.relu(self.relu(self.conv(x)) - 1.0))


def test_a_module_called_twice_gives_its_first_output_on_both_sides_and_evaluation_captures_nothing():
    torch.manual_seed(0)
    teacher, student = Shared(), Shared()
    kd = FeatureKD([Pair("p", "t", "relu", "relu", "sp", 1.0)], {"t": (teacher, teacher)})
    x = torch.randn(4, 1, 8)
    kd.attach(student, x, torch.device("cpu"))
    student.train()
    student(x)
    first = torch.relu(student.conv(x))
    assert torch.allclose(kd.student_out["relu"], first)  # not relu(first - 1), the second call's
    assert torch.allclose(kd.teacher_outputs(x)["t"]["relu"], torch.relu(teacher.conv(x)))
    student.eval()
    student(x)
    assert kd.student_out == {}  # evaluation forwards keep nothing
    kd.close()


def test_the_feature_weight_is_searched_only_for_a_trial_with_a_pair():
    from optuna.trial import FixedTrial

    from kdtrain.study.space import suggest

    space = {
        "kd.feature_weight": {"type": "float", "low": 1, "high": 1000, "log": True},
        "kd.feature_pair": {"type": "categorical", "choices": ["none", "mid"]},
    }
    assert suggest(FixedTrial({"kd.feature_pair": "none"}), space) == {"kd.feature_pair": "none"}
    assert suggest(FixedTrial({"kd.feature_pair": "mid", "kd.feature_weight": 30.0}), space) == {
        "kd.feature_pair": "mid",
        "kd.feature_weight": 30.0,
    }
