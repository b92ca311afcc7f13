"""Weight conversion: official / timm checkpoints -> backbone-only safetensors that reproduce the
official ConvNeXt-V2 features (reference written here from golden_references.md §1)."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from common.checkpoint import CheckpointError
from dvxray.engine_finetune import load_finetune_weights
from dvxray.models.convnextv2 import create_model
from dvxray.models.convnextv2_dual import ConvNeXtV2Dual
from dvxray.tools.map_official_v2_weights import convert_state_dict
from dvxray.tools.map_official_v2_weights import main as convert_main

DEPTHS, DIMS = (2, 2, 6, 2), (40, 80, 160, 320)  # convnextv2_atto


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official key layout, including the 1000-class head."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {"downsample_layers.0.0.weight": r(DIMS[0], 3, 4, 4), "downsample_layers.0.0.bias": r(DIMS[0]),
          "downsample_layers.0.1.weight": 1 + r(DIMS[0]), "downsample_layers.0.1.bias": r(DIMS[0])}
    for i in range(1, 4):
        sd[f"downsample_layers.{i}.0.weight"] = 1 + r(DIMS[i - 1])
        sd[f"downsample_layers.{i}.0.bias"] = r(DIMS[i - 1])
        sd[f"downsample_layers.{i}.1.weight"] = r(DIMS[i], DIMS[i - 1], 2, 2)
        sd[f"downsample_layers.{i}.1.bias"] = r(DIMS[i])
    for s, (d, c) in enumerate(zip(DEPTHS, DIMS)):
        for b in range(d):
            k = f"stages.{s}.{b}."
            sd[k + "dwconv.weight"], sd[k + "dwconv.bias"] = r(c, 1, 7, 7), r(c)
            sd[k + "norm.weight"], sd[k + "norm.bias"] = 1 + r(c), r(c)
            sd[k + "pwconv1.weight"], sd[k + "pwconv1.bias"] = r(4 * c, c), r(4 * c)
            sd[k + "grn.gamma"], sd[k + "grn.beta"] = r(1, 1, 1, 4 * c), r(1, 1, 1, 4 * c)
            sd[k + "pwconv2.weight"], sd[k + "pwconv2.bias"] = r(c, 4 * c), r(c)
    sd["norm.weight"], sd["norm.bias"] = 1 + r(DIMS[3]), r(DIMS[3])
    sd["head.weight"], sd["head.bias"] = r(1000, DIMS[3]), r(1000)
    return sd


def _ln_cf(x, w, b):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return w[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + b[:, None, None]


def _reference_features(sd, x):
    """Official ConvNeXt-V2 forward (stage outputs), written from the architecture description."""
    feats = []
    for i in range(4):
        p = f"downsample_layers.{i}."
        if i == 0:
            x = _ln_cf(F.conv2d(x, sd[p + "0.weight"], sd[p + "0.bias"], stride=4), sd[p + "1.weight"], sd[p + "1.bias"])
        else:
            x = F.conv2d(_ln_cf(x, sd[p + "0.weight"], sd[p + "0.bias"]), sd[p + "1.weight"], sd[p + "1.bias"], stride=2)
        for b in range(DEPTHS[i]):
            k = f"stages.{i}.{b}."
            c = DIMS[i]
            h = F.conv2d(x, sd[k + "dwconv.weight"], sd[k + "dwconv.bias"], padding=3, groups=c).permute(0, 2, 3, 1)
            h = F.layer_norm(h, (c,), sd[k + "norm.weight"], sd[k + "norm.bias"], 1e-6)
            h = F.gelu(F.linear(h, sd[k + "pwconv1.weight"], sd[k + "pwconv1.bias"]))
            gx = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
            h = sd[k + "grn.gamma"] * (h * nx) + sd[k + "grn.beta"] + h
            h = F.linear(h, sd[k + "pwconv2.weight"], sd[k + "pwconv2.bias"])
            x = x + h.permute(0, 3, 1, 2)
        feats.append(x)
    return feats


def test_official_checkpoint_converts_to_identical_features(tmp_path):
    sd = _official_state_dict()
    src = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": sd}, src)
    dst = tmp_path / "convnextv2_atto.mapped_to_backbone.safetensors"
    convert_main(argparse.Namespace(input=str(src), output=str(dst), add_prefix="backbone."))
    converted = load_file(str(dst))
    assert not any(k.startswith("backbone.head.") for k in converted)
    model = ConvNeXtV2Dual(create_model("convnextv2_atto", num_classes=0), 15, fuse_mode="add", head_type="fpn_pan")
    counts = load_finetune_weights(model, dst, report_dir=tmp_path / "run")
    missing = (tmp_path / "run/finetune_missing_keys.txt").read_text().split()
    # only the original's empty Linear(C, 0) head is missing from the backbone, as there (quirk 12)
    assert sorted(k for k in missing if k.startswith("backbone.")) == ["backbone.head.bias", "backbone.head.weight"]
    assert (tmp_path / "run/finetune_unexpected_keys.txt").read_text() == ""
    assert counts["loaded"] == len(sd) - 2 and counts["unexpected"] == 0 and counts["shape_skipped"] == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone.forward_features(x, (0, 1, 2, 3))
        ref = _reference_features(sd, x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_timm_checkpoint_converts_to_identical_features():
    timm = pytest.importorskip("timm")
    net = timm.create_model("convnextv2_atto", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "grn" in name:
                p.normal_(std=0.1)
    converted = convert_state_dict(net.state_dict(), "")
    ours = create_model("convnextv2_atto", num_classes=0).eval()
    result = ours.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x, (3,))[0], net.forward_features(x), rtol=1e-4, atol=1e-4)


def test_fcmae_checkpoint_is_refused(tmp_path):
    sd = {"encoder.stages.0.0.dwconv.kernel": torch.zeros(49, 40), "mask_token": torch.zeros(1, 512, 1, 1)}
    with pytest.raises(CheckpointError, match="FCMAE pre-training checkpoint"):
        convert_state_dict(sd, source="fcmae.pt")


def test_head_filter_runs_before_module_strip():
    # quirk 11: 'module.head.*' survives the head filter and is then shape-skipped at load time
    out = convert_state_dict({"module.head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2),
                              "stages.0.0.grn.gamma": torch.zeros(4)})
    assert set(out) == {"backbone.head.weight", "backbone.stages.0.0.grn.gamma"}
    assert out["backbone.stages.0.0.grn.gamma"].shape == (1, 1, 1, 4)
