"""cxrlt losses against their formulas (reference cxrlt.md 5.3, 7, 9; golden_references.md 4)."""

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


def test_db_margin_direction():
    head = DistributionBalancedLoss(COUNTS).margin
    assert head[0].item() == pytest.approx(0.2, abs=1e-3) and head[-1].item() == pytest.approx(0.0, abs=1e-6)
    tail = DistributionBalancedLoss(COUNTS, margin_direction="tail").margin
    assert tail[0].item() < 1e-3 and tail[-1].item() == pytest.approx(0.2, abs=1e-3)


def test_db_negative_branch_changes_only_negatives():
    z, y = torch.randn(4, 5), torch.ones(4, 5)
    base = DistributionBalancedLoss(COUNTS)(z, y)
    assert DistributionBalancedLoss(COUNTS, neg_scale=3.0, neg_margin=0.5)(z, y).item() == pytest.approx(base.item())
    # on negatives: weight x neg_scale, logit + neg_margin
    y0 = torch.zeros(4, 5)
    loss = DistributionBalancedLoss(COUNTS, neg_scale=3.0, neg_margin=0.5)
    expected = (loss.weight * 3.0 * F.binary_cross_entropy_with_logits(z + 0.5, y0, reduction="none")).mean()
    assert loss(z, y0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_official_asl_reduces_to_bce_sum_and_matches_formula():
    z = torch.randn(5, 4) * 3
    y = (torch.rand(5, 4) > 0.5).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, logit_clamp=None)(z, y)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(z, y, reduction="sum"), rtol=1e-4, atol=1e-4)
    p = torch.sigmoid(z)
    pm = (p - 0.05).clamp(min=0)  # shifted negatives: p_m ** gamma_neg * log(1 - p_m)
    expected = -(y * torch.log(p) + (1 - y) * pm ** 4 * torch.log(1 - pm)).sum()
    torch.testing.assert_close(AsymmetricLoss()(z, y), expected, rtol=1e-4, atol=1e-4)


def test_clamped_asl_formula():
    z = torch.randn(5, 4) * 3
    y = (torch.rand(5, 4) > 0.5).float()
    p = torch.sigmoid(z)
    pc = p.clamp(max=0.95)
    expected = -(y * (1 - p) ** 1 * torch.log(p) + (1 - y) * pc ** 4 * torch.log(1 - pc)).mean()
    torch.testing.assert_close(ClampedAsymmetricLoss(gamma_pos=1)(z, y), expected, rtol=1e-5, atol=1e-5)


def test_logit_adjustment():
    lp = log_prior([30.0, 10.0, 0.0])
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.75, 0.25, 0.0]) + 1e-8))
    z = torch.zeros(1, 3)
    torch.testing.assert_close(logit_adjust(z, lp, tau=2.0), -2.0 * lp.unsqueeze(0))
