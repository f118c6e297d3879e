import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from kdtrain.distill.losses import ENSEMBLES, LOSSES, distillation_loss, kd_loss, soft_targets


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
    loss, kd, _ce = kd_loss(s, y, None, 4.0, 0.7)
    assert torch.allclose(loss, F.cross_entropy(s, y)) and kd.item() == 0


def test_aggregations_agree_for_one_teacher(batch):
    s, t1, _, y = batch
    vals = [distillation_loss(s, t1[None], y, 3.0, 0.8, ens)[0] for ens in ("mean_probs", "mean_logits", "mean_kl")]
    assert torch.allclose(vals[0], vals[1], atol=1e-5) and torch.allclose(vals[0], vals[2], atol=1e-5)


def test_aggregations_differ_for_two_teachers(batch):
    s, t1, t2, y = batch
    both = torch.stack([t1, t2])
    probs, logits, kl = (
        distillation_loss(s, both, y, 3.0, 0.8, ens)[1] for ens in ("mean_probs", "mean_logits", "mean_kl")
    )
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
    # weights [3, 1]: the target is 3/4 of the first teacher's tempered probabilities plus 1/4 of the second's
    p, _ = soft_targets(both, 2.0, "mean_kl", weights=[3, 1])
    by_hand = 0.75 * torch.softmax(t1 / 2.0, -1) + 0.25 * torch.softmax(t2 / 2.0, -1)
    assert torch.allclose(p, by_hand, atol=1e-6)
    assert not torch.allclose(p, soft_targets(both, 2.0, "mean_kl")[0], atol=1e-3)  # not the equal mix


# --------------------------------------------------------------------------- dkd, dist, standardisation


def test_dkd_identity_per_sample(batch):
    """Zhao et al. eq. (1): KD = TCKD + (1 - p_t^T) NCKD, with p_t^T the teacher's target-class probability."""
    s, t, _, y = batch
    T = 3.0
    for i in range(len(y)):
        one = (s[i : i + 1], t[i : i + 1], y[i : i + 1], T, 1.0)
        kl = distillation_loss(*one, loss="kd")[1]
        tckd = distillation_loss(*one, loss="dkd", dkd_alpha=1.0, dkd_beta=0.0)[1]
        nckd = distillation_loss(*one, loss="dkd", dkd_alpha=0.0, dkd_beta=1.0)[1]
        p_target = F.softmax(t[i] / T, 0)[y[i]]
        assert torch.allclose(kl, tckd + (1 - p_target) * nckd, atol=1e-5)
        assert tckd > 0 and nckd > 0


def test_dkd_by_hand_on_three_classes():
    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
    t = [[3.0, 1.0, 0.0], [0.0, 1.0, 2.5]]
    y = [0, 2]
    T, a, b = 2.0, 2.0, 3.0

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=False))

    terms = []
    for zs, zt, g in zip(s, t, y, strict=False):
        ps, pt = softmax(zs), softmax(zt)
        tckd = kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        nckd = kl([pt[j] / (1 - pt[g]) for j in range(3) if j != g], [ps[j] / (1 - ps[g]) for j in range(3) if j != g])
        terms.append(a * tckd + b * nckd)
    expected = sum(terms) / 2
    loss, kd, ce = distillation_loss(
        torch.tensor(s), torch.tensor(t), torch.tensor(y), T, 1.0, loss="dkd", dkd_alpha=a, dkd_beta=b
    )
    assert kd.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(T * T * expected, rel=1e-5)  # D carries T^2
    mixed = distillation_loss(
        torch.tensor(s), torch.tensor(t), torch.tensor(y), T, 0.25, loss="dkd", dkd_alpha=a, dkd_beta=b
    )[0]
    assert mixed.item() == pytest.approx(0.25 * T * T * expected + 0.75 * ce.item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["kd", "dkd"])
def test_standardize_ignores_shift_and_scale_of_either_logit_vector(batch, loss):
    s, t, _, y = batch
    g = torch.Generator().manual_seed(1)
    shift = torch.randn(32, 1, generator=g) * 5
    scale = torch.rand(32, 1, generator=g) * 4 + 0.25

    def kd(student, teacher, standardize=True):
        return distillation_loss(student, teacher, y, 2.0, 1.0, loss=loss, standardize=standardize)[0]

    base = kd(s, t)
    for student, teacher in ((s * scale + shift, t), (s, t * scale + shift), (s * 3 - 1, t * scale + shift)):
        assert torch.allclose(kd(student, teacher), base, rtol=1e-4)
        assert not torch.allclose(kd(student, teacher, False), kd(s, t, False), rtol=1e-2)  # without: it changes


