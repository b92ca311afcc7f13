"""Dual-view model: batched views equal two passes, heads/fusions, FPN-PAN wiring and parameter count."""

import pytest
import torch

from dvxray.models.convnextv2 import create_model, list_models
from dvxray.models.convnextv2_dual import ConvNeXtV2Dual
from dvxray.models.modules.custom_losses.signals import SignalChannel
from dvxray.models.modules.fusions import FUSE_MODES
from dvxray.models.modules.necks import HEAD_TYPES


def _dual(**kw) -> ConvNeXtV2Dual:
    backbone = create_model("convnextv2_atto", num_classes=0)
    return ConvNeXtV2Dual(backbone, 15, fpn_out_channels=32, **kw)


def test_batched_views_equal_two_separate_passes():
    torch.manual_seed(0)
    model = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"}).eval()
    for p in model.backbone.parameters():  # non-trivial GRN so every op is exercised
        torch.nn.init.normal_(p, std=0.05)
    a, b = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = model(a, b)
        model.batch_views = False
        separate = model(a, b)
        fa = model.backbone.forward_features(a)
        fb = model.backbone.forward_features(b)
        model.batch_views = True
        ba, bb = model.extract(a, b)
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
    for x, y in zip(ba + bb, fa + fb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_add_fusion_and_missing_second_view():
    model = _dual(fuse_mode="add", head_type="c5").eval()
    a = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fa, _ = model.extract(a, a)
        fused = model.fuse(fa, fa)
        torch.testing.assert_close(fused[-1], 2 * fa[-1])
        torch.testing.assert_close(model(a), model(a, a))


def test_fpn_pan_classifies_from_n3_only():
    model = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u", "N5": "eca"})
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)).sum().backward()
    neck = model.head
    dead = ["pan_d4", "pan_s4", "pan_d5", "pan_s5", "attn.N5"]
    for name, p in neck.named_parameters():
        if any(name.startswith(d) for d in dead):
            assert p.grad is None, f"{name} should not reach the logits"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("fuse_mode", FUSE_MODES)
@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_fusion_and_head_trains(fuse_mode, head_type):
    model = _dual(fuse_mode=fuse_mode, head_type=head_type, ahcr_mode="inter_level")
    out = model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 15)
    out.sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone.norm."):  # final norm is loaded but unused (quirk 8)
            continue
        if head_type == "c5" and name.startswith(("fusions.C3", "fusions.C4", "inter_level")):
            continue  # the c5 head reads only the fused C5
        if head_type == "fpn_pan" and name.startswith(("head.pan_d4", "head.pan_s4", "head.pan_d5", "head.pan_s5")):
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_published_model_parameter_count():
    backbone = create_model("convnextv2_tiny", num_classes=0)
    model = ConvNeXtV2Dual(backbone, 15, fuse_mode="add", head_type="fpn_pan",
                           attention_config={"N3": "coordatt_u"}, signal=SignalChannel())
    assert sum(p.numel() for p in backbone.parameters()) == 27_866_496
    assert sum(p.numel() for p in model.parameters()) == 32_942_503


def test_registry_and_errors():
    assert {"convnextv2_atto", "convnext_pico", "convnextv2_tiny", "convnextv2_huge", "convnext_tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="--model: unknown backbone 'resnet50'"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="key 'P3' is not an output of head 'fpn_pan'"):
        _dual(head_type="fpn_pan", attention_config={"P3": "se"})
    with pytest.raises(ValueError, match="--fuse_levels"):
        _dual(fuse_levels=["C2"])


def test_signal_state_travels_with_the_state_dict():
    s = SignalChannel()
    model = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"}, signal=s)
    s.push("w_mcb", torch.arange(15.0))
    t = SignalChannel()
    other = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"}, signal=t)
    other.load_state_dict(model.state_dict())
    assert torch.equal(t.get("w_mcb"), torch.arange(15.0))
