"""Dual-view ConvNeXt-V2 (MCB-U ``ConvNeXtV2Dual``): one shared backbone on the OL and SD views,
per-level view fusion, a neck/head and optional attention on the neck outputs.

The two views go through the *same* backbone in one batched forward pass (views concatenated along
the batch axis). ConvNeXt-V2 normalises per sample (LayerNorm, GRN), so this equals two separate
passes (the original does two passes); ``batch_views=False`` restores the two-pass form.

Levels: backbone stage i (``--out_indices``) is named C{i+2}, so stages 1, 2, 3 are C3, C4, C5.
Levels not listed in ``--fuse_levels`` use the OL view's features alone (not documented by the
reference). When the SD view is missing the OL view is used twice (as in the original).

State-dict names are the original's (reference ``dvxray.md`` §10.3a), so an original checkpoint loads
strict into this model and this model's into the original: ``backbone.*`` (with the original's empty
``backbone.head`` Linear(C, 0), quirk 12), ``fpn.*`` (``fpn_fuse`` only), ``fpn_pan.*`` with the
attention at ``fpn_pan.attn3/attn4/attn5`` (``fpn_pan`` only), a parameter-free ``global_pool`` and the
top-level ``classifier``. The classifier's input is, as there, C5's channels for ``c5``, the sum of the
fused levels' channels for ``fpn`` and ``--fpn_out_channels`` for ``fpn_fuse``/``fpn_pan``. The forward
passes of ``c5``, ``fpn`` and ``fpn_fuse`` are not documented by the reference; here ``c5`` classifies
GAP(fused C5), ``fpn`` the concatenated GAPs of the fused levels (the form its classifier width
implies) and ``fpn_fuse`` the mean of GAP(P3), GAP(P4), GAP(P5). The original builds attention modules
only inside ``FPN_PAN``, so ``--attention_config`` is refused for the other heads. The fusion modules
(``fusions.*``, ``inter_level.*``) are this re-implementation's: the reference names the original's
(``xattn_fuses``, ``fuse_convs``, ``gated_fuses``, ``ahcr_fuser``) but not their insides, and the
published ``add`` fusion has no parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel
from dvxray.models.modules.fusions import build_fusion, view_similarity
from dvxray.models.modules.necks import FPN, FPN_PAN, HEAD_TYPES


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
        if head_type not in HEAD_TYPES:
            raise ValueError(f"--head_type: unknown head '{head_type}' (choose from {', '.join(HEAD_TYPES)})")
        if head_type in ("fpn_fuse", "fpn_pan") and len(channels) != 3:
            raise ValueError(f"--head_type {head_type} needs three levels (--out_indices 1 2 3), got {len(channels)}")
        if attention_config and head_type != "fpn_pan":
            raise ValueError(f"--attention_config: head '{head_type}' has no attention placements (the original "
                             f"builds attention only in fpn_pan, keys N3/N4/N5)")
        # the original backbone keeps an empty Linear(C, 0) head whose keys are in its state_dict
        if getattr(backbone, "head", None) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
                backbone.head = nn.Linear(backbone.dims[-1], 0)
        self.fpn = FPN(channels, fpn_out_channels) if head_type == "fpn_fuse" else None
        self.fpn_pan = FPN_PAN(channels, fpn_out_channels, attention_config, signal) if head_type == "fpn_pan" else None
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        if head_type == "c5":
            feat_ch = channels[-1]
        elif head_type == "fpn":
            feat_ch = sum(c for lv, c in zip(self.levels, channels) if lv in self.fusions)
        else:
            feat_ch = fpn_out_channels
        self.classifier = nn.Linear(feat_ch, num_classes)
        self.head_type = head_type
        self.return_intermediate = return_intermediate
        self.batch_views = batch_views
        self.signal = signal

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

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(x).flatten(1)

    def head(self, fused: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the neck outputs from the fused levels."""
        if self.head_type == "fpn_pan":
            outs = self.fpn_pan(fused)
            return self.classifier(self._pool(outs["N3"])), outs
        if self.head_type == "fpn_fuse":
            outs = self.fpn(fused)
            return self.classifier(torch.stack([self._pool(outs[k]) for k in ("P3", "P4", "P5")]).mean(0)), outs
        if self.head_type == "fpn":
            pooled = [self._pool(f) for lv, f in zip(self.levels, fused) if lv in self.fusions]
            return self.classifier(torch.cat(pooled, dim=1)), {}
        return self.classifier(self._pool(fused[-1])), {}

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor | None = None):
        if img_b is None:
            img_b = img_a
        feats_a, feats_b = self.extract(img_a, img_b)
        fused = self.fuse(feats_a, feats_b)
        logits, outs = self.head(fused)
        if self.return_intermediate:
            return {"logits": logits, "features": {**dict(zip(self.levels, fused)), **outs}}
        return logits
