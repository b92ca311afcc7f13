"""The original's state-dict keys are a contract: the expected key lists and shapes are rebuilt here from
the original's module tree (rmf3mc/xmnet HEAD ``XMNET`` / ad0afa8d ``MMANET``, ``unet3.py``, ``utils.py``),
from torchvision and the formulas, not from our model; an original-style checkpoint must load strictly.

Facts used (xmnet.md §5-§6 and the original files):
- ``features`` = the ``DensenetEncoder`` / ``ResNetEncoder`` / ``MobileNet`` wrapper: ``features.features``
  = torchvision ``.features`` (ResNet: ``Sequential(*children[:-2])``, integer keys), ``features.classifier``
  = Linear (MobileNet: Sequential(Dropout(0.2), Linear)); ``classifier`` is the same module (its keys
  appear twice); ``attention`` = Conv2d(2, 1, 1, bias=False), always created.
- ``Encoders``: ``set_encoder_layers``: a 224 probe; a child whose output side differs from the previous
  one starts a level; level l = ``features.features[m_l:m_{l+1}]`` (the last to the end); the level widths
  are the widths of the children before each start, rotated by one (= the levels' output widths).
- HEAD skips: ``atten_layers.{1..5}`` = Conv2d(2, 1, 1, bias=False); skip = 0.5 x + 0.5 A x from ``att_from``.
- ad0afa8d skips: ``atten_layers.{i}`` = DeformConv2d(C, int(0.25 C), 3), ``offset_layers.{i}`` = Conv2d(C, 18, 3);
  skip = [x, sigmoid([mean, max]), deform] from ``att_from``.
- ``center`` = Conv2d(skip width of level 5, C5, 3).
- U-Net level l (``UNetDecoderLayerModule`` / ``...2``): ``layers.1`` = conv(skip_l + C_l -> C_{l-1}), ReLU,
  conv(C_{l-1} -> C_{l-1}), ReLU, Upsample x2 (align_corners=True); level 1: to C_1, then conv(C_1 -> 1).
- UNet3+ level l (``UNet3PlusDecoderLayerModule``): ``layers.{i}`` i = 1..5: conv(C_i -> 64) (+ Upsample x2^(i-l)
  when i > l, + MaxPool(3, 2^(l-i), 1) when i < l; i = l + 1 reads the 1-channel deeper output); ``layers.6``
  = conv(320 -> 1) (+ BatchNorm + ReLU except level 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xmnet.backboneModels import XMNetModel
from xmnet.engine_xmnet import load_model_path


def _tv_features(backbone: str) -> nn.Sequential:
    net = getattr(torchvision.models, backbone)(weights=None)
    if backbone.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2])
    return net.features


def _original_levels(feats: nn.Sequential) -> tuple[list[int], list[int]]:
    """(start child of each level, level widths) by the original's get_model_specs rule."""
    x, prev, starts, widths = torch.zeros(1, 3, 224, 224), 224, [], []
    with torch.no_grad():
        feats.eval()
        for i, child in enumerate(feats):
            x = child(x)
            widths.append(x.shape[1])
            if x.shape[-1] != prev:
                starts.append(i)
                prev = x.shape[-1]
    chans = [widths[m - 1] for m in starts]
    return starts, chans[1:] + chans[:1]


def _shapes(module: nn.Module, prefix: str) -> dict[str, tuple]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def original_key_shapes(backbone: str, num_classes: int, *, seg: bool = False, unet: bool = True,
                        arch: str = "head", att_from: int = 3) -> dict[str, tuple]:
    feats = _tv_features(backbone)
    starts, C = _original_levels(feats)
    keys = _shapes(feats, "features.features.")
    cls = {"weight": (num_classes, C[-1]), "bias": (num_classes,)}
    pre = "1." if backbone.startswith("mobilenet") else ""
    for owner in ("features.classifier.", "classifier."):
        keys.update({f"{owner}{pre}{k}": v for k, v in cls.items()})
    keys["attention.weight"] = (1, 2, 1, 1)
    if not seg:
        return keys
    assert len(starts) == 5 and starts[0] == 0
    bounds = starts + [len(feats)]
    for level in range(1, 6):
        keys.update(_shapes(feats[bounds[level - 1]:bounds[level]], f"Encoders.{level}."))
    if arch == "head":
        skip = list(C)
        keys.update({f"atten_layers.{i}.weight": (1, 2, 1, 1) for i in range(1, 6)})
    else:
        skip = [int(c * 1.25) + 2 if i >= att_from else c for i, c in enumerate(C, start=1)]  # ad0afa8d's widths
        for i, c in enumerate(C, start=1):
            keys[f"atten_layers.{i}.weight"] = (int(c * 0.25), c, 3, 3)
            keys[f"atten_layers.{i}.bias"] = (int(c * 0.25),)
            keys[f"offset_layers.{i}.weight"] = (18, c, 3, 3)
            keys[f"offset_layers.{i}.bias"] = (18,)
    keys["center.weight"], keys["center.bias"] = (C[4], skip[4], 3, 3), (C[4],)
    for level in range(1, 6):
        p = f"decoder_layers.{level}.layers."
        if unet:
            cin, cout = skip[level - 1] + C[level - 1], (C[level - 2] if level > 1 else C[0])
            keys.update({p + "1.0.weight": (cout, cin, 3, 3), p + "1.0.bias": (cout,),
                         p + "1.2.weight": (cout, cout, 3, 3), p + "1.2.bias": (cout,)})
            if level == 1:
                keys.update({p + "1.4.weight": (1, cout, 3, 3), p + "1.4.bias": (1,)})
            continue
        for i in range(1, 6):
            cin = 1 if i == level + 1 else skip[i - 1]
            sub = "" if i == level else "0."
            keys.update({f"{p}{i}.{sub}weight": (64, cin, 3, 3), f"{p}{i}.{sub}bias": (64,)})
        if level == 1:
            keys.update({p + "6.weight": (1, 320, 3, 3), p + "6.bias": (1,)})
        else:
            keys.update({p + "6.0.weight": (1, 320, 3, 3), p + "6.0.bias": (1,)})
            keys.update({p + "6.1." + k: s for k, s in
                         {"weight": (1,), "bias": (1,), "running_mean": (1,), "running_var": (1,),
                          "num_batches_tracked": ()}.items()})
    return keys


