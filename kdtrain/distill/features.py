"""Feature distillation (``kd.features``): a student's intermediate layer matched to a teacher's.

A pair names a teacher layer and a student layer by module path (``get_submodule``: ``layer3``, ``features.4``,
``0.conv``), a loss and a weight. The layers' outputs are captured with forward hooks, so any ``nn.Module`` works:
the built-in families, ``torchvision:`` and ``python:`` models. Each pair adds ``weight * L`` to the run's loss:

    loss = alpha * T^2 * kd + (1 - alpha) * CE + sum_pairs weight * L_pair

With F_s, F_t the student's and the teacher's outputs (batch B first), the losses (see docs/losses.md for where
each was checked against published code):

- ``at`` (Zagoruyko and Komodakis 2017): a(F) = normalize(mean_c F^2 flattened over the positions); the larger
  map is average-pooled to the smaller's positions first; L = mean over (B, positions) of (a(F_s) - a(F_t))^2.
  Needs outputs with positions (B, C, L) or (B, C, H, W); no adapter.
- ``hint`` (FitNets, Romero et al. 2015): L = mean((r(F_s) - F_t)^2), r a learned regressor: a 1x1 convolution
  from the student's channels to the teacher's for outputs with positions (both pooled to the smaller positions),
  a linear layer for (B, D) outputs.
- ``sp`` (Tung and Mori 2019): G = normalize_rows(F F^T) over the flattened outputs (B x B);
  L = ||G_s - G_t||_F^2 / B^2. Any two shapes; no adapter.

Teacher features come from an online teacher forward on each batch, under ``no_grad``, stopped at the last hooked
layer (the cached logits cannot hold a layer's activations): the logit term keeps its cached targets. Adapters are
sized from one dry batch, trained with the student (their parameters are in its optimizer) and are not part of the
student: the model a run returns, logs and exports holds no adapter and no hook.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass

from kdtrain.errors import KdtrainError
from kdtrain.lazy import Module

torch, nn, F = Module("torch"), Module("torch.nn"), Module("torch.nn.functional")

FEATURE_LOSSES = ("at", "hint", "sp")
"""kd.features[].loss: attention transfer, FitNets hints, similarity-preserving."""

DEFAULT_WEIGHTS = {"at": 1000.0, "hint": 100.0, "sp": 3000.0}
"""A pair's weight when it gives none: the CIFAR-100 settings of RepDistiller's train_student.py (-b)."""

PAIR_KEYS = ("name", "teacher", "teacher_layer", "student_layer", "loss", "weight")
ALL, NONE = "all", "none"
"""kd.feature_pair's two values that name no single pair."""


class FeatureError(KdtrainError):
    """A kd.features pair that cannot be used with these models: one line, exit code 2 like a bad sweep file."""

    exit_code = 2


@dataclass(frozen=True)
class Pair:
    name: str
    teacher: str
    teacher_layer: str
    student_layer: str
    loss: str
    weight: float


def pair_name(raw: dict) -> str:
    """A pair's name: its own, else loss:student_layer->teacher_layer."""
    return raw.get("name") or f"{raw.get('loss', 'hint')}:{raw.get('student_layer')}->{raw.get('teacher_layer')}"


