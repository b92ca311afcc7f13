"""cxrlt losses against their formulas (reference cxrlt.md 5.3, 7, 9; golden_references.md 4)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrlt.losses import (
    AsymmetricLoss,
    ClampedAsymmetricLoss,
    DistributionBalancedLoss,
    log_prior,
    logit_adjust,
)

COUNTS = [5000.0, 800.0, 60.0, 3.0, 0.0]


def _bce(z, y):
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def test_db_loss_matches_formula():
    torch.manual_seed(1)
    z = torch.randn(6, 5)
    y = (torch.rand(6, 5) > 0.6).float()
    loss = DistributionBalancedLoss(COUNTS)(z, y)
    n = np.maximum(np.array(COUNTS), 1.0)
    e = (1 - 0.9999) / (1 - 0.9999 ** n)
    e = e / e.mean()
    u = 1 / (e + 1e-6)
    m = 0.2 * (u - u.min()) / (u.max() - u.min() + 1e-6)
    zn, yn = z.numpy().astype(np.float64), y.numpy()
    expected = (e ** 0.5 * _bce(zn - yn * m, yn)).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_db_weights_are_the_originals_float32_ones():
    # cxrlt.md 5.3 with the original's dtypes (issue 17 section 5): counts as a float32 numpy array, clipped
    # to >= 1; (1 - beta) / (1 - beta ** n) in numpy with the Python float beta; normalised by the mean;
    # then torch float32: inv = 1 / (w + 1e-6), min-max normalised, margin = 0.2 * inv; weight = w ** 0.5.
    counts = [61_234.0, 12_000.0, 5000.0, 800.0, 60.0, 3.0, 0.0]
    n32 = np.clip(np.array(counts, dtype=np.float32), 1.0, None)
    eff = (1.0 - 0.9999) / (1.0 - np.power(0.9999, n32))
    eff = eff / eff.mean()
    assert eff.dtype == np.float32
    eff_w = torch.tensor(eff, dtype=torch.float32)
    inv = 1.0 / (eff_w + 1e-6)
    inv = (inv - inv.min()) / (inv.max() - inv.min() + 1e-6)
    loss = DistributionBalancedLoss(counts)
    torch.testing.assert_close(loss.weight, torch.pow(eff_w, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(loss.margin, 0.2 * inv * 1.0, rtol=0, atol=0)
    # the float64 computation is measurably different (the test would fail on a float64 implementation)
    n64 = np.maximum(np.array(counts), 1.0)
    e64 = (1 - 0.9999) / (1 - 0.9999 ** n64)
    e64 = e64 / e64.mean()
    assert np.abs(np.sqrt(e64) / loss.weight.double().numpy() - 1).max() > 1e-5
    # and the loss equals the original's float32 ops on the same input
    torch.manual_seed(3)
    z = torch.randn(8, len(counts)) * 4
    y = (torch.rand(8, len(counts)) > 0.5).float()
    ref = (F.binary_cross_entropy_with_logits(z - y * (0.2 * inv), y, reduction="none")
           * torch.pow(eff_w, 0.5).unsqueeze(0)).mean()
    torch.testing.assert_close(loss(z, y), ref, rtol=0, atol=0)


def test_db_margin_direction():
    head = DistributionBalancedLoss(COUNTS).margin
    assert head[0].item() == pytest.approx(0.2, abs=1e-3) and head[-1].item() == pytest.approx(0.0, abs=1e-6)
    tail = DistributionBalancedLoss(COUNTS, margin_direction="tail").margin
    assert tail[0].item() < 1e-3 and tail[-1].item() == pytest.approx(0.2, abs=1e-3)


def test_db_negative_branch_is_the_originals():
    # cxrlt.md §5.3 + issue 11: negatives recomputed as neg_scale * BCE(z' + neg_margin, 0), no class weight
    torch.manual_seed(2)
    z = torch.randn(6, 5)
    y = (torch.rand(6, 5) > 0.5).float()
    n = np.maximum(np.array(COUNTS), 1.0)
    e = (1 - 0.9999) / (1 - 0.9999 ** n)
    e = e / e.mean()
    u = 1 / (e + 1e-6)
    m = 0.2 * (u - u.min()) / (u.max() - u.min() + 1e-6)
    zn, yn = z.numpy().astype(np.float64), y.numpy()
    zp = zn - yn * m
    expected = (yn * e ** 0.5 * _bce(zp, 1.0) + (1 - yn) * 3.0 * _bce(zp + 0.5, 0.0)).mean()
    assert DistributionBalancedLoss(COUNTS, neg_scale=3.0, neg_margin=0.5)(z, y).item() == pytest.approx(expected, rel=1e-5)
    # neg_scale alone (margin 0) also switches the branch on: the negatives lose their class weight
    expected = (yn * e ** 0.5 * _bce(zp, 1.0) + (1 - yn) * 2.0 * _bce(zp, 0.0)).mean()
    assert DistributionBalancedLoss(COUNTS, neg_scale=2.0)(z, y).item() == pytest.approx(expected, rel=1e-5)


def test_official_asl_reduces_to_bce_sum_and_matches_formula():
    z = torch.randn(5, 4) * 3
    y = (torch.rand(5, 4) > 0.5).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, logit_clamp=None)(z, y)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(z, y, reduction="sum"), rtol=1e-4, atol=1e-4)
    p = torch.sigmoid(z)
    pm = (p - 0.05).clamp(min=0)  # shifted negatives: p_m ** gamma_neg * log(1 - p_m)
    expected = -(y * torch.log(p) + (1 - y) * pm ** 4 * torch.log(1 - pm)).sum()
    torch.testing.assert_close(AsymmetricLoss()(z, y), expected, rtol=1e-4, atol=1e-4)


def _original_losses_py_asl(z: float, y: float, *, gn=4.0, gp=1.0, clip=0.05, eps=1e-8, conventional=False) -> float:
    """One element of the original losses.py ASL, from cxrlt.md §9 (plain Python floats)."""
    p = 1.0 / (1.0 + math.exp(-z))
    p_n = min(p, 1.0 - clip) if clip > 0 else p
    loss_pos = y * math.log(p + eps)
    loss_neg = (1 - y) * math.log(1.0 - p_n + eps)
    w_neg = (p_n if conventional else 1.0 - p_n) ** gn
    return -((1.0 - p) ** gp * loss_pos + w_neg * loss_neg)


def test_clamped_asl_is_the_original_losses_py():
    # includes p ~ eps (z = -18.42: log(p + eps) != log(clamp(p, eps))) and saturated negatives
    zs = [-18.420681, -3.0, -0.5, 0.0, 0.7, 2.5, 4.0, 30.0]
    z = torch.tensor([zs, zs], dtype=torch.float64).float()
    y = torch.tensor([[1.0] * len(zs), [0.0] * len(zs)])
    loss = ClampedAsymmetricLoss()  # defaults 4 / 1 / 0.05, eps 1e-8, as the original
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.eps) == (4.0, 1.0, 0.05, 1e-8)
    for conventional in (False, True):
        elems = [_original_losses_py_asl(float(a), float(b), conventional=conventional)
                 for a, b in zip(z.flatten().tolist(), y.flatten().tolist())]
        crit = ClampedAsymmetricLoss(neg_weighting="conventional") if conventional else loss
        assert crit(z, y).item() == pytest.approx(sum(elems) / len(elems), rel=1e-5)
    # the weights keep their gradient: d/dz of one negative element includes the w_neg term
    z1 = torch.tensor([[0.7]], requires_grad=True)
    loss(z1, torch.zeros(1, 1)).backward()
    h = 1e-3
    num = (_original_losses_py_asl(0.7 + h, 0.0) - _original_losses_py_asl(0.7 - h, 0.0)) / (2 * h)
    assert z1.grad.item() == pytest.approx(num, rel=1e-3)
    with pytest.raises(ValueError, match="neg_weighting"):
        ClampedAsymmetricLoss(neg_weighting="focal")


def test_logit_adjustment():
    lp = log_prior([30.0, 10.0, 0.0])
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.75, 0.25, 0.0]) + 1e-8))
    z = torch.zeros(1, 3)
    torch.testing.assert_close(logit_adjust(z, lp, tau=2.0), -2.0 * lp.unsqueeze(0))


def test_asl_flags_default_to_each_loss_own_gamma_pos():
    import argparse

    from cxrlt.cli import add_asl_args, asl_kwargs_from_args
    from cxrlt.losses import build_loss

    p = argparse.ArgumentParser()
    add_asl_args(p.add_argument_group())
    args = p.parse_args([])
    assert build_loss("asl", COUNTS, asl_kwargs=asl_kwargs_from_args(args, "asl")).gamma_pos == 1.0
    assert build_loss("asl_official", COUNTS, asl_kwargs=asl_kwargs_from_args(args, "asl_official")).gamma_pos == 0.0
    args = p.parse_args(["--asl_neg_weighting", "conventional", "--gamma_pos", "2"])
    crit = build_loss("asl", COUNTS, asl_kwargs=asl_kwargs_from_args(args, "asl"))
    assert (crit.neg_weighting, crit.gamma_pos) == ("conventional", 2.0)


def test_logit_adjustment_sign_original_and_menon():
    from cxrlt.task import CXRTask

    counts = [900.0, 90.0, 10.0]
    lp = torch.log(torch.tensor([0.9, 0.09, 0.01]) + 1e-8)  # log(prior + 1e-8), cxrlt.md §7
    seen = {}

    def capture(logits, target, mask=None):
        seen["z"] = logits.detach().clone()
        return logits.sum()

    class Zeros(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3)

    batch = (torch.zeros(2, 1), torch.zeros(2, 3))
    CXRTask(Zeros(), capture, log_prior=log_prior(counts), tau=2.0)(batch)
    torch.testing.assert_close(seen["z"], (-2.0 * lp).expand(2, 3))  # original: z - tau*log(prior), rare raised
    CXRTask(Zeros(), capture, log_prior=log_prior(counts), tau=2.0, la_sign="menon")(batch)
    torch.testing.assert_close(seen["z"], (2.0 * lp).expand(2, 3))  # Menon: z + tau*log(prior), rare lowered
    with pytest.raises(ValueError, match="--la_sign"):
        CXRTask(Zeros(), capture, la_sign="plus")

