"""Section 3: cxrlt BN + CSRA head over the bare backbone, 512 px inference, TTA cost."""

from __future__ import annotations

import timm
import torch
from torch import nn

from benchmarks.context import Ctx
from benchmarks.core import forward_flops, train_step_fn

SECTION = "cxrlt"
TTA_CONFIGS = ("flip", "light", "medium", "heavy", "flip_scale")


def run(ctx: Ctx) -> None:
    from cxrlt.model import ConvNeXtV2CXR
    from cxrlt.tta import merge, tta_views

    dev = ctx.device
    if ctx.quick:
        base, tta_backbone, b, size, big, tb = "convnextv2_atto", "convnextv2_atto", 2, 64, 96, 1
    else:
        base, tta_backbone, b, size, big, tb = "convnextv2_base", "convnextv2_tiny", 4, 224, 512, 1
    ctx.note(SECTION, f"Training: {base}, batch {b}, {size} px. Inference: {base} at {big} px, batch {tb}. "
                      f"TTA: {tta_backbone} at {big} px, batch {tb} (smaller backbone to fit the time budget; "
                      "the ratio to no-TTA is what matters).")
    torch.manual_seed(0)
    x = torch.randn(b, 3, size, size, device=dev)
    y = (torch.rand(b, 30, device=dev) > 0.8).float()
    bce = nn.BCEWithLogitsLoss()

    bare = timm.create_model(base, pretrained=False, num_classes=0, global_pool="avg").to(dev).train()
    lin = nn.Linear(bare.num_features, 30).to(dev)
    bare_net = nn.Sequential(bare, lin)
    fl = 3 * forward_flops(lambda: bare_net(x))
    ref = f"bare {base} + linear train step"
    ctx.measure(SECTION, ref, train_step_fn(bare_net, lambda: bce(bare_net(x), y), amp=None, device=dev),
                items=b, flops=fl)
    bare_net = bare = None  # free the reference before building the next model

    model = ConvNeXtV2CXR(30, backbone=base).to(dev).train()
    fl = 3 * forward_flops(lambda: model(x))
    ctx.measure(SECTION, "ConvNeXtV2CXR (BN + CSRA) train step",
                train_step_fn(model, lambda: bce(model(x), y), amp=None, device=dev), items=b, flops=fl, ref=ref,
                note="target <= 1.05x bare")

    model.eval()
    xb = torch.randn(tb, 3, big, big, device=dev)
    with torch.no_grad():
        fl = forward_flops(lambda: model(xb))
        ctx.measure(SECTION, f"ConvNeXtV2CXR inference {big} px", lambda: model(xb), items=tb, flops=fl,
                    warmup=1, reps=ctx.reps)
    model = None

    tmodel = ConvNeXtV2CXR(30, backbone=tta_backbone).to(dev).eval()

    def tta(name: str) -> torch.Tensor:
        views = tta_views(name)
        return merge(torch.stack([tmodel(v(xb)) for v in views]), "mean")

    with torch.no_grad():
        none = f"{tta_backbone} {big} px, no TTA"
        ctx.measure(SECTION, none, lambda: tta("none"), items=tb, warmup=1, reps=ctx.reps)
        for name in TTA_CONFIGS:
            n_views = len(tta_views(name))
            ctx.measure(SECTION, f"{tta_backbone} {big} px, TTA {name} ({n_views} views)", lambda n=name: tta(n),
                        items=tb, ref=none, warmup=0, reps=max(1, ctx.reps - 1))