def check_config(cfg) -> list[str]:
    """kd.features and kd.feature_pair / kd.feature_weight as written (no model built, torch not imported)."""
    kd, problems = cfg.kd, []
    names = [t.name for t in cfg.teachers]
    raw = kd.features or []
    if not isinstance(raw, list):
        return [f"kd.features: a list of layer pairs, got {type(raw).__name__}"]
    seen = []
    for i, p in enumerate(raw):
        where = f"kd.features[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{where}: a mapping with teacher_layer and student_layer, got {p!r}")
            continue
        for k in set(p) - set(PAIR_KEYS):
            problems.append(f"{where}.{k}: unknown key (known: {', '.join(PAIR_KEYS)})")
        for k in ("teacher_layer", "student_layer"):
            if not isinstance(p.get(k), str):
                problems.append(f"{where}.{k}: a module path such as layer3 or features.4 (required)")
        if p.get("loss", "hint") not in FEATURE_LOSSES:
            problems.append(f"{where}.loss: one of {', '.join(FEATURE_LOSSES)}, got {p.get('loss')!r}")
        w = p.get("weight", 1.0)
        if type(w) not in (int, float) or not w > 0:
            problems.append(f"{where}.weight: a positive number, got {w!r}")
        t = p.get("teacher")
        if t is not None and t not in names:
            problems.append(f"{where}.teacher: {t!r} is not in the teacher pool ({', '.join(names) or 'empty'})")
        if t is None and not names:
            problems.append(f"{where}: feature distillation needs a teacher under teachers:")
        for tc in cfg.teachers:
            if tc.name == (t or (cfg.kd_teachers or [None])[0]) and _no_features(tc):
                problems.append(
                    f"{where}: teacher {tc.name!r} is {_no_features(tc)}, which gives logits only, no "
                    "layer to hook; name a teacher with a model (arch, a state dict or an MLflow model) "
                    "or drop kd.features"
                )
        if "name" in p and not (isinstance(p["name"], str) and p["name"]):
            problems.append(f"{where}.name: a non-empty text (what kd.feature_pair names), got {p['name']!r}")
            continue
        name = pair_name(p)
        if name in seen or name in (ALL, NONE):
            problems.append(
                f"{where}.name: {name!r} is {'taken' if name in seen else 'reserved'}; give each pair its own name"
            )
        seen.append(name)
    choice = kd.feature_pair
    if choice not in (ALL, NONE, *seen):
        problems.append(
            f"kd.feature_pair: {ALL}, {NONE} or a pair's name ({', '.join(seen) or 'kd.features is empty'}),"
            f" got {choice!r}"
        )
    if kd.feature_weight is not None and not kd.feature_weight > 0:
        problems.append(f"kd.feature_weight: a positive number, got {kd.feature_weight}")
    return problems


def _no_features(t) -> str:
    """What a teacher known by its outputs only is ('' for one with a model whose layers can be hooked)."""
    if t.logits:
        return "a logits file"
    return "an ONNX file" if t.weights and t.weights.endswith(".onnx") else ""


def pairs(cfg, every: bool = False) -> list[Pair]:
    """The pairs a run of cfg uses: those of kd.feature_pair whose teacher is among the run's teachers, each with
    kd.feature_weight when set. Empty without kd.features, with kd.feature_pair none, or for kd.alpha 0. every:
    each pair of kd.features with its own weight, whatever the run uses (to check them all before a sweep)."""
    kd = cfg.kd
    if not kd.features or (not every and (kd.feature_pair == NONE or kd.alpha == 0)):
        return []
    used = cfg.kd_teachers
    out = []
    for p in kd.features:
        name, loss = pair_name(p), p.get("loss", "hint")
        teacher = p.get("teacher") or used[0]
        weight = p.get("weight", DEFAULT_WEIGHTS[loss])
        if not every:
            if kd.feature_pair not in (ALL, name) or teacher not in used:
                continue
            weight = kd.feature_weight if kd.feature_weight is not None else weight
        out.append(Pair(name, teacher, p["teacher_layer"], p["student_layer"], loss, float(weight)))
    return out


def describe(cfg) -> str:
    """The feature pairs a run uses, for MLflow and the report: 'name (loss x weight)', or 'none'."""
    return ", ".join(f"{p.name} ({p.loss} x{p.weight:.4g})" for p in pairs(cfg)) or NONE


# --------------------------------------------------------------------------- losses


def _pool(f: torch.Tensor, size: tuple) -> torch.Tensor:
    """Average-pool the positions of (B, C, *positions) to size (unchanged when they already are)."""
    if tuple(f.shape[2:]) == tuple(size):
        return f
    return getattr(F, f"adaptive_avg_pool{len(size)}d")(f, size)


def _common(fs: torch.Tensor, ft: torch.Tensor) -> tuple:
    return tuple(min(a, b) for a, b in zip(fs.shape[2:], ft.shape[2:], strict=False))


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """(B, C, *positions) -> (B, positions): the channels' mean square at each position, L2-normalised."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Attention transfer: the mean squared difference of the normalised attention maps (see the module docstring)."""
    size = _common(fs, ft)
    return (attention_map(_pool(fs, size)) - attention_map(_pool(ft, size))).pow(2).mean()


