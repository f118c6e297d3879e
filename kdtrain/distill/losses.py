"""The distillation losses (``kd.loss``) and multi-teacher aggregation (``kd.ensemble``).

Every loss is combined with the label cross-entropy the same way:

    loss = alpha * w(epoch) * T^2 * kd + (1 - alpha) * CE(student, labels)

``kd`` is the loss's distillation term without its T^2 factor: the paper's term D is ``T^2 * kd``. ``kd`` is what
``kd_loss`` returns and what kdtrain logs as the ``kd_loss`` metric, so that the metric keeps one meaning across
losses and temperatures (for ``kd``: KL(p_teacher(T) || p_student(T)) with ``batchmean``, as before). w(epoch) is
DKD's warm-up, 1 for the other losses. **alpha weights the teacher**, as in Hinton et al. (torchdistill's alpha
weights the cross-entropy instead: theirs = 1 - ours). This holds for every loss: the DKD paper adds its two terms
to a cross-entropy of weight 1 (``CE + dkd_alpha*TCKD + dkd_beta*NCKD``); here kd.dkd_alpha and kd.dkd_beta weight
the terms inside D and kd.alpha still balances D against CE (kd.alpha 0.5 is the paper's objective halved).

Below, p = softmax(z_teacher / T), q = softmax(z_student / T), g is the sample's label, means are over the batch.

Unlabelled rows (label UNLABELLED = -1: data.labels, data.unlabeled) enter the distillation term like any other
row; the cross-entropy averages over the labelled rows of the batch only (0 for a batch without any). kd and
dist need no label; dkd, which splits the target class from the rest, takes the teachers' top class (of the
aggregated target distribution) as g on an unlabelled row. A teacher with other classes than the student's
(teachers[].classes) gives logits mapped by ``map_logits`` before any of this, at the run's temperature.

- ``kd`` (Hinton et al. 2015): kd = KL(p || q).
- ``dkd`` (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"). With the binary split b = [p_g, 1 - p_g]
  and the distribution over the non-target classes p^_j = p_j / (1 - p_g), j != g (and the same for q):
  TCKD = KL(b_p || b_q), NCKD = KL(p^ || q^), kd = dkd_alpha * TCKD + dkd_beta * NCKD, so that
  D = T^2 * (dkd_alpha * TCKD + dkd_beta * NCKD). The paper's identity KL(p || q) = TCKD + (1 - p_g) * NCKD shows
  classic KD as DKD with its NCKD weight tied to the teacher's confidence. Warm-up: w(epoch) =
  min(epoch / kd.warmup_epochs, 1), epochs counted from 1; kd.warmup_epochs 0 (the default) means none.
  Checked against mdistiller's ``dkd_loss`` (megvii-research/mdistiller, mdistiller/distillers/DKD.py). There
  (1) each of TCKD and NCKD is multiplied by T^2, which the paper's equations do not show: kdtrain follows the
  code; (2) q^ and p^ come from a softmax with the target logit pushed down by 1000 (an approximation), here
  exactly, by log-sum-exp over the non-target classes; (3) the warm-up is ``min(epoch / WARMUP, 1)`` with
  WARMUP = 20 of a 240-epoch CIFAR schedule (mdistiller/engine/cfg.py). kdtrain's default is 0 rather than 20:
  20 epochs would be two thirds of the default 30-epoch run, and the default one-cycle schedule already warms up
  the learning rate; set about train.epochs / 12 to match the paper's proportion.
- ``dist`` (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"). With rho the Pearson
  correlation, the batch's probabilities P (teacher) and Q (student), B x C:
  inter = 1 - mean_i rho(P[i, :], Q[i, :]) (each sample's relation between classes),
  intra = 1 - mean_j rho(P[:, j], Q[:, j]) (each class's relation across the batch: a batch statistic, so it
  needs batches of 2 or more), kd = dist_beta * inter + dist_gamma * intra, D = T^2 * kd. Checked against the
  ``DIST`` class of the authors' code (hunto/image_classification_sota, lib/models/losses/dist_kd.py; the same
  functions are in hunto/DIST_KD, segmentation/losses/dist_kd.py): rho is the cosine of the centred vectors with
  an epsilon, so a vector without variance correlates 0 (here the same, with the epsilon on each norm). That
  version has no temperature and no tau^2, i.e. T = 1, where kdtrain's dist is the same. kdtrain uses the
  tempered form, softmax(Z / T) and tau^2 on both terms, as the tempered copies of the class do (e.g.
  huawei-noah/Efficient-Computing, Distillation/VanillaKD/losses/dist.py) and as kdtrain's convention wants.
- ``kd.standardize`` (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation"): each sample's
  teacher and student logits are z-scored, (z - mean(z)) / std(z) over the classes, before dividing by T; the
  loss is then unchanged by shifting or positively scaling either logit vector. For kd and dkd (the paper's
  reference applies it to KD and DKD); dist takes no standardisation (the paper defines none for it, so
  validation refuses the pair). Several teachers are z-scored each, before aggregation. Checked against
  ``normalize`` and ``kd_loss`` in sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py and
  DKD.py: both keep the T^2 factor, as here. The code divides by ``1e-7 + torch.std`` (the unbiased, 1/(C-1)
  std); the paper's Algorithm 1 uses the 1/C std, as kdtrain does. The two differ by a constant factor, the same
  as multiplying T by sqrt(C / (C - 1)).

Aggregation of K teachers (kd.ensemble, weights w_k from kd.weights) reduces to "components": log target
distributions with weights, against which the per-component loss terms are averaged:

- ``mean_probs``:  one component, p = sum_k w_k softmax(t_k / T)
- ``mean_logits``: one component, p = softmax(sum_k w_k t_k / T)
- ``mean_kl``:     each teacher is a component of weight w_k: the per-teacher terms (KL for kd, TCKD and NCKD for
  dkd, inter and intra for dist) are averaged.

Every loss works with every ensemble. For kd and dkd the terms are cross-entropies against the target plus a
per-sample constant (the target's negative entropy), and cross-entropy is linear in the target, so the average over
components is one target distribution and one constant per sample: mean_kl and mean_probs differ for kd only by a
constant (the teachers' Jensen gap: same gradients, different loss values), while for dkd they differ in NCKD's
target (the mixture of the teachers' non-target distributions, not the non-target part of the mixture). dist's
inter term is linear in the teacher's centred, normalised rows, so it also reduces to one vector per sample; its
intra term is a batch statistic, so the teachers' probabilities are kept and centred per batch.

All this teacher-side work is done once per training run from cached logits (``teacher_targets``); a step then
adds only the student's side: a log-softmax for kd, two log-sum-exps for dkd, two centrings of the batch for dist.
For the tiny students of a sweep a step is overhead-bound, so each op shows (measured on a 2-core CPU, width-16
mlp, batch 64: 0.18 ms a step with cross-entropy only, 0.29 kd, 0.37 kd standardised, 0.48 dkd, 0.50 dist).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdtrain.lazy import Module
from kdtrain.schema import LossConfig

torch, F = Module("torch"), Module("torch.nn.functional")  # imported on first use: LOSSES and ENSEMBLES need neither


ENSEMBLES = ("mean_probs", "mean_logits", "mean_kl")
"""kd.ensemble: how several teachers are aggregated."""

LOSSES = ("kd", "dkd", "dist")
"""kd.loss: the distillation term (see the module docstring)."""

LOSS_SETTINGS = {
    "kd.standardize": ("kd", "dkd"),
    "kd.dkd_alpha": ("dkd",),
    "kd.dkd_beta": ("dkd",),
    "kd.warmup_epochs": ("dkd",),
    "kd.dist_beta": ("dist",),
    "kd.dist_gamma": ("dist",),
}
"""The settings only some losses use -> those losses. A sweep suggests them only to trials of these losses."""

EPS = 1e-8
"""Keeps a z-score and a correlation finite for a vector without variance (it then standardises/correlates to 0)."""


@dataclass(frozen=True)
class Targets:
    """The teachers' side of a loss over N samples (the first dimension of each tensor), computed once per run;
    ``take(idx)`` selects a batch. ``weights`` are dist's component weights (not per sample)."""

    loss: str
    tensors: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> Targets:
        return Targets(self.loss, {k: v[idx] for k, v in self.tensors.items()}, self.weights)


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score over the last dimension with the 1/C std (Sun et al. 2024, Algorithm 1). The epsilon sits inside the
    square root so that the gradient stays finite for a constant vector."""
    centred = logits - logits.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + EPS**2).sqrt()


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred and normalised along dim: the Pearson correlation of two vectors is the dot product of these."""
    centred = x - x.mean(dim, keepdim=True)
    return centred / centred.norm(dim=dim, keepdim=True).clamp_min(EPS)


