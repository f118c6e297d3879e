"""The distillation loss and multi-teacher aggregation.

    loss = alpha * T^2 * KL(p_teacher(T) || p_student(T)) + (1 - alpha) * CE(student, labels)

KL uses ``batchmean``; alpha weights the teacher term, as in Hinton et al.
(torchdistill's alpha weights the cross-entropy instead: theirs = 1 - ours).

Every aggregation of K teachers reduces to a soft target distribution ``p`` and
a per-sample constant ``c`` (the target's negative entropy), with
``KD = mean_i(c_i - sum_j p_ij log q_ij)`` where q is the student's tempered
softmax:

- ``mean_probs``:  p = sum_k w_k softmax(t_k / T),              c = sum p log p
- ``mean_logits``: p = softmax(sum_k w_k t_k / T),              c = sum p log p
- ``mean_kl``:     KD = sum_k w_k KL(p_k || q), so p is the same mixture as
  mean_probs and c = sum_k w_k sum p_k log p_k.

So mean_kl and mean_probs differ only by a constant (the Jensen gap between
the teachers): same gradients, different loss values. Computing (p, c) once
per training run from cached teacher logits makes a KD step cost what a plain
cross-entropy step costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


ENSEMBLES = ("mean_probs", "mean_logits", "mean_kl")
"""kd.ensemble: how soft_targets aggregates several teachers."""


def soft_targets(teacher_logits: torch.Tensor, temperature: float, ensemble: str = "mean_probs",
                 weights: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (K, N, C) -> (target probabilities (N, C), per-sample constant (N,))."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r} ({', '.join(ENSEMBLES)})")
    if teacher_logits.ndim == 2:
        teacher_logits = teacher_logits[None]
    k = teacher_logits.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = (w / w.sum()).to(teacher_logits.device)[:, None, None]
    t = teacher_logits.float() / temperature
    if ensemble == "mean_logits":
        logp = F.log_softmax((w * t).sum(0), dim=-1)
        p = logp.exp()
        return p, (p * logp).sum(-1)
    logp_k = F.log_softmax(t, dim=-1)
    p_k = logp_k.exp()
    p = (w * p_k).sum(0)
    if ensemble == "mean_probs":
        return p, torch.xlogy(p, p).sum(-1)
    return p, (w * p_k * logp_k).sum((0, 2))  # mean_kl


def kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor] | None,
            temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, kd, ce). ``target`` is soft_targets(...) for this batch, or None (no teacher)."""
    ce = F.cross_entropy(student_logits, labels)
    if target is None or alpha == 0:
        kd = torch.zeros((), device=student_logits.device)
        return (1 - alpha) * ce if target is not None else ce, kd, ce
    p, c = target
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = (c - (p * log_q).sum(-1)).mean()  # = KL(p || q) with batchmean
    loss = alpha * temperature**2 * kd + (1 - alpha) * ce
    return loss, kd, ce


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.7, ensemble: str = "mean_probs",
                      weights: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One call: teacher logits (N, C) or (K, N, C) -> (loss, kd, ce)."""
    target = soft_targets(teacher_logits, temperature, ensemble, weights)
    return kd_loss(student_logits, labels, target, temperature, alpha)