def _ours(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# every attention type on the small backbones; one or two on the bigger ones (their keys do not depend on it)
_CLS_CASES = [(b, a) for b in ("resnet18", "mobilenet_v2", "mobilenet_v3_large") for a in ("xmnet", "mmanet", "none")]
_CLS_CASES += [("densenet161", "xmnet"), ("resnet50", "xmnet"), ("resnet50", "mmanet")]


@pytest.mark.parametrize(("backbone", "attention"), _CLS_CASES)
def test_classification_keys_are_the_originals(backbone, attention):
    assert _ours(XMNetModel(backbone, 7, attention=attention)) == original_key_shapes(backbone, 7)


@pytest.mark.parametrize(("arch", "unet", "att_from"),
                         [("head", True, 3), ("head", False, 1), ("ad0afa8d", True, 3), ("ad0afa8d", True, 1),
                          ("ad0afa8d", False, 6), ("head", True, 6)])
def test_segmentation_keys_are_the_originals(arch, unet, att_from):
    m = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=unet, att_from=att_from,
                   fsds=True, seg_arch=arch)
    assert _ours(m) == original_key_shapes("resnet18", 5, seg=True, unet=unet, arch=arch, att_from=att_from)


def test_segmentation_keys_mobilenet():
    m = XMNetModel("mobilenet_v2", 5, attention="xmnet", segmentation=True, unet=True, att_from=2)
    assert _ours(m) == original_key_shapes("mobilenet_v2", 5, seg=True, unet=True)


def test_densenet161_encoder_slices_and_widths_are_the_originals():
    feats = _tv_features("densenet161")
    starts, widths = _original_levels(feats)
    assert starts == [0, 3, 5, 7, 9] and widths == [96, 384, 768, 2112, 2208]
    m = XMNetModel("densenet161", 200, attention="xmnet", segmentation=True, unet=False, att_from=3)
    assert _ours(m) == original_key_shapes("densenet161", 200, seg=True, unet=False)
    assert [list(m.Encoders[str(i)]._modules) for i in range(1, 6)] == [
        ["conv0", "norm0", "relu0"], ["pool0", "denseblock1"], ["transition1", "denseblock2"],
        ["transition2", "denseblock3"], ["transition3", "denseblock4", "norm5"]]
    assert m.Encoders["2"].denseblock1 is m.features.features.denseblock1  # shared, as the original's slices


@pytest.mark.parametrize("arch", ["head", "ad0afa8d"])
def test_original_segmentation_checkpoint_loads_strict(tmp_path, arch):
    torch.manual_seed(0)
    shapes = original_key_shapes("resnet18", 5, seg=True, unet=True, arch=arch, att_from=2)
    net = {k: torch.randn(s) if s else torch.tensor(3) for k, s in shapes.items()}
    for k in [k for k in net if k.startswith("Encoders.")]:  # the slices hold the backbone's own tensors
        level, rest = k[len("Encoders."):].split(".", 1)
        net[k] = net[f"features.features.{rest}"]
    net["classifier.weight"], net["classifier.bias"] = net["features.classifier.weight"], net["features.classifier.bias"]
    path = tmp_path / "densenet161_MMANet_Segmentation.pth"
    torch.save({"net": net, "test_iou": 50.0, "Test_acc": 10.0, "epoch": 3}, path)
    m = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=True, att_from=2, seg_arch=arch)
    load_model_path(m, str(path))
    ours = m.state_dict()
    assert set(ours) == set(net) and all(torch.equal(ours[k], net[k]) for k in net)


def test_classification_checkpoint_loads_into_segmentation_model(tmp_path):
    torch.manual_seed(0)
    cls = XMNetModel("resnet18", 5, attention="xmnet")
    torch.save({"net": cls.state_dict()}, tmp_path / "c.pth")
    seg = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=True)
    load_model_path(seg, str(tmp_path / "c.pth"))
    assert torch.equal(seg.Encoders["5"][0][0].conv1.weight, cls.features.features[7][0].conv1.weight)
    assert torch.equal(seg.attention.weight, cls.attention.weight)