def _neg_entropy(logp: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return torch.xlogy(p, p).sum(-1)


def _components(
    teacher_logits: torch.Tensor, temperature: float, ensemble: str, weights: list[float] | None, standardized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (N, C) or (K, N, C) -> log target distributions (K', N, C) and their weights (K',)."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r} ({', '.join(ENSEMBLES)})")
    if teacher_logits.ndim == 2:
        teacher_logits = teacher_logits[None]
    k = teacher_logits.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = (w / w.sum()).to(teacher_logits.device)
    t = teacher_logits.float()
    if standardized:
        t = standardize(t)  # each teacher on its own, before aggregation
    t = t / temperature
    one = torch.ones(1, device=t.device)
    if ensemble == "mean_logits":
        return F.log_softmax((w[:, None, None] * t).sum(0), dim=-1)[None], one
    logp = F.log_softmax(t, dim=-1)
    if ensemble == "mean_kl":
        return logp, w
    # mean_probs: the log of the mixture, in log space so that no probability underflows to log(0)
    return torch.logsumexp(logp + w.log()[:, None, None], dim=0)[None], one


def _kd_targets(logp: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> Targets:
    p = (w[:, None, None] * logp.exp()).sum(0)
    return Targets("kd", {"p": p, "c": (w[:, None] * _neg_entropy(logp)).sum(0)})


def _dkd_targets(logp: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> Targets:
    # an unlabelled row (label < 0) splits target from non-target classes at the teachers' top class
    top = (w[:, None, None] * logp.exp()).sum(0).argmax(-1)
    labels = torch.where(labels >= 0, labels, top)
    target = F.one_hot(labels, logp.shape[-1]).bool().expand_as(logp)
    log_rest = logp.masked_fill(target, float("-inf")).logsumexp(-1)  # log(1 - p_g), without cancellation
    log_b = torch.stack([logp.gather(-1, labels.expand(logp.shape[:-1])[..., None])[..., 0], log_rest], -1)
    log_hat = (logp - log_rest[..., None]).masked_fill(target, float("-inf"))  # log p^, -inf at the target
    wn = w[:, None]
    return Targets(
        "dkd",
        {
            "g": labels,
            "b": (wn[..., None] * log_b.exp()).sum(0),
            "c_b": (wn * _neg_entropy(log_b)).sum(0),
            "hat": (wn[..., None] * log_hat.exp()).sum(0),
            "c_hat": (wn * _neg_entropy(log_hat)).sum(0),
        },
    )


def _dist_targets(logp: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> Targets:
    p = logp.exp()
    inter = (w[:, None, None] * _unit(p, -1)).sum(0)  # rows: linear in them, so one vector per sample
    return Targets("dist", {"u": inter, "p": p.transpose(0, 1)}, weights=w)  # p: (N, K', C) for the intra term


_TARGETS = {"kd": _kd_targets, "dkd": _dkd_targets, "dist": _dist_targets}


def labelled_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled rows (label >= 0); 0 for a batch without any. No host sync: the
    count is a tensor, so a batch of unlabelled rows costs no .item()."""
    mask = labels >= 0
    per_row = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp_min(1)


def map_logits(logits: torch.Tensor, groups: list[list[int]] | None, temperature: float) -> torch.Tensor:
    """A teacher's logits (..., C_teacher) -> logits over the student's classes (..., C_student) whose softmax at
    this temperature is the teacher's tempered softmax summed within each group (groups of one: renormalised over
    the subset): T * logsumexp(z_g / T). A subset is a plain selection, at every temperature. None: unchanged."""
    if groups is None:
        return logits
    if all(len(g) == 1 for g in groups):
        return logits[..., [g[0] for g in groups]]
    z = logits.float() / temperature
    return temperature * torch.stack([z[..., g].logsumexp(-1) for g in groups], -1)


def _check(spec: LossConfig) -> None:
    if spec.loss not in LOSSES:
        raise ValueError(f"unknown loss {spec.loss!r} ({', '.join(LOSSES)})")
    if spec.standardize and spec.loss == "dist":
        raise ValueError("standardize applies to the kd and dkd losses, not to dist")


def teacher_targets(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ensemble: str = "mean_probs",
    weights: list[float] | None = None,
    spec: LossConfig = LossConfig(),
) -> Targets:
    """Teacher logits (N, C) or (K, N, C) and the labels (N,) -> what ``kd_loss`` needs of the teachers."""
    _check(spec)
    logp, w = _components(teacher_logits, temperature, ensemble, weights, spec.standardize)
    return _TARGETS[spec.loss](logp, w, labels)


def soft_targets(
    teacher_logits: torch.Tensor, temperature: float, ensemble: str = "mean_probs", weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """kd's targets: teacher logits (K, N, C) -> (target probabilities (N, C), per-sample constant (N,))."""
    t = _kd_targets(*_components(teacher_logits, temperature, ensemble, weights, False), None).tensors
    return t["p"], t["c"]


def _kd_term(z: torch.Tensor, labels: torch.Tensor, t: Targets, spec: LossConfig) -> torch.Tensor:
    log_q = F.log_softmax(z, dim=-1)
    return (t.tensors["c"] - (t.tensors["p"] * log_q).sum(-1)).mean()  # = KL(p || q) with batchmean


def _dkd_term(z: torch.Tensor, labels: torch.Tensor, t: Targets, spec: LossConfig) -> torch.Tensor:
    labels = t.tensors["g"]  # the labels, or the teachers' top class on an unlabelled row
    target = F.one_hot(labels, z.shape[-1]).bool()
    log_all = z.logsumexp(-1)
    log_rest = z.masked_fill(target, float("-inf")).logsumexp(-1)  # log of the non-target classes' mass (x Z)
    log_b = torch.stack([z.gather(-1, labels[:, None])[:, 0] - log_all, log_rest - log_all], -1)
    tckd = t.tensors["c_b"] - (t.tensors["b"] * log_b).sum(-1)
    # log q^ is finite at the target class too, where p^ is exactly 0: no masked -inf enters the product
    nckd = t.tensors["c_hat"] - (t.tensors["hat"] * (z - log_rest[:, None])).sum(-1)
    return (spec.dkd_alpha * tckd + spec.dkd_beta * nckd).mean()


def _dist_term(z: torch.Tensor, labels: torch.Tensor, t: Targets, spec: LossConfig) -> torch.Tensor:
    q = F.softmax(z, dim=-1)
    inter = 1 - (_unit(q, -1) * t.tensors["u"]).sum(-1).mean()
    corr = (_unit(q, 0)[:, None, :] * _unit(t.tensors["p"], 0)).sum(0)  # (K', C): each class across the batch
    intra = 1 - (t.weights * corr.mean(-1)).sum()
    return spec.dist_beta * inter + spec.dist_gamma * intra


_TERMS = {"kd": _kd_term, "dkd": _dkd_term, "dist": _dist_term}


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target: Targets | tuple[torch.Tensor, torch.Tensor] | None,
    temperature: float,
    alpha: float,
    spec: LossConfig = LossConfig(),
    epoch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, kd, ce) for a batch: ``loss = alpha * w(epoch) * T^2 * kd + (1 - alpha) * ce``. ``target`` is
    teacher_targets(...) for this batch (or kd's (p, c) from soft_targets), or None (no teacher); ``epoch`` (from 1)
    drives DKD's warm-up. Rows labelled UNLABELLED (< 0) enter kd only: ce averages over the labelled rows."""
    ce = labelled_ce(student_logits, labels)
    if target is None or alpha == 0:
        kd = torch.zeros((), device=student_logits.device)
        return (1 - alpha) * ce if target is not None else ce, kd, ce
    if isinstance(target, tuple):
        target = Targets("kd", {"p": target[0], "c": target[1]})
    _check(spec)
    if target.loss != spec.loss:
        raise ValueError(f"targets were computed for the {target.loss} loss, not {spec.loss}")
    z = student_logits.float()
    if spec.standardize:
        z = standardize(z)
    kd = _TERMS[spec.loss](z / temperature, labels, target, spec)
    loss = alpha * spec.warmup(epoch) * temperature**2 * kd + (1 - alpha) * ce
    return loss, kd, ce


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
    ensemble: str = "mean_probs",
    weights: list[float] | None = None,
    *,
    loss: str = "kd",
    standardize: bool = False,
    dkd_alpha: float = 1.0,
    dkd_beta: float = 8.0,
    dist_beta: float = 1.0,
    dist_gamma: float = 1.0,
    warmup_epochs: int = 0,
    epoch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One call: teacher logits (N, C) or (K, N, C) -> (loss, kd, ce), with
    ``loss = alpha * w(epoch) * T^2 * kd + (1 - alpha) * ce`` (see the module docstring for kd of each loss)."""
    spec = LossConfig(
        loss=loss,
        standardize=standardize,
        dkd_alpha=dkd_alpha,
        dkd_beta=dkd_beta,
        warmup_epochs=warmup_epochs,
        dist_beta=dist_beta,
        dist_gamma=dist_gamma,
    )
    target = teacher_targets(teacher_logits, labels, temperature, ensemble, weights, spec)
    return kd_loss(student_logits, labels, target, temperature, alpha, spec, epoch)
