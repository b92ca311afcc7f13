"""CHARM-Xray's losses with the original's signatures and values (charm_xray.md §5), at extreme logits.

The oracle is the original's AsymmetricLoss formula written literally and evaluated in float64:
p = sigmoid(z); -y log(max(p, eps)) (1 - max(p, eps))^g+ - (1 - y) log(1 - min(p, 1 - eps)) min(p, 1 - eps)^g-.
"""

import pytest
import torch
import torch.nn.functional as F

from charm_xray.losses import AsymmetricLoss, ChestXrayLoss, FocalLoss


def _literal_asl(z, y, gamma_neg=4.0, gamma_pos=1.0, eps=1e-8):
    p = torch.sigmoid(z)
    p_min, p_max = p.clamp(min=eps), p.clamp(max=1 - eps)
    return -y * torch.log(p_min) * (1 - p_min) ** gamma_pos - (1 - y) * torch.log(1 - p_max) * p_max ** gamma_neg


_EXTREME_Z = [[40.0, 25.0, -40.0, -25.0, 17.0, -17.0, 0.0], [40.0, 25.0, -40.0, -25.0, 90.0, -90.0, 3.0]]
_EXTREME_Y = [[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_original_asl_is_finite_at_logits_of_40_and_equals_the_float64_original(dtype):
    # the case: a positive at logit 40 and a negative at 25 (the literal formula in float32 gives NaN / inf)
    pair = AsymmetricLoss()(torch.tensor([[40.0, 25.0]], dtype=dtype), torch.tensor([[1.0, 0.0]], dtype=dtype))
    expected = _literal_asl(torch.tensor([[40.0, 25.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]],
                                                                                          dtype=torch.float64)).mean()
    assert torch.isfinite(pair) and abs(pair.item() - expected.item()) < 1e-5 * expected.item()
    literal32 = _literal_asl(torch.tensor([40.0, 25.0]), torch.tensor([1.0, 0.0]))
    assert literal32[0].isnan() and literal32[1].isinf()  # why the log domain is needed
    z64, y64 = torch.tensor(_EXTREME_Z, dtype=torch.float64), torch.tensor(_EXTREME_Y, dtype=torch.float64)
    oracle = _literal_asl(z64, y64)
    assert torch.isfinite(oracle).all()  # the original in float64 is finite on these
    z = z64.to(dtype).requires_grad_()
    loss = AsymmetricLoss(reduction="none")(z, y64.to(dtype))
    assert loss.dtype == dtype and torch.isfinite(loss).all()
    tol = {"rtol": 1e-8, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(loss.double(), oracle, **tol)
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_original_asl_equals_the_literal_formula_in_float64_with_its_gradient():
    gen = torch.Generator().manual_seed(4)
    z = (torch.randn(16, 14, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    y = (torch.rand(16, 14, generator=gen, dtype=torch.float64) > 0.7).double()
    z_ref = z.detach().clone().requires_grad_()
    for gamma_neg, gamma_pos in ((4.0, 1.0), (2.0, 0.0), (0.0, 3.0)):
        ours = AsymmetricLoss(gamma_neg, gamma_pos)(z, y)
        ref = _literal_asl(z_ref, y, gamma_neg, gamma_pos).mean()
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0.0)
        g_ours, = torch.autograd.grad(ours, z)
        g_ref, = torch.autograd.grad(ref, z_ref)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-15)


def test_original_signatures_and_reductions():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, 14, generator=gen, dtype=torch.float64)
    y = (torch.rand(4, 14, generator=gen) > 0.5).double()
    elements = _literal_asl(z, y, 4.0, 1.0)
    # AsymmetricLoss(gamma_neg, gamma_pos, clip, eps, reduction), positionally as the original
    torch.testing.assert_close(AsymmetricLoss(4, 1, 0.05, 1e-8, "sum")(z, y), elements.sum())
    torch.testing.assert_close(AsymmetricLoss(reduction="none")(z, y), elements)
    torch.testing.assert_close(AsymmetricLoss(reduction="mean")(z, y), elements.mean())
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    focal = 0.5 * (1 - torch.exp(-bce)) ** 3 * bce
    torch.testing.assert_close(FocalLoss(0.5, 3, "sum")(z, y), focal.sum())
    torch.testing.assert_close(FocalLoss(0.5, 3, reduction="none")(z, y), focal)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")


def test_chest_xray_loss_defaults_to_focal_and_takes_the_original_keywords():
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(4, 14, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(4, 14, generator=gen) > 0.6).double()
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert ChestXrayLoss().loss_type == "focal"
    torch.testing.assert_close(ChestXrayLoss()(z, y), ((1 - torch.exp(-bce)) ** 2 * bce).mean())
    torch.testing.assert_close(ChestXrayLoss("focal", focal_alpha=0.25, focal_gamma=1.5)(z, y),
                               (0.25 * (1 - torch.exp(-bce)) ** 1.5 * bce).mean())
    torch.testing.assert_close(ChestXrayLoss("asymmetric", asymmetric_gamma_neg=2, asymmetric_gamma_pos=0)(z, y),
                               _literal_asl(z, y, 2.0, 0.0).mean())
    torch.testing.assert_close(ChestXrayLoss("asymmetric")(z, y), _literal_asl(z, y).mean())
    torch.testing.assert_close(ChestXrayLoss("bce")(z, y), bce.mean())
    with pytest.raises(TypeError):
        ChestXrayLoss("focal", alpha=0.25)  # not one of the original's keywords
