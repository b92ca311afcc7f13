"""Per-level fusion of the OL-view and SD-view features (``--fuse_mode``).

``add`` is the published setting: fused = C_A + C_B, no parameters. The reference does not document
the internals of the other modes; the forms below are this re-implementation's choice:
* ``concat``: 1x1 conv over [C_A, C_B] back to C channels;
* ``gated``: g = sigmoid(1x1 conv over [C_A, C_B]); g * C_A + (1 - g) * C_B;
* ``xattn``: C_A + C_B + out-projection of multi-head cross attention, queries from A, keys/values
  from B average-pooled by ``--xattn_reduction`` (``--xattn_heads`` heads);
* ``ahcr``: cross refinement weighted by relu(cos(GAP(C_A), GAP(C_B))) per sample (after the AHCR
  baseline's cosine-weighted refinement): C_A + C_B + w * 1x1 conv(C_A * C_B). ``--ahcr_mode
  inter_level`` additionally adds w * 1x1 conv(upsampled coarser fused level) in the dual model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSE_MODES = ("concat", "add", "gated", "xattn", "ahcr")


class AddFusion(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class ConcatFusion(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([a, b], dim=1))


class GatedFusion(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([a, b], dim=1)))
        return g * a + (1 - g) * b


class CrossAttentionFusion(nn.Module):
    def __init__(self, channels: int, heads: int = 4, reduction: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"--xattn_heads {heads} does not divide the {channels} feature channels")
        self.reduction = max(1, reduction)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, c, h, w = a.shape
        kv = F.adaptive_avg_pool2d(b, (max(1, h // self.reduction), max(1, w // self.reduction)))
        q = a.flatten(2).transpose(1, 2)
        kv = kv.flatten(2).transpose(1, 2)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return a + b + out.transpose(1, 2).reshape(n, c, h, w)


def view_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relu(cosine similarity of the globally pooled views), shape (N, 1, 1, 1)."""
    return F.relu(F.cosine_similarity(a.mean((2, 3)), b.mean((2, 3)), dim=1))[:, None, None, None]


class AHCRFusion(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.refine = nn.Conv2d(channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b + view_similarity(a, b) * self.refine(a * b)


def build_fusion(mode: str, channels: int, *, xattn_heads: int = 4, xattn_reduction: int = 4) -> nn.Module:
    """Fusion module for one level (``mode`` in FUSE_MODES)."""
    if mode == "add":
        return AddFusion()
    if mode == "concat":
        return ConcatFusion(channels)
    if mode == "gated":
        return GatedFusion(channels)
    if mode == "xattn":
        return CrossAttentionFusion(channels, xattn_heads, xattn_reduction)
    if mode == "ahcr":
        return AHCRFusion(channels)
    raise ValueError(f"--fuse_mode: unknown mode '{mode}' (choose from {', '.join(FUSE_MODES)})")