def test_standardize_is_the_z_score_with_the_population_std(batch):
    """Sun et al., Algorithm 1: (z - mean) / std with std over the C classes (1/C)."""
    s, t, _, y = batch

    def z(v):
        return (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True, correction=0)

    expected = F.kl_div(F.log_softmax(z(s) / 2, 1), F.softmax(z(t) / 2, 1), reduction="batchmean")
    assert torch.allclose(distillation_loss(s, t, y, 2.0, 1.0, standardize=True)[1], expected, atol=1e-6)


def test_dist_is_zero_exactly_when_the_probabilities_match(batch):
    s, t, _, y = batch
    same = distillation_loss(s, s, y, 4.0, 1.0, loss="dist")[0]
    shifted = distillation_loss(s, s + 7.0, y, 4.0, 1.0, loss="dist")[0]  # same probabilities
    other = distillation_loss(s, t, y, 4.0, 1.0, loss="dist")[0]
    assert abs(same.item()) < 1e-5 and abs(shifted.item()) < 1e-5
    assert other.item() > 0.1


def test_dist_by_hand_on_two_samples_and_three_classes():
    ps = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    pt = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
    inter = 1 - (statistics.correlation(ps[0], pt[0]) + statistics.correlation(ps[1], pt[1])) / 2
    intra = 1 - (1 - 1 + 1) / 3  # two samples: columns correlate +1, -1, +1
    T = 2.0  # logits T*log(p) give back p at temperature T
    zs, zt = T * torch.tensor(ps).log(), T * torch.tensor(pt).log()
    loss, kd, _ = distillation_loss(zs, zt, torch.tensor([0, 2]), T, 1.0, loss="dist", dist_beta=2.0, dist_gamma=0.5)
    assert kd.item() == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-5)
    assert loss.item() == pytest.approx(T * T * (2.0 * inter + 0.5 * intra), rel=1e-5)


def test_dkd_warmup_scales_the_distillation_term_linearly(batch):
    s, t, _, y = batch
    kw = {"loss": "dkd", "warmup_epochs": 4}
    full, kd, _ = distillation_loss(s, t, y, 4.0, 1.0, **kw)
    for epoch, factor in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        loss, kd_e, _ = distillation_loss(s, t, y, 4.0, 1.0, epoch=epoch, **kw)
        assert torch.allclose(loss, factor * full) and torch.allclose(kd_e, kd)  # kd itself is not scaled
    assert torch.allclose(
        distillation_loss(s, t, y, 4.0, 1.0, "mean_probs", loss="kd", warmup_epochs=4, epoch=1)[0],
        distillation_loss(s, t, y, 4.0, 1.0)[0],
    )  # the warm-up is dkd's


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_every_loss_takes_every_ensemble_with_finite_gradients(batch, loss, ensemble):
    s, t1, t2, y = batch
    s = s.clone().requires_grad_(True)
    value, kd, _ = distillation_loss(s, torch.stack([t1, t2]), y, 3.0, 0.8, ensemble, weights=[2, 1], loss=loss)
    value.backward()
    assert torch.isfinite(value) and kd > 0 and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    one = distillation_loss(s, torch.stack([t1, t2]), y, 3.0, 0.8, ensemble, weights=[1, 0], loss=loss)[1]
    assert torch.allclose(one, distillation_loss(s, t1, y, 3.0, 0.8, loss=loss)[1], atol=1e-5)  # weight 0: ignored


def test_dkd_mean_kl_averages_the_per_teacher_terms(batch):
    s, t1, t2, y = batch
    per = [distillation_loss(s, t, y, 2.0, 1.0, loss="dkd")[1] for t in (t1, t2)]
    both = distillation_loss(s, torch.stack([t1, t2]), y, 2.0, 1.0, "mean_kl", loss="dkd")[1]
    assert torch.allclose(both, (per[0] + per[1]) / 2, atol=1e-5)


def test_dist_refuses_standardize_and_unknown_losses_are_named(batch):
    s, t, _, y = batch
    with pytest.raises(ValueError, match="standardize"):
        distillation_loss(s, t, y, loss="dist", standardize=True)
    with pytest.raises(ValueError, match="unknown loss 'crd'"):
        distillation_loss(s, t, y, loss="crd")