def hint_loss(fs_regressed: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FitNets hint: the mean squared error between the regressed student output and the teacher's."""
    if fs_regressed.ndim > 2:
        ft = _pool(ft, tuple(fs_regressed.shape[2:]))
    return F.mse_loss(fs_regressed.float(), ft.float())


def gram(f: torch.Tensor) -> torch.Tensor:
    """The batch's similarity matrix (B x B) of the flattened outputs, each row L2-normalised."""
    z = f.float().flatten(1)
    return F.normalize(z @ z.t(), dim=1)


def sp_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving: ||G_s - G_t||_F^2 / B^2."""
    return (gram(fs) - gram(ft)).pow(2).sum() / fs.shape[0] ** 2


def regressor(s_shape: tuple, t_shape: tuple, where: str) -> nn.Module:
    """The hint's adapter from the student's output shape to the teacher's (batch first): a linear layer for (B, D),
    a 1x1 convolution followed by pooling to the smaller positions for (B, C, *positions)."""
    if len(s_shape) == 2 and len(t_shape) == 2:
        return nn.Linear(s_shape[1], t_shape[1])
    if len(s_shape) == len(t_shape) and 3 <= len(s_shape) <= 5:
        size = tuple(min(a, b) for a, b in zip(s_shape[2:], t_shape[2:], strict=False))
        conv = getattr(nn, f"Conv{len(size)}d")(s_shape[1], t_shape[1], 1)
        return nn.Sequential(conv, getattr(nn, f"AdaptiveAvgPool{len(size)}d")(size))
    raise FeatureError(
        f"{where}: no adapter joins the student's output {_shape(s_shape)} to the teacher's "
        f"{_shape(t_shape)} (hint needs both (batch, features) or both (batch, channels, positions) "
        "with as many position axes); pick layers of the same kind (kdtrain layers SWEEPFILE) or "
        "use loss sp, which compares any two shapes"
    )


def _shape(shape) -> str:
    return "(" + ", ".join(["B", *map(str, shape[1:])]) + ")"


def _check_at(s_shape: tuple, t_shape: tuple, where: str) -> None:
    if len(s_shape) < 3 or len(s_shape) != len(t_shape):
        raise FeatureError(
            f"{where}: attention transfer needs two outputs with positions, (batch, channels, length) "
            f"or (batch, channels, height, width), as many axes each; got the student's "
            f"{_shape(s_shape)} and the teacher's {_shape(t_shape)} (use loss sp, or hint for two "
            "(batch, features) outputs)"
        )


# --------------------------------------------------------------------------- hooks


def module_paths(model: nn.Module) -> list[str]:
    """Every submodule's path in the model (get_submodule's names), the model itself left out."""
    return [name for name, _ in model.named_modules() if name]


def find(model: nn.Module, path: str, where: str, whose: str) -> nn.Module:
    """model.get_submodule(path), or a FeatureError naming the nearest valid paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        near = difflib.get_close_matches(path, module_paths(model), n=5, cutoff=0)
        raise FeatureError(
            f"{where}: no module {path!r} in the {whose}; nearest: {', '.join(near) or 'none'} "
            "(kdtrain layers SWEEPFILE lists every path with its output shape)"
        ) from None


class _Stop(Exception):
    """Raised by a teacher's last hooked layer: the rest of its forward is not needed."""


def _tensor(out):
    """A layer's output as captured: the first of a tuple or list (an RNN's), a copy of a tensor (its own output,
    before an in-place activation after it changes it); anything else as is (refused after the dry batch)."""
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    return out.clone() if isinstance(out, torch.Tensor) else out


