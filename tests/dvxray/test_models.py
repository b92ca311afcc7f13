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
    neck = model.fpn_pan
    dead = ["pan_d4", "pan_s4", "pan_d5", "pan_s5", "attn5"]
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
        if name.startswith(("backbone.norm.", "backbone.head.")):  # loaded but unused (quirks 8, 12)
            continue
        if head_type == "c5" and name.startswith(("fusions.C3", "fusions.C4", "inter_level")):
            continue  # the c5 head reads only the fused C5
        if head_type == "fpn_pan" and name.startswith(("fpn_pan.pan_d4", "fpn_pan.pan_s4", "fpn_pan.pan_d5",
                                                       "fpn_pan.pan_s5")):
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


def test_signal_state_travels_with_the_task_state():
    from dvxray.engine_finetune import DvXrayTask

    s = SignalChannel()
    model = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"}, signal=s)
    s.push("w_mcb", torch.arange(15.0))
    assert "_extra_state" not in model.state_dict()  # the model's keys stay the original's
    t = SignalChannel()
    other = _dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"}, signal=t)
    DvXrayTask(other, torch.nn.BCEWithLogitsLoss()).load_state_dict(
        DvXrayTask(model, torch.nn.BCEWithLogitsLoss()).state_dict())
    assert torch.equal(t.get("w_mcb"), torch.arange(15.0))


# ---- state-dict keys of the original ConvNeXtV2Dual (reference dvxray.md §10.3a, §10.3, §10.4 and
# golden_references.md §1.4), written out from the reference, not from our model ----

