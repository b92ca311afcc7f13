"""MCB-Convex, the signal channel and CoordAtt-U against the reference formulas (dvxray.md §10.4, §11)."""

import numpy as np
import pytest
import torch

from dvxray.models.modules.attentions import CoordAtt_U, CoordinateAttention, build_attention, list_attentions
from dvxray.models.modules.custom_losses.mcb_loss import MCBLoss, MCBLossConvex
from dvxray.models.modules.custom_losses.signals import SignalChannel
from dvxray.models.modules.losses import BASE_LOSSES, LossParams, build_base_criterion


def _ref_convex_w(z: np.ndarray, tau: float, w_min: float) -> np.ndarray:
    p = 1 / (1 + np.exp(-z))
    s = p.std(axis=0, ddof=0)  # population std over the batch
    e = np.exp(s / max(tau, 1e-8))
    w = e / e.sum()
    w = np.maximum(w, w_min)
    return w / w.sum()


def _ref_bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def test_mcb_convex_matches_reference_over_three_calls():
    rng = np.random.default_rng(0)
    loss_fn = MCBLossConvex(tau=0.05, w_min=0.05, momentum=0.9, signal=SignalChannel(0.9))
    ema = None
    bus = None
    for _ in range(3):
        z = rng.normal(0, 2, size=(6, 15))
        y = (rng.random((6, 15)) < 0.3).astype(np.float64)
        w = _ref_convex_w(z, 0.05, 0.05)
        ema = w if ema is None else 0.9 * ema + 0.1 * w
        bus = w if bus is None else 0.9 * bus + 0.1 * w
        expected = (_ref_bce(z, y) * ema[None, :]).mean()
        got = loss_fn(torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
        assert got.item() == pytest.approx(expected, rel=1e-5)
        np.testing.assert_allclose(loss_fn.ema_w.numpy(), ema, rtol=1e-5)
        np.testing.assert_allclose(loss_fn.signal.get("w_mcb").numpy(), bus, rtol=1e-5)
    # the clamp is active with this tau: some weights sit exactly at the renormalised floor
    assert w.min() == pytest.approx(0.05 / np.maximum(_ref_convex_w(z, 0.05, 0.0), 0.05).sum(), rel=1e-6)


def test_mcb_convex_weights_are_constants_for_the_gradient():
    z = torch.randn(5, 15, requires_grad=True)
    y = (torch.rand(5, 15) < 0.3).float()
    MCBLossConvex()(z, y).backward()
    ema_w = MCBLossConvex().class_weights(z.detach())
    p = torch.sigmoid(z.detach())
    np.testing.assert_allclose(z.grad.numpy(), ((p - y) * ema_w / z.numel()).numpy(), rtol=1e-5, atol=1e-9)


def test_mcb_loss_has_no_clamp_and_no_push():
    # built through the --base_loss dispatch with a channel, as main_finetune.py does
    signal = SignalChannel()
    loss = build_base_criterion("mcb", LossParams(mcb_tau=0.02), signal)
    assert isinstance(loss, MCBLoss) and loss.tau == 1.0  # --mcb_tau is not forwarded to mcb (quirk 17)
    loss.tau = 0.02  # a sharp softmax, so the MCB-Convex floor (w_min 1e-3) would change the weights
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 15, generator=g) * 3
    loss(z, torch.zeros(4, 15))
    raw = torch.softmax(torch.sigmoid(z).std(0, unbiased=False) / 0.02, 0)
    assert raw.min() < 1e-3
    np.testing.assert_allclose(loss.ema_w.numpy(), raw.numpy(), rtol=1e-5)
    convex = MCBLossConvex(tau=0.02).class_weights(z)
    assert not torch.allclose(convex, raw)
    assert signal.get("w_mcb") is None


def test_mcb_state_dict_round_trip_into_fresh_loss():
    a = MCBLossConvex()
    a(torch.randn(4, 15), torch.zeros(4, 15))
    b = MCBLossConvex()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.ema_w, b.ema_w)


def _ref_coordatt(m: CoordinateAttention, x: torch.Tensor) -> torch.Tensor:
    """Official CoordAtt written out with functional ops (golden_references.md §3)."""
    n, c, h, w = x.shape
    x_h = x.mean(3, keepdim=True)
    x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
    y = torch.nn.functional.conv2d(torch.cat([x_h, x_w], 2), m.conv1.weight, m.conv1.bias)
    bn = m.bn1
    y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    y = y * torch.clamp(y + 3, 0, 6) / 6
    a_h = torch.sigmoid(torch.nn.functional.conv2d(y[:, :, :h], m.conv_h.weight, m.conv_h.bias))
    a_w = torch.sigmoid(torch.nn.functional.conv2d(y[:, :, h:].permute(0, 1, 3, 2), m.conv_w.weight, m.conv_w.bias))
    return x * a_w * a_h


def test_coordatt_u_matches_reference_formula():
    signal = SignalChannel(0.9)
    m = CoordAtt_U(64, signal=signal).eval()
    assert m.base.conv1.out_channels == 8  # mip = max(8, 64 // 32)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 64, 5, 7)
    y0 = _ref_coordatt(m.base, x)
    with torch.no_grad():
        # no signal yet: no gain
        torch.testing.assert_close(m(x), 0.1 * x + 0.9 * y0)
        w1, w2 = torch.softmax(torch.randn(15), 0), torch.softmax(3 * torch.randn(15), 0)
        signal.push("w_mcb", w1)
        signal.push("w_mcb", w2)
        bus = 0.9 * w1 + 0.1 * w2
        gain = 1 + 0.5 * float(np.std(bus.numpy(), ddof=1))  # unbiased std over classes
        torch.testing.assert_close(m(x), 0.1 * x + 0.9 * y0 * gain)


def test_signal_channel_is_shared_by_deepcopy_and_checkpointable():
    import copy

    s = SignalChannel()
    m = CoordAtt_U(32, signal=s)
    m2 = copy.deepcopy(m)
    assert m2.signal is s
    s.push("w_mcb", torch.ones(3))
    t = SignalChannel()
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.get("w_mcb"), torch.ones(3))


@pytest.mark.parametrize("name", list_attentions())
def test_every_attention_keeps_shape(name):
    s = SignalChannel()
    s.push("w_mcb", torch.rand(15))
    s.push("difficulty", torch.tensor(0.3))
    s.push("ge_strength", torch.rand(15))
    m = build_attention(name, 32, s)
    x = torch.randn(2, 32, 6, 6)
    assert m(x).shape == x.shape


def test_attention_config_lists_parallel_and_errors():
    x = torch.randn(1, 32, 4, 4)
    assert build_attention(["se", "eca"], 32)(x).shape == x.shape
    assert build_attention({"parallel": ["se", "cbam"]}, 32)(x).shape == x.shape
    with pytest.raises(ValueError, match="N3: unknown attention 'nope'"):
        build_attention("nope", 32, where="N3")


@pytest.mark.parametrize("name", BASE_LOSSES)
def test_every_base_loss_is_finite_with_gradient(name):
    crit = build_base_criterion(name, LossParams(ge_trainable=True), SignalChannel())
    z = torch.randn(4, 15, requires_grad=True)
    loss = crit(z, (torch.rand(4, 15) < 0.3).float())
    loss.backward()
    assert torch.isfinite(loss) and z.grad.abs().sum() > 0
