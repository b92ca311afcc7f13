"""Attention formulas, mask guidance, freezing rules, encoder stages, decoders and deep supervision,
checked against hand computation from xmnet.md §5-§6."""

import pytest
import torch
import torch.nn.functional as F

from xmnet.backboneModels import (
    BACKBONES,
    MMANetAttention,
    XMNetAttention,
    XMNetModel,
    build_features,
    freeze_threshold,
    probe_stages,
)
from xmnet.unet3 import FSDS_WEIGHTS, UNet3PlusDecoder, UNetDecoder, segmentation_loss
from xmnet.utils import get_folder_path, iou_dice, mask_guided_mse


def test_xmnet_attention_matches_hand_computation():
    att = XMNetAttention()
    with torch.no_grad():
        att.conv.weight.copy_(torch.tensor([0.7, -0.3]).view(1, 2, 1, 1))
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]], [[-1.0, 4.0]]]])  # B=1, C=3, H=1, W=2
    out, a = att(f)
    for w in range(2):
        col = [f[0, c, 0, w].item() for c in range(3)]
        mean, mx = sum(col) / 3, max(col)
        expect_a = 1 / (1 + torch.exp(torch.tensor(-(0.7 * mean - 0.3 * mx)))).item()
        assert a[0, 0, 0, w].item() == pytest.approx(expect_a, rel=1e-6)
        for c in range(3):
            assert out[0, c, 0, w].item() == pytest.approx(0.5 * col[c] + 0.5 * expect_a * col[c], rel=1e-6)
    assert att.conv.bias is None and att.conv.in_channels == 2 and att.conv.out_channels == 1


def test_mmanet_attention_matches_hand_computation():
    f = torch.tensor([[[[2.0]], [[-1.0]], [[5.0]], [[0.0]]]])  # mean 1.5
    out, a = MMANetAttention()(f)
    s = 1 / (1 + torch.exp(torch.tensor(-1.5))).item()
    assert a.item() == pytest.approx(s, rel=1e-6)
    assert out.flatten().tolist() == pytest.approx([(0.5 + 0.5 * s) * v for v in (2.0, -1.0, 5.0, 0.0)], rel=1e-6)


def test_attention_never_fully_suppresses():  # quirk 17: F' >= 0.5 F for F >= 0
    f = torch.rand(2, 8, 3, 3) + 0.1
    for att in (XMNetAttention(), MMANetAttention()):
        out, _ = att(f)
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
        "mobilenet_v3_large": 10, "inception_v3": 10}


@pytest.mark.parametrize("backbone", ["densenet161", "resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_freezing_rule_applied_to_features_children(backbone):
    m = XMNetModel(backbone, 5, attention="xmnet")
    frozen = m.apply_freezing(freeze_all=False)
    names = [n for n, _ in m.features.named_children()]
    assert frozen == names[:freeze_threshold(backbone) - 1]  # 1-based position < threshold
    if backbone == "densenet161":  # xmnet.md §5.1: conv0 ... transition2
        assert frozen == ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                          "transition2"]
    if backbone == "resnet18":
        assert frozen == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    if backbone == "mobilenet_v2":
        assert frozen == [str(i) for i in range(10)]
    for name, child in m.features.named_children():
        trainable = any(p.requires_grad for p in child.parameters())
        has_params = any(True for _ in child.parameters())
        assert (not trainable) if name in frozen else (trainable or not has_params)
    assert all(p.requires_grad for p in m.classifier.parameters())
    assert all(p.requires_grad for p in m.attention.parameters())


def test_freeze_all_freezes_classification_network_only():
    m = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=True, att_from=5)
    m.apply_freezing(freeze_all=True)
    assert not any(p.requires_grad for mod in m.classification_modules() for p in mod.parameters())
    assert all(p.requires_grad for p in m.seg_head.parameters())


def test_densenet_width_and_feature_map_at_448():
    m = XMNetModel("densenet161", 7, attention="mmanet")
    assert m.num_features == 2208
    f, taps = m.forward_stages(torch.zeros(1, 3, 448, 448))
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


def test_model_segmentation_outputs_and_attention_wiring():
    m = XMNetModel("resnet18", 4, attention="xmnet", segmentation=True, unet=False, att_from=4, fsds=True)
    out = m(torch.randn(2, 3, 64, 64))
    assert [tuple(s.shape) for s in out["seg"]] == [(2, 1, 32 // 2**i, 32 // 2**i) for i in range(5)]
    aug = m.seg_head["augment"]
    assert [type(a).__name__ for a in aug] == ["Identity"] * 3 + ["AttentionAugment"] * 2
    assert aug[3].out_channels == 256 + 2 + 64 and aug[3].offset.out_channels == 18
    assert out["features"].shape == (2, 512) and out["out"].shape == (2, 4)


def test_deep_supervision_weights_and_loss():
    assert FSDS_WEIGHTS == pytest.approx((0.95, 0.025, 0.0125, 0.00625, 0.003125))
    torch.manual_seed(0)
    outs = [torch.randn(2, 1, 16 // 2**i, 16 // 2**i) for i in range(5)]
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    expect = 0.0
    for w, o in zip((0.95, 0.1 / 4, 0.1 / 8, 0.1 / 16, 0.1 / 32), outs):
        t = F.interpolate(mask, size=o.shape[-2:], mode="bilinear", align_corners=False)
        expect += w * F.binary_cross_entropy_with_logits(o, t).item()
    assert segmentation_loss(outs, mask, fsds=True).item() == pytest.approx(expect, rel=1e-6)
    assert segmentation_loss(outs, mask, fsds=False).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(outs[0], mask).item(), rel=1e-6)


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
