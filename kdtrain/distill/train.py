"""One training loop, top to bottom. Knows nothing of Optuna or MLflow.

The data already lives on the device as tensors; each epoch is a ``randperm``
and a slice per step (no DataLoader: for in-memory sets it only adds Python
overhead per batch). With cached teacher logits the teachers' side of the loss is
computed once per run (kdtrain.distill.losses.teacher_targets), so a KD step costs about
what a cross-entropy step costs. Feature pairs (kd.features, kdtrain.distill.features) add
the teachers' forward up to their hooked layers on each batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kdtrain.data.datasets import Dataset, augment
from kdtrain.distill.losses import kd_loss, teacher_targets
from kdtrain.errors import ConfigError, KdtrainError
from kdtrain.lazy import Module
from kdtrain.schema import LossConfig, TrainConfig

torch, nn = Module("torch"), Module("torch.nn")  # imported on first use: OPTIMIZERS and SCHEDULES need neither


class DivergedError(KdtrainError):
    """The loss became NaN or infinite; the run is stopped."""

    def __init__(self, epoch: int, loss: float):
        self.epoch, self.loss = epoch, loss
        super().__init__(f"training diverged: loss is {loss} at epoch {epoch} (try a lower train.lr)")


@dataclass
class Distill:
    """What the student learns from. ``logits`` (K, N_train, C) are the teachers'
    cached outputs on the training set; ``models`` are run online instead when
    augmentation changes the inputs every epoch."""

    temperature: float
    alpha: float
    ensemble: str = "mean_probs"
    weights: list[float] | None = None
    logits: torch.Tensor | None = None
    models: list[nn.Module] | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    """The distillation term and its settings (kd.loss, kd.standardize, kd.dkd_*, kd.warmup_epochs, kd.dist_*)."""
    features: object = None
    """kd.features' pairs (a kdtrain.distill.features.FeatureKD), run beside the logit term; None for logits only."""


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    train_loss: float
    kd_loss: float
    ce_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    """Wall time of this epoch (training and validation)."""


@dataclass
class TrainResult:
    """What one training gives back: the trained model, its validation and test accuracy, and the per-epoch history."""

    model: nn.Module
    val_accuracy: float
    test_accuracy: float
    seconds: float
    device: str
    history: list[EpochStats] = field(default_factory=list)
    steps: int = 0
    """Optimizer steps taken (a no-teacher run on scarce labels takes as many as a distilled run)."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            [
                (
                    f"train.device: {name}, but no CUDA device is available here; use --set "
                    "train.device=auto (CUDA when present, else the CPU)"
                )
            ],
            "train.device",
        )
    return torch.device(name)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA) so that model init and shuffling repeat."""
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def autocast(device: torch.device, bf16: bool):
    # bf16 needs no loss scaling; on CPU autocast is slower for these small models, so it is CUDA-only.
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, bf16: bool = True) -> torch.Tensor:
    """Logits for x in eval mode (float32), in batches on x's device."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(x.device, bf16):
        out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, bf16: bool = True) -> float:
    return (predict(model, x, batch_size, bf16).argmax(1) == y).float().mean().item()


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, cfg, **kw: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay, **kw
    ),
    "adam": lambda params, cfg, **kw: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw),
    "adamw": lambda params, cfg, **kw: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw),
}
"""train.optimizer -> factory(params, TrainConfig, **kernel options)."""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Fused kernels: one op per step instead of a dozen per parameter tensor. For the tiny students
    # of a sweep the optimizer step is overhead-bound: fused Adam made a batch-64 cnn1d epoch 1.7x
    # faster on a 2-core CPU (measured: 5 epochs 1.78 s -> 1.04 s).
    if cfg.optimizer not in OPTIMIZERS:
        raise KdtrainError(f"unknown optimizer {cfg.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    params = list(model.parameters())
    try:
        return OPTIMIZERS[cfg.optimizer](params, cfg, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return OPTIMIZERS[cfg.optimizer](params, cfg, foreach=True)


def _onecycle(progress: float) -> float:
    warm = 0.3
    if progress < warm:  # from lr/25 up to lr, then cosine down to lr/1e4
        return 0.04 + 0.96 * progress / warm
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm)))


SCHEDULES: dict[str, Callable[[float], float]] = {
    "onecycle": _onecycle,  # 30% warm-up, cosine down
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}
"""train.schedule -> multiplier of the peak lr at a fraction of training done (0..1)."""


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr at a step: one-cycle (30% warm-up, cosine down), cosine, constant."""
    return SCHEDULES[schedule](step / max(1, total))


def _closing_features(loop):
    """kd.features' hooks are removed however the run ends (done, pruned, diverged, interrupted): the student and
    the pool's teachers (shared by a worker's trials) leave the run as they came."""

    @functools.wraps(loop)
    def run(model, data, cfg, *, distill: Distill | None = None, **kw):
        try:
            return loop(model, data, cfg, distill=distill, **kw)
        finally:
            if distill is not None and distill.features is not None:
                distill.features.close()

    return run


