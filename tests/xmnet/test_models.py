"""Attention formulas, mask guidance, freezing rules, encoder stages, decoders and deep supervision,
checked against hand computation from xmnet.md §5-§6."""

import pytest
import torch
import torch.nn.functional as F

from xmnet.backboneModels import (
    BACKBONES,
    XMNetModel,
    attention_map,
    build_features,
    freeze_threshold,
    modulate,
    probe_stages,
)
from xmnet.unet3 import FSDS_WEIGHTS, UNet3PlusDecoder, UNetDecoder, segmentation_loss
from xmnet.utils import get_folder_path, iou_dice, mask_guided_mse


def _xmnet_att(f, conv):
    a = attention_map(f, "xmnet", conv)
    return modulate(f, a), a


def _mmanet_att(f, conv=None):
    a = attention_map(f, "mmanet", conv)
    return modulate(f, a), a


def test_xmnet_attention_matches_hand_computation():
    m = XMNetModel("resnet18", 3, attention="xmnet")
    conv = m.attention
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.7, -0.3]).view(1, 2, 1, 1))
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]], [[-1.0, 4.0]]]])  # B=1, C=3, H=1, W=2
    out, a = _xmnet_att(f, conv)
    for w in range(2):
        col = [f[0, c, 0, w].item() for c in range(3)]
        mean, mx = sum(col) / 3, max(col)
        expect_a = 1 / (1 + torch.exp(torch.tensor(-(0.7 * mean - 0.3 * mx)))).item()
        assert a[0, 0, 0, w].item() == pytest.approx(expect_a, rel=1e-6)
        for c in range(3):
            assert out[0, c, 0, w].item() == pytest.approx(0.5 * col[c] + 0.5 * expect_a * col[c], rel=1e-6)
    assert conv.bias is None and conv.in_channels == 2 and conv.out_channels == 1


def test_mmanet_attention_matches_hand_computation():
    f = torch.tensor([[[[2.0]], [[-1.0]], [[5.0]], [[0.0]]]])  # mean 1.5
    out, a = _mmanet_att(f)
    s = 1 / (1 + torch.exp(torch.tensor(-1.5))).item()
    assert a.item() == pytest.approx(s, rel=1e-6)
    assert out.flatten().tolist() == pytest.approx([(0.5 + 0.5 * s) * v for v in (2.0, -1.0, 5.0, 0.0)], rel=1e-6)


def test_attention_never_fully_suppresses():  # quirk 17: F' >= 0.5 F for F >= 0
    f = torch.rand(2, 8, 3, 3) + 0.1
    conv = torch.nn.Conv2d(2, 1, 1, bias=False)
    for att in (_xmnet_att, _mmanet_att):
        out, _ = att(f, conv)
        assert torch.all(out >= 0.5 * f - 1e-7) and torch.all(out <= f + 1e-7)


def test_mask_guided_mse_matches_hand_computation():
    # mask 4x4 with raw values; seg_size 8 -> resized to 4x4 (identity), pooled to the 2x2 attention map
    mask = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [4, 4, 0, 0], [4, 4, 0, 0]], dtype=torch.float32)[None, None]
    att = torch.tensor([[0.1, 0.6], [0.9, 0.2]])[None, None]
    pooled = torch.tensor([0.0, 2.0, 4.0, 0.0]) + 1e-12
    target = pooled / pooled.max()
    expect = ((att.flatten() - target) ** 2).mean().item()
    assert mask_guided_mse(att, mask, seg_size=8).item() == pytest.approx(expect, rel=1e-6)


def test_freeze_thresholds_per_backbone():
    assert {b: freeze_threshold(b) for b in BACKBONES} == {
        "densenet161": 9, "resnet50": 7, "resnet34": 7, "resnet18": 7, "vgg19": 22, "mobilenet_v2": 11,
        "mobilenet_v3_large": 11, "inception_v3": 10}


@pytest.mark.parametrize("backbone", ["densenet161", "resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_freezing_rule_applied_to_features_children(backbone):
    m = XMNetModel(backbone, 5, attention="xmnet")
    frozen = m.apply_freezing(freeze_all=False)
    names = [n for n, _ in m.features.features.named_children()]
    assert frozen == names[:freeze_threshold(backbone) - 1]  # 1-based position < threshold
    if backbone == "densenet161":  # xmnet.md §5.1: conv0 ... transition2
        assert frozen == ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                          "transition2"]
    if backbone == "resnet18":  # Sequential(*children[:-2]): conv1, bn1, relu, maxpool, layer1, layer2
        assert frozen == ["0", "1", "2", "3", "4", "5"]
    if backbone == "mobilenet_v2":
        assert frozen == [str(i) for i in range(10)]
    for name, child in m.features.features.named_children():
        trainable = any(p.requires_grad for p in child.parameters())
        has_params = any(True for _ in child.parameters())
        assert (not trainable) if name in frozen else (trainable or not has_params)
    assert all(p.requires_grad for p in m.classifier.parameters())
    assert all(p.requires_grad for p in m.attention.parameters())


@pytest.mark.parametrize("attention", ["mmanet", "none"])
def test_unused_attention_conv_is_kept_but_not_trained(attention):
    m = XMNetModel("resnet18", 3, attention=attention)
    assert "attention.weight" in m.state_dict()  # the original creates it for every attention type
    assert not m.attention.weight.requires_grad


def test_freeze_all_freezes_classification_network_only():
    m = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=True, att_from=5)
    m.apply_freezing(freeze_all=True)
    assert not any(p.requires_grad for mod in m.classification_modules() for p in mod.parameters())
    assert not any(p.requires_grad for p in m.Encoders.parameters())  # the same tensors as features.features
    for mod in (m.center, m.decoder_layers, m.atten_layers["5"]):
        assert all(p.requires_grad for p in mod.parameters())
    assert not any(p.requires_grad for i in "1234" for p in m.atten_layers[i].parameters())  # below att_from


