import pytest
import torch
import torch.nn.functional as F

from kdtrain.losses import distillation_loss, kd_loss, soft_targets


def classic(student, teacher, labels, T, alpha):
    """The formula from the articles, written out with nn.KLDivLoss."""
    kl = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1))
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student, labels)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(32, 10, generator=g) * 3
    t1 = torch.randn(32, 10, generator=g) * 3
    t2 = torch.randn(32, 10, generator=g) * 3
    y = torch.randint(0, 10, (32,), generator=g)
    return s, t1, t2, y


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.7), (20.0, 0.9), (0.5, 0.3)])
def test_equals_classic_formula_for_one_teacher(batch, T, alpha):
    s, t1, _, y = batch
    loss, kd, ce = distillation_loss(s, t1, y, T, alpha)
    assert torch.allclose(loss, classic(s, t1, y, T, alpha), atol=1e-5)
    assert torch.allclose(ce, F.cross_entropy(s, y))
    assert torch.allclose(kd, F.kl_div(F.log_softmax(s / T, 1), F.softmax(t1 / T, 1), reduction="batchmean"), atol=1e-6)


def test_alpha_zero_is_plain_cross_entropy(batch):
    s, t1, _, y = batch
    loss, _, _ = distillation_loss(s, t1, y, 4.0, 0.0)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_alpha_one_is_pure_kd(batch):
    s, t1, _, y = batch
    loss, kd, _ = distillation_loss(s, t1, y, 4.0, 1.0)
    assert torch.allclose(loss, 16.0 * kd)
    y_other = (y + 1) % 10  # labels no longer matter
    assert torch.allclose(loss, distillation_loss(s, t1, y_other, 4.0, 1.0)[0])


def test_no_teacher_is_cross_entropy(batch):
    s, _, _, y = batch
    loss, kd, ce = kd_loss(s, y, None, 4.0, 0.7)
    assert torch.allclose(loss, F.cross_entropy(s, y)) and kd.item() == 0


def test_aggregations_agree_for_one_teacher(batch):
    s, t1, _, y = batch
    vals = [distillation_loss(s, t1[None], y, 3.0, 0.8, ens)[0] for ens in ("mean_probs", "mean_logits", "mean_kl")]
    assert torch.allclose(vals[0], vals[1], atol=1e-5) and torch.allclose(vals[0], vals[2], atol=1e-5)


def test_aggregations_differ_for_two_teachers(batch):
    s, t1, t2, y = batch
    both = torch.stack([t1, t2])
    probs, logits, kl = (distillation_loss(s, both, y, 3.0, 0.8, ens)[1]
                         for ens in ("mean_probs", "mean_logits", "mean_kl"))
    assert not torch.allclose(probs, logits, atol=1e-3)
    assert not torch.allclose(probs, kl, atol=1e-3)
    # mean_kl is the average of the per-teacher KL terms, computed independently here
    per = [F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") for t in (t1, t2)]
    assert torch.allclose(kl, (per[0] + per[1]) / 2, atol=1e-5)
    # mean_probs is KL against the averaged tempered probabilities
    p = (F.softmax(t1 / 3, 1) + F.softmax(t2 / 3, 1)) / 2
    assert torch.allclose(probs, F.kl_div(F.log_softmax(s / 3, 1), p, reduction="batchmean"), atol=1e-5)
    # mean_logits is KL against the softmax of the averaged logits
    pl = F.softmax((t1 + t2) / 2 / 3, 1)
    assert torch.allclose(logits, F.kl_div(F.log_softmax(s / 3, 1), pl, reduction="batchmean"), atol=1e-5)


def test_mean_kl_and_mean_probs_share_gradients(batch):
    """They differ by a constant (the teachers' Jensen gap), so the student sees the same gradient."""
    _, t1, t2, y = batch
    both = torch.stack([t1, t2])
    grads = []
    for ens in ("mean_probs", "mean_kl"):
        s = batch[0].clone().requires_grad_(True)
        distillation_loss(s, both, y, 2.0, 0.9, ens)[0].backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_teacher_weights(batch):
    s, t1, t2, y = batch
    both = torch.stack([t1, t2])
    only_first = distillation_loss(s, both, y, 2.0, 1.0, "mean_probs", weights=[1.0, 0.0])[0]
    assert torch.allclose(only_first, distillation_loss(s, t1, y, 2.0, 1.0)[0], atol=1e-5)
    p, c = soft_targets(both, 2.0, "mean_kl", weights=[3, 1])
    assert torch.allclose(p.sum(1), torch.ones(32))