@_closing_features
def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    distill: Distill | None = None,
    augment_kinds: list[str] | tuple = (),
    on_epoch: Callable[[EpochStats], None] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    epoch_guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data``; with ``distill``, against its teachers. Returns the trained model
    and its val/test accuracy. ``on_epoch`` may raise to stop the run (e.g. pruning); ``epoch_guard``
    is entered around each epoch (sweeps use it to keep latency measurements off busy cores)."""
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    epochs = epochs or cfg.epochs
    peak_lr = lr or cfg.lr
    data = data.to(device)
    model.to(device)
    n = len(data.y_train)
    bs = min(cfg.batch_size, n)
    # feature pairs: hooks, and adapters sized from one dry batch, trained with the student (not part of it)
    features = distill.features if distill is not None and distill.alpha > 0 else None
    adapters = features.attach(model, data.x_train[:bs], device) if features is not None else None
    opt = make_optimizer(model if adapters is None else nn.ModuleList([model, adapters]), cfg)
    steps_per_epoch = n // bs  # the partial last batch is dropped; each epoch reshuffles
    total_steps = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling stream, independent of model init
    # Without a teacher only labelled rows teach anything: train on them alone, for as many steps as a distilled
    # run over every row takes (the same number of epochs would give 180 labelled rows one step per epoch).
    pool = None
    if (distill is None or distill.alpha == 0) and data.labelled_rows < n:
        pool = torch.nonzero(data.y_train >= 0).flatten().cpu()
        bs = min(cfg.batch_size, len(pool))

    target = None  # the teachers' side of the loss over the whole train set, computed once
    teacher_models = None
    if distill is not None and distill.alpha > 0:
        if distill.logits is not None and not augment_kinds:
            target = teacher_targets(
                distill.logits.to(device),
                data.y_train,
                distill.temperature,
                distill.ensemble,
                distill.weights,
                distill.loss,
            )
        elif distill.models:  # augmented inputs change every epoch: run the teachers on each batch
            teacher_models = [t.to(device).eval() for t in distill.models]
        else:
            raise KdtrainError("distillation with augmentation needs the teacher models, not only cached logits")

    spec = distill.loss if distill is not None else LossConfig()
    history: list[EpochStats] = []
    start = time.perf_counter()
    step = 0
    guard = epoch_guard or contextlib.nullcontext
    for epoch in range(1, epochs + 1):
        with guard():
            t0 = time.perf_counter()
            model.train()
            sums = torch.zeros(3, device=device)  # loss, kd, ce: summed on device, read once per epoch
            if pool is None:
                perm = torch.randperm(n, generator=gen).to(device)
            else:  # the labelled rows, reshuffled each time round, until the epoch's steps are filled
                rounds = -(-steps_per_epoch * bs // len(pool))
                perm = torch.cat([pool[torch.randperm(len(pool), generator=gen)] for _ in range(rounds)]).to(device)
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                x, y = data.x_train[idx], data.y_train[idx]
                batch_target = None
                if augment_kinds:
                    x = augment(x, list(augment_kinds), gen)
                if teacher_models is not None:
                    with torch.no_grad(), autocast(device, cfg.bf16):
                        t_logits = torch.stack([t(x).float() for t in teacher_models])
                    batch_target = teacher_targets(
                        t_logits, y, distill.temperature, distill.ensemble, distill.weights, distill.loss
                    )
                elif target is not None:
                    batch_target = target.take(idx)
                for g in opt.param_groups:
                    g["lr"] = peak_lr * lr_factor(step, total_steps, cfg.schedule)
                with autocast(device, cfg.bf16):
                    logits = model(x)
                loss, kd, ce = kd_loss(
                    logits.float(),
                    y,
                    batch_target,
                    distill.temperature if distill else 1.0,
                    distill.alpha if distill else 0.0,
                    spec,
                    epoch,
                )  # epoch: DKD's warm-up
                if features is not None:  # the teachers run online, up to their hooked layers
                    loss = loss + features.loss(x, lambda: autocast(device, cfg.bf16))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.stack([loss.detach(), kd.detach(), ce.detach()])
                step += 1
            loss_m, kd_m, ce_m = (sums / max(1, steps_per_epoch)).tolist()  # one sync per epoch
            if not math.isfinite(loss_m):
                raise DivergedError(epoch, loss_m)
            val_acc = accuracy(model, data.x_val, data.y_val, cfg.eval_batch_size, cfg.bf16)
        stats = EpochStats(
            epoch=epoch,
            epochs=epochs,
            train_loss=loss_m,
            kd_loss=kd_m,
            ce_loss=ce_m,
            val_accuracy=val_acc,
            lr=opt.param_groups[0]["lr"],
            seconds=time.perf_counter() - t0,
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)

    test_acc = accuracy(model, data.x_test, data.y_test, cfg.eval_batch_size, cfg.bf16)
    return TrainResult(
        model=model,
        val_accuracy=history[-1].val_accuracy,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
        device=str(device),
        history=history,
        steps=step,
    )