def _original_backbone_keys(depths, dims):
    k = {"downsample_layers.0.0.weight": (dims[0], 3, 4, 4), "downsample_layers.0.0.bias": (dims[0],),
         "downsample_layers.0.1.weight": (dims[0],), "downsample_layers.0.1.bias": (dims[0],)}
    for i in (1, 2, 3):
        k[f"downsample_layers.{i}.0.weight"] = k[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        k[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        k[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for s, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{s}.{b}."
            k.update({p + "dwconv.weight": (c, 1, 7, 7), p + "dwconv.bias": (c,), p + "norm.weight": (c,),
                      p + "norm.bias": (c,), p + "pwconv1.weight": (4 * c, c), p + "pwconv1.bias": (4 * c,),
                      p + "grn.gamma": (1, 1, 1, 4 * c), p + "grn.beta": (1, 1, 1, 4 * c),
                      p + "pwconv2.weight": (c, 4 * c), p + "pwconv2.bias": (c,)})
    # the final norm and the empty Linear(C, 0) head of convnextv2_*(num_classes=0) (quirk 12)
    k.update({"norm.weight": (dims[3],), "norm.bias": (dims[3],), "head.weight": (0, dims[3]), "head.bias": (0,)})
    return {"backbone." + n: s for n, s in k.items()}


def _coordatt_keys(prefix, c=256, mip=8):
    return {prefix + "conv1.weight": (mip, c, 1, 1), prefix + "conv1.bias": (mip,),
            prefix + "bn1.weight": (mip,), prefix + "bn1.bias": (mip,), prefix + "bn1.running_mean": (mip,),
            prefix + "bn1.running_var": (mip,), prefix + "bn1.num_batches_tracked": (),
            prefix + "conv_h.weight": (c, mip, 1, 1), prefix + "conv_h.bias": (c,),
            prefix + "conv_w.weight": (c, mip, 1, 1), prefix + "conv_w.bias": (c,)}


def _conv(name, cout, cin, k):
    return {name + ".weight": (cout, cin, k, k), name + ".bias": (cout,)}


# FPN_PAN attributes in the original's order, 256 channels, C3/C4/C5 = 192/384/768 (tiny)
PAPER_NECK_KEYS = {
    **_conv("fpn_pan.fpn_l3", 256, 192, 1), **_conv("fpn_pan.fpn_s3", 256, 256, 3),
    **_conv("fpn_pan.fpn_l4", 256, 384, 1), **_conv("fpn_pan.fpn_s4", 256, 256, 3),
    **_conv("fpn_pan.fpn_l5", 256, 768, 1), **_conv("fpn_pan.fpn_s5", 256, 256, 3),
    **_conv("fpn_pan.pan_d4", 256, 256, 3), **_conv("fpn_pan.pan_d5", 256, 256, 3),
    **_conv("fpn_pan.pan_s3", 256, 256, 3), **_conv("fpn_pan.pan_s4", 256, 256, 3),
    **_conv("fpn_pan.pan_s5", 256, 256, 3),
}
TINY = ([3, 3, 9, 3], [96, 192, 384, 768])


def _fake_original_state_dict(keys: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in keys.items()}


def _tiny_dual(**kw) -> ConvNeXtV2Dual:
    return ConvNeXtV2Dual(create_model("convnextv2_tiny", num_classes=0), 15, signal=SignalChannel(), **kw)


def test_paper_setting_has_the_original_key_list_and_loads_an_original_state_dict_strict():
    keys = {**_original_backbone_keys(*TINY), **PAPER_NECK_KEYS, **_coordatt_keys("fpn_pan.attn3.base."),
            "classifier.weight": (15, 256), "classifier.bias": (15,)}
    model = _tiny_dual(fuse_mode="add", head_type="fpn_pan", attention_config={"N3": "coordatt_u"})
    ours = model.state_dict()
    assert list(ours) == list(keys)  # same names, same order: ours loads strict into the original too
    assert {k: tuple(v.shape) for k, v in ours.items()} == keys
    original = _fake_original_state_dict(keys)
    model.load_state_dict(original, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k


@pytest.mark.parametrize("head_type,neck_keys,feat_ch", [
    ("c5", {}, 768),
    ("fpn", {}, 192 + 384 + 768),  # classifier over the fused levels' channels, no neck modules
    ("fpn_fuse", {**_conv("fpn.l3", 256, 192, 1), **_conv("fpn.l4", 256, 384, 1), **_conv("fpn.l5", 256, 768, 1),
                  **_conv("fpn.s3", 256, 256, 3), **_conv("fpn.s4", 256, 256, 3), **_conv("fpn.s5", 256, 256, 3)}, 256),
    ("fpn_pan", PAPER_NECK_KEYS, 256),
])
def test_each_head_type_loads_an_original_state_dict_strict(head_type, neck_keys, feat_ch):
    keys = {**_original_backbone_keys(*TINY), **neck_keys,
            "classifier.weight": (15, feat_ch), "classifier.bias": (15,)}
    model = _tiny_dual(fuse_mode="add", head_type=head_type)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    model.load_state_dict(_fake_original_state_dict(keys), strict=True)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 15)


@pytest.mark.parametrize("config,attn_keys", [
    ({"N3": "coordatt"}, _coordatt_keys("fpn_pan.attn3.")),
    ({"N4": "coordatt_u", "N5": "coordatt"}, {**_coordatt_keys("fpn_pan.attn4.base."), **_coordatt_keys("fpn_pan.attn5.")}),
    ({"N3": ["coordatt", "coordatt_u"]}, {**_coordatt_keys("fpn_pan.attn3.0."), **_coordatt_keys("fpn_pan.attn3.1.base.")}),
    ({"N3": {"parallel": ["coordatt_u", "coordatt"]}},
     {**_coordatt_keys("fpn_pan.attn3.attns.0.base."), **_coordatt_keys("fpn_pan.attn3.attns.1.")}),
])
def test_each_attention_placement_uses_the_original_names(config, attn_keys):
    keys = {**_original_backbone_keys(*TINY), **PAPER_NECK_KEYS, **attn_keys,
            "classifier.weight": (15, 256), "classifier.bias": (15,)}
    model = _tiny_dual(fuse_mode="add", head_type="fpn_pan", attention_config=config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    model.load_state_dict(_fake_original_state_dict(keys), strict=True)


def test_attention_is_refused_outside_fpn_pan():
    with pytest.raises(ValueError, match="head 'c5' has no attention placements"):
        _dual(head_type="c5", attention_config={"C5": "se"})
