"""Necks over the fused C3/C4/C5 features (``--head_type fpn_fuse`` and ``fpn_pan``).

Module and attribute names are the original's (reference ``dvxray.md`` §10.3a), so they are its
state-dict keys: the dual model holds ``FPN`` as ``fpn`` (attributes ``l3 l4 l5 s3 s4 s5``) and
``FPN_PAN`` as ``fpn_pan`` (attributes ``fpn_l3 fpn_s3 fpn_l4 fpn_s4 fpn_l5 fpn_s5 pan_d4 pan_d5 pan_s3
pan_s4 pan_s5`` and ``attn3``/``attn4``/``attn5`` for the ``--attention_config`` keys N3/N4/N5). The
classifier is not part of a neck: it sits at the top level of the dual model (``classifier``).

``FPN_PAN`` (the published setting), exactly as the reference describes: all convs with bias, no
normalisation, no activation.
  P5 = s5(l5(C5)); P4 = s4(l4(C4) + up(P5)); P3 = s3(l3(C3) + up(P4))   (nearest upsampling)
  N3 = pan_s3(P3); N4 = pan_s4(P4 + pan_d4(N3)); N5 = pan_s5(P5 + pan_d5(N4))
  attention is applied after N4/N5 are computed (N4 uses the un-attended N3);
  the dual model classifies GAP(N3). N4/N5 (pan_d4, pan_s4, pan_d5, pan_s5 and any N4/N5 attention)
  do not reach the logits (quirk 8); they are kept so parameter counts and checkpoints match.

``FPN`` (``fpn_fuse`` only) uses the same top-down pathway with the attribute names ``l3 … s5``; how
the original combines P3/P4/P5 for its classifier is not documented (see the dual model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.attentions import build_attention
from dvxray.models.modules.custom_losses.signals import SignalChannel

HEAD_TYPES = ("c5", "fpn", "fpn_fuse", "fpn_pan")
# --attention_config key -> FPN_PAN attribute (the original has attention placements nowhere else)
ATTENTION_ATTRS = {"N3": "attn3", "N4": "attn4", "N5": "attn5"}


def _top_down(l3: nn.Module, l4: nn.Module, l5: nn.Module, s3: nn.Module, s4: nn.Module, s5: nn.Module,
              feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c3, c4, c5 = feats
    p5 = s5(l5(c5))
    lat4 = l4(c4)
    p4 = s4(lat4 + F.interpolate(p5, size=lat4.shape[-2:], mode="nearest"))
    lat3 = l3(c3)
    p3 = s3(lat3 + F.interpolate(p4, size=lat3.shape[-2:], mode="nearest"))
    return p3, p4, p5


class FPN(nn.Module):
    """Top-down FPN (``--head_type fpn_fuse``). Args: in_channels: C3, C4, C5 channels; out_channels: width."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        c3, c4, c5 = in_channels
        self.l3 = nn.Conv2d(c3, out_channels, 1)
        self.l4 = nn.Conv2d(c4, out_channels, 1)
        self.l5 = nn.Conv2d(c5, out_channels, 1)
        self.s3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.s4 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.s5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        p3, p4, p5 = _top_down(self.l3, self.l4, self.l5, self.s3, self.s4, self.s5, feats)
        return {"P3": p3, "P4": p4, "P5": p5}


class FPN_PAN(nn.Module):  # noqa: N801 - original class name
    """FPN + PAN neck; returns N3, N4, N5 (attention applied where configured).

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: neck width (``--fpn_out_channels``).
        attention_config: {"N3": spec, ...} (see ``attentions.build_attention``), built as ``attn3`` etc.
        signal: loss-to-attention channel.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, attention_config: Mapping | None = None,
                 signal: SignalChannel | None = None):
        super().__init__()
        c3, c4, c5 = in_channels
        # attribute order = the original's, so state_dict() lists the keys in the original order
        self.fpn_l3 = nn.Conv2d(c3, out_channels, 1)
        self.fpn_s3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.fpn_l4 = nn.Conv2d(c4, out_channels, 1)
        self.fpn_s4 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.fpn_l5 = nn.Conv2d(c5, out_channels, 1)
        self.fpn_s5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pan_d4 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.pan_d5 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.pan_s3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pan_s4 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pan_s5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        config = dict(attention_config or {})
        unknown = [k for k in config if k not in ATTENTION_ATTRS]
        if unknown:
            raise ValueError(f"--attention_config: key '{unknown[0]}' is not an output of head 'fpn_pan' "
                             f"(valid keys: {', '.join(ATTENTION_ATTRS)})")
        self.attn_keys = [k for k in ATTENTION_ATTRS if k in config]
        for key in self.attn_keys:
            setattr(self, ATTENTION_ATTRS[key], build_attention(config[key], out_channels, signal, where=key))

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        p3, p4, p5 = _top_down(self.fpn_l3, self.fpn_l4, self.fpn_l5, self.fpn_s3, self.fpn_s4, self.fpn_s5, feats)
        n3 = self.pan_s3(p3)
        n4 = self.pan_s4(p4 + self.pan_d4(n3))
        n5 = self.pan_s5(p5 + self.pan_d5(n4))
        outs = {"N3": n3, "N4": n4, "N5": n5}
        # attention after the whole PAN: N4 was computed from the un-attended N3 (original order)
        for key in self.attn_keys:
            outs[key] = getattr(self, ATTENTION_ATTRS[key])(outs[key])
        return outs