def test_legacy_checkpoint_of_this_project_is_translated(tmp_path):
    torch.manual_seed(0)
    ref = XMNetModel("resnet18", 5, attention="xmnet")
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    legacy = {}
    for k, v in ref.state_dict().items():  # the earlier layout: features.<torchvision name>, attention.conv
        if k.startswith("features.features."):
            idx, rest = k[len("features.features."):].split(".", 1)
            legacy[f"features.{names[int(idx)]}.{rest}"] = v
        elif k == "attention.weight":
            legacy["attention.conv.weight"] = v
        elif k.startswith("classifier."):
            legacy[k] = v
    torch.save({"net": legacy}, tmp_path / "old.pth")
    m = XMNetModel("resnet18", 5, attention="xmnet")
    load_model_path(m, str(tmp_path / "old.pth"))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def _conv(x, sd, name, padding=1):
    return F.conv2d(x, sd[name + ".weight"], sd.get(name + ".bias"), padding=padding)


@pytest.mark.parametrize("att_from", [1, 3, 6])
def test_head_unet_forward_equals_the_original_formulas(att_from):
    """HEAD get_encoder_ops + UNetDecoderLayerModule + the channel-mean side outputs, computed by hand."""
    torch.manual_seed(0)
    m = XMNetModel("resnet18", 4, attention="xmnet", segmentation=True, unet=True, att_from=att_from, fsds=True)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    m.eval()
    sd = m.state_dict()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        tv = torchvision.models.resnet18(weights=None).eval()
        index = {n: str(i) for i, n in enumerate(["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                                  "layer4"])}
        tv.load_state_dict({k: sd["features.features." + index[k.split(".")[0]] + k[len(k.split(".")[0]):]]
                            for k in tv.state_dict() if not k.startswith("fc.")}, strict=False)
        t1 = tv.relu(tv.bn1(tv.conv1(x)))
        taps = [t1]
        for layer in (lambda z: tv.layer1(tv.maxpool(z)), tv.layer2, tv.layer3, tv.layer4):
            taps.append(layer(taps[-1]))
        skips = []
        for level, t in enumerate(taps, start=1):
            if level >= att_from:
                desc = torch.cat([t.mean(1, keepdim=True), t.max(1, keepdim=True)[0]], 1)
                a = torch.sigmoid(F.conv2d(desc, sd[f"atten_layers.{level}.weight"]))
                t = 0.5 * t + 0.5 * (a * t)
            skips.append(t)
        d = _conv(skips[4], sd, "center")
        dec = {}
        for level in range(5, 0, -1):
            p = f"decoder_layers.{level}.layers.1"
            z = torch.cat([skips[level - 1], d], 1)
            z = F.relu(_conv(z, sd, p + ".0"))
            z = F.relu(_conv(z, sd, p + ".2"))
            z = _conv(z, sd, p + ".4") if level == 1 else F.interpolate(z, scale_factor=2, mode="bilinear",
                                                                          align_corners=True)
            dec[level] = d = z
        expect = [dec[1]] + [dec[k].mean(1, keepdim=True) for k in range(2, 6)]
    assert [tuple(o.shape) for o in out["seg"]] == [(2, 1, 32, 32), (2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8),
                                                    (2, 1, 4, 4)]
    for got, want in zip(out["seg"], expect):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unet3plus_level_formula():
    """UNet3PlusDecoderLayerModule, level 3 of 5: branches from encoder 1-2 (conv + max-pool), encoder 3
    (conv), the deeper decoder output (conv + x2 up), encoder 5 (conv + x4 up); fused by conv + BN + ReLU."""
    from xmnet.unet3 import UNet3PlusDecoderLevel

    torch.manual_seed(0)
    C = [4, 6, 8, 10, 12]
    lvl = UNet3PlusDecoderLevel(3, C, C).eval()
    skips = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(C)]
    deeper = torch.randn(1, 1, 4, 4)
    sd = lvl.state_dict()
    with torch.no_grad():
        got = lvl(skips, deeper)
        parts = [F.max_pool2d(_conv(skips[0], sd, "layers.1.0"), 3, stride=4, padding=1),
                 F.max_pool2d(_conv(skips[1], sd, "layers.2.0"), 3, stride=2, padding=1),
                 _conv(skips[2], sd, "layers.3"),
                 F.interpolate(_conv(deeper, sd, "layers.4.0"), scale_factor=2, mode="bilinear", align_corners=True),
                 F.interpolate(_conv(skips[4], sd, "layers.5.0"), scale_factor=4, mode="bilinear", align_corners=True)]
        z = _conv(torch.cat(parts, 1), sd, "layers.6.0")
        bn = lvl.layers["6"][1]
        want = F.relu(F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))
    assert got.shape == (1, 1, 8, 8)
    torch.testing.assert_close(got, want)