class FeatureKD:
    """The feature pairs of one run: hooks on the student's and the teachers' layers, the adapters, the loss.

    ``teachers`` maps a teacher's name to (the callable taking the student's inputs, the module whose paths the
    pairs name). ``attach`` hooks and sizes the adapters from a dry batch; after each student forward, ``loss(x)``
    runs the teachers on x and returns the weighted sum; ``close`` removes the hooks."""

    def __init__(self, pairs: list[Pair], teachers: dict):
        self.pairs, self.teachers = pairs, teachers
        self.handles: list = []
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, dict[str, torch.Tensor]] = {}
        self.running: str | None = None  # the teacher whose forward this object runs (its hooks capture, then stop)
        self.dry = False  # the dry batch: the student runs in eval mode and is captured all the same
        self.adapters = None

    def _student_hook(self, path: str):
        def hook(module, inputs, out):
            # training steps and the dry batch only (not evaluation); a module called twice in one forward (a
            # shared activation) gives its first output, as the teacher's does
            if (module.training or self.dry) and path not in self.student_out:
                self.student_out[path] = _tensor(out)

        return hook

    def _teacher_hook(self, name: str, path: str, needed: int):
        def hook(module, inputs, out):
            if self.running != name:  # the same teacher run for its logits elsewhere: not ours
                return
            got = self.teacher_out[name]
            got[path] = _tensor(out)
            if len(got) == needed:
                raise _Stop

        return hook

    def attach(self, student: nn.Module, x: torch.Tensor, device, whose: str = "student") -> nn.ModuleDict:
        """Hook the layers (a wrong path: FeatureError), run one dry batch x through the student (eval mode, no
        gradient) and the teachers, and size the adapters from the outputs' shapes. Returns the adapters (on
        device), for the optimizer. ``whose`` names the student in errors."""
        hooked = set()
        for p in self.pairs:
            if p.student_layer not in hooked:
                mod = find(root(student), p.student_layer, f"kd.features ({p.name}).student_layer", whose)
                self.handles.append(mod.register_forward_hook(self._student_hook(p.student_layer)))
                hooked.add(p.student_layer)
        # each student forward starts afresh (its hooks keep the first output of each layer)
        self.handles.append(student.register_forward_pre_hook(lambda module, inputs: self.student_out.clear()))
        for name, (_, inner) in self.teachers.items():
            mine = {p.teacher_layer: p.name for p in self.pairs if p.teacher == name}
            for path, pair in mine.items():
                mod = find(inner, path, f"kd.features ({pair}).teacher_layer", f"teacher {name}")
                self.handles.append(mod.register_forward_hook(self._teacher_hook(name, path, len(mine))))
        for call, _ in self.teachers.values():
            call.to(device).eval()
        was = student.training
        student.eval()
        self.dry = True
        try:
            with torch.no_grad():
                student(x)
                t_out = self.teacher_outputs(x)
        finally:
            self.dry = False
            student.train(was)
        adapters = {}
        for i, p in enumerate(self.pairs):
            where = f"kd.features ({p.name})"
            s, t = self.student_out.get(p.student_layer), t_out[p.teacher].get(p.teacher_layer)
            for out, side, path in ((s, "student", p.student_layer), (t, f"teacher {p.teacher}", p.teacher_layer)):
                if not isinstance(out, torch.Tensor):
                    raise FeatureError(
                        f"{where}: the {side}'s layer {path!r} "
                        + (
                            "did not run in its forward"
                            if out is None
                            else f"returns a {type(out).__name__}, not a tensor"
                        )
                    )
            if p.loss == "hint":
                adapters[str(i)] = regressor(tuple(s.shape), tuple(t.shape), where)
            elif p.loss == "at":
                _check_at(tuple(s.shape), tuple(t.shape), where)
        self.adapters = nn.ModuleDict(adapters).to(device)
        return self.adapters

    def teacher_outputs(self, x: torch.Tensor, cast=contextlib.nullcontext) -> dict[str, dict[str, torch.Tensor]]:
        """Each teacher's hooked layers on x (no gradient; its forward stops after the last of them), run under
        cast() (the run's autocast)."""
        for name, (call, _) in self.teachers.items():
            self.teacher_out[name] = {}
            self.running = name
            try:
                with torch.no_grad(), cast():
                    call(x)
            except _Stop:
                pass
            finally:
                self.running = None
        return self.teacher_out

    def loss(self, x: torch.Tensor, cast=contextlib.nullcontext) -> torch.Tensor:
        """The weighted sum of the pairs' losses (in float32) for the batch x the student has just run on; the
        teachers run under cast()."""
        t_out = self.teacher_outputs(x, cast)
        total = 0.0
        for i, p in enumerate(self.pairs):
            fs, ft = self.student_out[p.student_layer].float(), t_out[p.teacher][p.teacher_layer].float()
            if p.loss == "hint":
                term = hint_loss(self.adapters[str(i)](fs), ft)
            else:
                term = at_loss(fs, ft) if p.loss == "at" else sp_loss(fs, ft)
            total = total + p.weight * term
        return total

    def close(self) -> None:
        """Remove every hook: the student leaves the run as it came."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.student_out.clear()
        self.teacher_out.clear()


def root(model: nn.Module) -> nn.Module:
    """The module whose paths a pair names: the network inside kdtrain's wrappers (teachers[].output's, and those
    that adapt torchvision models to 1-channel images and resnet18 to signals), so that torchvision's own paths
    (layer3) name its layers."""
    from kdtrain.distill.nets import As2d, PickOutput, RepeatChannels

    while isinstance(model, (PickOutput, RepeatChannels, As2d)):
        model = model.model if isinstance(model, PickOutput) else model.net
    return model


def for_pool(chosen: list[Pair], pool: dict, temperature: float) -> FeatureKD:
    """The FeatureKD of these pairs over the loaded teacher pool (kdtrain.distill.teachers.Teacher by name). A teacher
    without a model whose layers can be hooked is a FeatureError."""
    teachers = {}
    for name in dict.fromkeys(p.teacher for p in chosen):
        t = pool[name]
        inner = root(t.model) if t.model is not None else None
        if inner is None or isinstance(inner, torch.jit.ScriptModule):
            what = (
                "a TorchScript file, whose layers run compiled (no hook sees them)"
                if inner is not None
                else f"known by its outputs only ({t.arch})"
            )
            raise FeatureError(
                f"kd.features: teacher {name!r} is {what}; feature distillation needs its model: "
                "give its arch with a state dict or an MLflow model, or drop kd.features"
            )
        teachers[name] = (t.as_student_model(temperature), inner)
    return FeatureKD(chosen, teachers)


def check_paths(cfg, ds, ends: list[dict]) -> None:
    """Every pair of kd.features built and run once on 2 rows of the data, before anything trains: each path found
    (else the nearest valid ones), each teacher able to give features, each pair's shapes joined by its loss. The
    student is checked as the base config builds it and at the ends of the searched student.arch, width and depth
    (``ends``: kdtrain.study.space.extreme_students at both ends; a shallower student may lack the layer). FeatureError on the first problem."""
    import dataclasses

    from kdtrain.distill import models, teacher_data, teachers

    chosen = pairs(cfg, every=True)
    if not chosen:
        return
    pool = {}
    for name in dict.fromkeys(p.teacher for p in chosen):
        t = cfg.teacher(name)
        how = teachers.kind(t)
        if how in ("logits", "onnx", "torchscript"):
            what = {
                "logits": "a logits file",
                "onnx": "an ONNX file",
                "torchscript": "a TorchScript file, whose layers run compiled where no hook sees them",
            }[how]
            raise FeatureError(
                f"kd.features: teacher {name!r} is {what}: it gives logits only, no layer to hook; "
                "give its arch with a state dict or an MLflow model, or drop kd.features"
            )
        tds, view = teacher_data.domain(t, cfg, ds)
        model = teachers.build(t, tds).eval()
        pool[name] = (teachers.TeacherView(model, view, None, 1.0), root(model))
    x = ds.x_val[:2].cpu()
    shapes = [dict(s) for s in ends]
    variants = [cfg.student] + [
        dataclasses.replace(cfg.student, **{k.split(".")[1]: v for k, v in s.items()}) for s in shapes
    ]
    seen = []
    for sc in variants:
        key = (sc.arch, sc.width, sc.depth)
        if key in seen:
            continue
        seen.append(key)
        whose = (
            "student"
            if len(seen) == 1
            else f"student as a trial may build it ({sc.arch}, width {sc.width}"
            + (f", depth {sc.depth})" if sc.depth is not None else ")")
        )
        kd = FeatureKD(chosen, pool)
        try:
            kd.attach(models.from_config(sc, ds.input_shape, ds.num_classes), x, torch.device("cpu"), whose)
        finally:
            kd.close()
