"""Dual-view ConvNeXt-V2 (MCB-U ``ConvNeXtV2Dual``): one shared backbone on the OL and SD views,
per-level view fusion, a neck/head and optional attention on the neck outputs.

The two views go through the *same* backbone in one batched forward pass (views concatenated along
the batch axis). ConvNeXt-V2 normalises per sample (LayerNorm, GRN), so this equals two separate
passes (the original does two passes); ``batch_views=False`` restores the two-pass form.

Levels: backbone stage i (``--out_indices``) is named C{i+2}, so stages 1, 2, 3 are C3, C4, C5.
Levels not listed in ``--fuse_levels`` use the OL view's features alone (not documented by the
reference). When the SD view is missing the OL view is used twice (as in the original).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel
from dvxray.models.modules.fusions import build_fusion, view_similarity
from dvxray.models.modules.necks import build_head


def level_name(stage_index: int) -> str:
    return f"C{stage_index + 2}"


class ConvNeXtV2Dual(nn.Module):
    """Args:
        backbone: a ``ConvNeXtV2`` built with ``num_classes=0`` (kept as attribute ``backbone`` so
            converted ``backbone.*`` weights load).
        num_classes: outputs.
        fuse_mode: add | concat | gated | xattn | ahcr.
        fuse_levels: level names fused (default all kept levels).
        out_indices: backbone stages kept.
        head_type: c5 | fpn | fpn_fuse | fpn_pan.
        fpn_out_channels: neck width.
        attention_config: {"N3": "coordatt_u", ...}.
        xattn_heads, xattn_reduction: cross-attention fusion settings.
        ahcr_mode: intra_level | inter_level.
        return_intermediate: forward returns {"logits", "features"} instead of logits.
        signal: loss-to-attention channel (shared with the loss).
        batch_views: run both views in one backbone pass.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 15, *, fuse_mode: str = "concat",
                 fuse_levels: Sequence[str] | None = None, out_indices: Sequence[int] = (1, 2, 3),
                 head_type: str = "c5", fpn_out_channels: int = 256, attention_config: Mapping | None = None,
                 xattn_heads: int = 4, xattn_reduction: int = 4, ahcr_mode: str = "intra_level",
                 return_intermediate: bool = False, signal: SignalChannel | None = None, batch_views: bool = True):
        super().__init__()
        out_indices = sorted(set(int(i) for i in out_indices))
        if not out_indices or min(out_indices) < 0 or max(out_indices) > 3:
            raise ValueError(f"--out_indices must be stage numbers in 0..3, got {list(out_indices)}")
        self.backbone = backbone
        self.out_indices = out_indices
        self.levels = [level_name(i) for i in out_indices]
        channels = [backbone.dims[i] for i in out_indices]
        fuse_levels = list(self.levels if fuse_levels is None else fuse_levels)
        unknown = [lv for lv in fuse_levels if lv not in self.levels]
        if unknown:
            raise ValueError(f"--fuse_levels {unknown} are not kept levels {self.levels} (from --out_indices)")
        if ahcr_mode not in ("intra_level", "inter_level"):
            raise ValueError(f"--ahcr_mode: unknown mode '{ahcr_mode}' (choose from intra_level, inter_level)")
        self.fuse_mode = fuse_mode
        self.ahcr_mode = ahcr_mode
        self.fusions = nn.ModuleDict({
            lv: build_fusion(fuse_mode, c, xattn_heads=xattn_heads, xattn_reduction=xattn_reduction)
            for lv, c in zip(self.levels, channels) if lv in fuse_levels
        })
        self.inter_level = nn.ModuleDict()
        if fuse_mode == "ahcr" and ahcr_mode == "inter_level":
            for lv, c, c_next in zip(self.levels[:-1], channels[:-1], channels[1:]):
                self.inter_level[lv] = nn.Conv2d(c_next, c, 1)
        self.head = build_head(head_type, channels, fpn_out_channels, num_classes, attention_config, signal)
        self.head_type = head_type
        self.return_intermediate = return_intermediate
        self.batch_views = batch_views
        self.signal = signal

    # The signal channel's state (CoordAtt-U's w_mcb EMA) travels with the model's state_dict, so a
    # checkpoint evaluates identically after resume or in eval_only.py (the original lost it, quirk 5).
    def get_extra_state(self) -> dict:
        return {"signal": self.signal.state_dict()} if self.signal is not None else {}

    def set_extra_state(self, state: dict) -> None:
        if self.signal is not None and state.get("signal") is not None:
            self.signal.load_state_dict(state["signal"])

    def extract(self, img_a: torch.Tensor, img_b: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-view backbone features at the kept levels."""
        if self.batch_views:
            feats = self.backbone.forward_features(torch.cat([img_a, img_b], dim=0), self.out_indices)
            n = img_a.shape[0]
            return [f[:n] for f in feats], [f[n:] for f in feats]
        return (self.backbone.forward_features(img_a, self.out_indices),
                self.backbone.forward_features(img_b, self.out_indices))

    def fuse(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        fused = [self.fusions[lv](a, b) if lv in self.fusions else a
                 for lv, a, b in zip(self.levels, feats_a, feats_b)]
        if len(self.inter_level):
            # coarse-to-fine so each level sees the already refined coarser one
            for i in range(len(self.levels) - 2, -1, -1):
                lv = self.levels[i]
                up = F.interpolate(self.inter_level[lv](fused[i + 1]), size=fused[i].shape[-2:], mode="nearest")
                fused[i] = fused[i] + view_similarity(feats_a[i], feats_b[i]) * up
        return fused

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor | None = None):
        if img_b is None:
            img_b = img_a
        feats_a, feats_b = self.extract(img_a, img_b)
        fused = self.fuse(feats_a, feats_b)
        logits, outs = self.head(fused)
        if self.return_intermediate:
            return {"logits": logits, "features": {**dict(zip(self.levels, fused)), **outs}}
        return logits