def test_densenet_width_and_feature_map_at_448():
    m = XMNetModel("densenet161", 7, attention="mmanet")
    assert m.num_features == 2208
    f, taps = m.forward_stages(torch.zeros(1, 3, 448, 448))
    assert m.classifier is m.features.classifier
    assert f.shape == (1, 2208, 14, 14)
    assert [t.shape[-1] for t in taps] == [224, 112, 56, 28, 14]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_encoder_has_five_halving_stages(backbone):
    feats = build_features(backbone)
    ends, widths = probe_stages(feats)
    assert len(ends) == 5 and ends[-1] == len(feats) - 1
    x, sides = torch.zeros(1, 3, 64, 64), []
    for i, child in enumerate(feats):
        x = child(x)
        if i in ends:
            sides.append(x.shape[-1])
            assert x.shape[1] == widths[ends.index(i)]
    assert sides == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("decoder", [UNetDecoder, UNet3PlusDecoder])
@pytest.mark.parametrize("fsds", [False, True])
def test_decoder_output_shapes(decoder, fsds):
    chans = [8, 12, 16, 20, 24]
    skips = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(chans)]
    outs = decoder(chans, deep_supervision=fsds)(skips)
    expect = [(2, 1, 32 // 2**i, 32 // 2**i) for i in range(5 if fsds else 1)]
    assert [tuple(o.shape) for o in outs] == expect


def test_unet3plus_branches_are_64_fused_to_320():
    dec = UNet3PlusDecoder([8, 12, 16, 20, 24])
    assert dec.fuse["1"][0].in_channels == 320 and dec.final.in_channels == 320
    assert all(b[0].out_channels == 64 for b in dec.branches.values())


def test_compact_segmentation_outputs_and_attention_wiring():
    m = XMNetModel("resnet18", 4, attention="xmnet", segmentation=True, unet=False, att_from=4, fsds=True,
                   seg_arch="compact")
    out = m(torch.randn(2, 3, 64, 64))
    assert [tuple(s.shape) for s in out["seg"]] == [(2, 1, 32 // 2**i, 32 // 2**i) for i in range(5)]
    aug = m.seg_head["augment"]
    assert [type(a).__name__ for a in aug] == ["Identity"] * 3 + ["AttentionAugment"] * 2
    assert aug[3].out_channels == 256 + 2 + 64 and aug[3].offset.out_channels == 18
    assert out["features"].shape == (2, 512) and out["out"].shape == (2, 4)


def test_deep_supervision_weights_and_loss():
    """ad0afa8d Train.py: the mask is resized to seg_size/2 for L1 and L2 (the U-Net's level-2 side output is
    up-sampled to level 1), then halved again (bilinear, from the previous mask) for L3, L4 and L5."""
    assert FSDS_WEIGHTS == pytest.approx((0.95, 0.025, 0.0125, 0.00625, 0.003125))
    torch.manual_seed(0)
    sizes = (16, 16, 8, 4, 2)  # the original U-Net's outputs: Final_seg, decoder_layer_2 .. 5
    outs = [torch.randn(2, 1, s, s) for s in sizes]
    mask = torch.rand(2, 1, 32, 32) * 255  # raw mask values
    m = F.interpolate(mask, size=(16, 16), mode="bilinear", align_corners=False)
    expect = 0.95 * F.binary_cross_entropy_with_logits(outs[0], m).item()
    expect += 0.1 / 4 * F.binary_cross_entropy_with_logits(outs[1], m).item()
    for w, o in zip((0.1 / 8, 0.1 / 16, 0.1 / 32), outs[2:]):
        m = F.interpolate(m, size=o.shape[-2:], mode="bilinear", align_corners=False)  # cascade
        expect += w * F.binary_cross_entropy_with_logits(o, m).item()
    assert segmentation_loss(outs, mask, fsds=True).item() == pytest.approx(expect, rel=1e-6)
    direct = sum(w * F.binary_cross_entropy_with_logits(
        o, F.interpolate(mask, size=o.shape[-2:], mode="bilinear", align_corners=False)).item()
        for w, o in zip(FSDS_WEIGHTS, outs))
    assert abs(direct - expect) > 1e-4  # the cascade is what is pinned
    assert segmentation_loss(outs, mask, fsds=False).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(outs[0], F.interpolate(mask, size=(16, 16), mode="bilinear",
                                                                  align_corners=False)).item(), rel=1e-6)


def test_iou_dice_by_hand():
    logits = torch.tensor([[[[5.0, 5.0], [-5.0, -5.0]]], [[[-5.0, -5.0], [-5.0, -5.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    iou, dice = iou_dice(logits, target)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0]) and dice.tolist() == pytest.approx([0.5, 1.0])


def test_folder_names():
    assert get_folder_path(attention="xmnet", maskguided=True, cls_included=True, seg_included=False,
                           unet=False) == "XMNet_mask_guided_Classification"
    assert get_folder_path(attention="none", maskguided=False, cls_included=False, seg_included=True,
                           unet=False) == "Original_Segmentation_Unet3Plus"
