"""Heads over the fused C3/C4/C5 features (``--head_type``).

``fpn_pan`` (``FPN_PAN``, the published setting), exactly as the reference describes: all convs with
bias, no normalisation, no activation.
  P5 = s5(l5(C5)); P4 = s4(l4(C4) + up(P5)); P3 = s3(l3(C3) + up(P4))   (nearest upsampling)
  N3 = pan_s3(P3); N4 = pan_s4(P4 + pan_d4(N3)); N5 = pan_s5(P5 + pan_d5(N4))
  attention is applied after N4/N5 are computed (N4 uses the un-attended N3);
  logits = classifier(GAP(N3)). N4/N5 (pan_d4, pan_s4, pan_d5, pan_s5 and any N4/N5 attention) do not
  reach the logits (quirk 8); they are kept so parameter counts and checkpoints match.

Not documented by the reference (this re-implementation's choice): ``c5`` = classifier(GAP(C5));
``fpn`` = classifier(GAP(P3)); ``fpn_fuse`` = classifier(mean of GAP(P3), GAP(P4), GAP(P5)).
Attention keys: N3/N4/N5 for fpn_pan, P3/P4/P5 for fpn and fpn_fuse, C5 for c5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.attentions import build_attention
from dvxray.models.modules.custom_losses.signals import SignalChannel

HEAD_TYPES = ("c5", "fpn", "fpn_fuse", "fpn_pan")
ATTENTION_KEYS = {"c5": ("C5",), "fpn": ("P3", "P4", "P5"), "fpn_fuse": ("P3", "P4", "P5"),
                  "fpn_pan": ("N3", "N4", "N5")}


def _attentions(head_type: str, config: Mapping, channels: int, signal: SignalChannel | None) -> nn.ModuleDict:
    allowed = ATTENTION_KEYS[head_type]
    mods = nn.ModuleDict()
    for key, spec in config.items():
        if key not in allowed:
            raise ValueError(f"--attention_config: key '{key}' is not an output of head '{head_type}' "
                             f"(valid keys: {', '.join(allowed)})")
        mods[key] = build_attention(spec, channels, signal, where=key)
    return mods


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        c3, c4, c5 = in_channels
        self.fpn_l3 = nn.Conv2d(c3, out_channels, 1)
        self.fpn_l4 = nn.Conv2d(c4, out_channels, 1)
        self.fpn_l5 = nn.Conv2d(c5, out_channels, 1)
        self.fpn_s3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.fpn_s4 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.fpn_s5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def pyramid(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.fpn_s5(self.fpn_l5(c5))
        l4 = self.fpn_l4(c4)
        p4 = self.fpn_s4(l4 + F.interpolate(p5, size=l4.shape[-2:], mode="nearest"))
        l3 = self.fpn_l3(c3)
        p3 = self.fpn_s3(l3 + F.interpolate(p4, size=l3.shape[-2:], mode="nearest"))
        return p3, p4, p5


class FPN_PAN(_FPN):  # noqa: N801 - original class name
    """FPN + PAN neck with classification from N3 only.

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: neck width (``--fpn_out_channels``).
        num_classes: classifier outputs.
        attention_config: {"N3": spec, ...} (see ``attentions.build_attention``).
        signal: loss-to-attention channel.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_classes: int,
                 attention_config: Mapping | None = None, signal: SignalChannel | None = None):
        super().__init__(in_channels, out_channels)
        self.pan_d4 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.pan_d5 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.pan_s3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pan_s4 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pan_s5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.attn = _attentions("fpn_pan", attention_config or {}, out_channels, signal)
        self.classifier = nn.Linear(out_channels, num_classes)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p3, p4, p5 = self.pyramid(feats)
        n3 = self.pan_s3(p3)
        n4 = self.pan_s4(p4 + self.pan_d4(n3))
        n5 = self.pan_s5(p5 + self.pan_d5(n4))
        outs = {"N3": n3, "N4": n4, "N5": n5}
        # attention after the whole PAN: N4 was computed from the un-attended N3 (original order)
        for key, mod in self.attn.items():
            outs[key] = mod(outs[key])
        logits = self.classifier(outs["N3"].mean((2, 3)))
        return logits, outs


class FPNHead(_FPN):
    """``fpn`` (classify from P3) and ``fpn_fuse`` (mean of the pooled P3, P4, P5)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_classes: int, fuse: bool,
                 attention_config: Mapping | None = None, signal: SignalChannel | None = None):
        super().__init__(in_channels, out_channels)
        self.fuse = fuse
        self.attn = _attentions("fpn_fuse" if fuse else "fpn", attention_config or {}, out_channels, signal)
        self.classifier = nn.Linear(out_channels, num_classes)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = dict(zip(("P3", "P4", "P5"), self.pyramid(feats)))
        for key, mod in self.attn.items():
            outs[key] = mod(outs[key])
        if self.fuse:
            pooled = torch.stack([outs[k].mean((2, 3)) for k in ("P3", "P4", "P5")]).mean(0)
        else:
            pooled = outs["P3"].mean((2, 3))
        return self.classifier(pooled), outs


class C5Head(nn.Module):
    """Classifier on the pooled fused C5."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, attention_config: Mapping | None = None,
                 signal: SignalChannel | None = None):
        super().__init__()
        self.attn = _attentions("c5", attention_config or {}, in_channels[-1], signal)
        self.classifier = nn.Linear(in_channels[-1], num_classes)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c5 = feats[-1]
        if "C5" in self.attn:
            c5 = self.attn["C5"](c5)
        return self.classifier(c5.mean((2, 3))), {"C5": c5}


def build_head(head_type: str, in_channels: Sequence[int], out_channels: int, num_classes: int,
               attention_config: Mapping | None, signal: SignalChannel | None) -> nn.Module:
    """Head for ``--head_type`` (one of HEAD_TYPES)."""
    if head_type == "c5":
        return C5Head(in_channels, num_classes, attention_config, signal)
    if len(in_channels) != 3:
        raise ValueError(f"--head_type {head_type} needs three levels (--out_indices 1 2 3), got {len(in_channels)}")
    if head_type == "fpn_pan":
        return FPN_PAN(in_channels, out_channels, num_classes, attention_config, signal)
    if head_type in ("fpn", "fpn_fuse"):
        return FPNHead(in_channels, out_channels, num_classes, head_type == "fpn_fuse", attention_config, signal)
    raise ValueError(f"--head_type: unknown head '{head_type}' (choose from {', '.join(HEAD_TYPES)})")
