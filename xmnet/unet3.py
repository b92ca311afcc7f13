"""Segmentation decoders of XMNet (ad0afa8d ``unet3.py``; xmnet.md §6.3) and the deep-supervision loss.

Both decoders take the five encoder skips (level 1 = highest resolution) and return a list of logit
maps: level 1 first (at level-1 resolution, i.e. half the input for most backbones, which matches the
original's masks resized to seg_size / 2), then, with deep supervision, one side output per level 2-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# full-scale deep supervision weights of levels 1..5: 0.95, 0.1/4, 0.1/8, 0.1/16, 0.1/32 (xmnet.md §6.3)
FSDS_WEIGHTS = (0.95, 0.1 / 4, 0.1 / 8, 0.1 / 16, 0.1 / 32)


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-1] > size[-1]:
        return F.adaptive_max_pool2d(x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """``--unet``: centre 3x3 conv on level 5; levels 5 -> 1 each apply two 3x3 conv + ReLU to
    [up-sampled deeper decoder output, skip], then bilinear x2 up-sampling to the next level (levels
    5-2); level 1 ends in a 3x3 conv to 1 channel. Widths 256, 128, 64, 32, 16 for levels 5..1.
    """

    WIDTHS = (16, 32, 64, 128, 256)  # levels 1..5

    def __init__(self, skip_channels: Sequence[int], *, deep_supervision: bool = False):
        super().__init__()
        if len(skip_channels) != 5:
            raise ValueError(f"UNetDecoder needs 5 skips, got {len(skip_channels)}")
        w = self.WIDTHS
        self.center = nn.Conv2d(skip_channels[4], w[4], 3, padding=1)
        blocks = []
        for level in range(5, 0, -1):  # 5..1
            cin = skip_channels[level - 1] + w[level - 1] if level == 5 else skip_channels[level - 1] + w[level]
            blocks.append(nn.Sequential(_conv_relu(cin, w[level - 1]), _conv_relu(w[level - 1], w[level - 1])))
        self.blocks = nn.ModuleList(blocks)  # index 0 = level 5
        self.final = nn.Conv2d(w[0], 1, 3, padding=1)
        self.deep_supervision = deep_supervision
        self.side = nn.ModuleList([nn.Conv2d(w[level - 1], 1, 3, padding=1) for level in range(2, 6)]) \
            if deep_supervision else None

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        d = self.center(skips[4])
        outs: dict[int, torch.Tensor] = {}
        for i, level in enumerate(range(5, 0, -1)):
            skip = skips[level - 1]
            d = self.blocks[i](torch.cat([_resize(d, skip.shape[-2:]), skip], dim=1))
            outs[level] = d
            if level > 1:  # bilinear x2 towards the next level (exact size fixed by the next skip)
                d = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        result = [self.final(outs[1])]
        if self.side is not None:
            result += [self.side[level - 2](outs[level]) for level in range(2, 6)]
        return result


class UNet3PlusDecoder(nn.Module):
    """Default decoder (no ``--unet``): UNet3+ full-scale skips. Decoder level l (4..1) fuses five
    64-channel branches (3x3 conv + BN + ReLU): encoder levels < l max-pooled down, encoder level l,
    deeper decoder levels (and level 5 = centre) bilinearly up-sampled, concatenated to 320 channels
    and fused by a 3x3 conv + BN + ReLU. Level 5 is a 3x3 conv centre block (320 channels).
    """

    CAT = 64
    UP = 5 * 64  # 320

    def __init__(self, skip_channels: Sequence[int], *, deep_supervision: bool = False):
        super().__init__()
        if len(skip_channels) != 5:
            raise ValueError(f"UNet3PlusDecoder needs 5 skips, got {len(skip_channels)}")
        self.center = _conv_bn_relu(skip_channels[4], self.UP)
        self.branches = nn.ModuleDict()
        self.fuse = nn.ModuleDict()
        for level in range(4, 0, -1):
            for src in range(1, 6):
                cin = skip_channels[src - 1] if src <= level else self.UP
                self.branches[f"{level}_{src}"] = _conv_bn_relu(cin, self.CAT)
            self.fuse[str(level)] = _conv_bn_relu(self.UP, self.UP)
        self.final = nn.Conv2d(self.UP, 1, 3, padding=1)
        self.deep_supervision = deep_supervision
        self.side = nn.ModuleList([nn.Conv2d(self.UP, 1, 3, padding=1) for _ in range(2, 6)]) \
            if deep_supervision else None

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        hd = {5: self.center(skips[4])}
        for level in range(4, 0, -1):
            size = skips[level - 1].shape[-2:]
            parts = []
            for src in range(1, 6):
                x = skips[src - 1] if src <= level else hd[src]
                parts.append(self.branches[f"{level}_{src}"](_resize(x, size)))
            hd[level] = self.fuse[str(level)](torch.cat(parts, dim=1))
        result = [self.final(hd[1])]
        if self.side is not None:
            result += [self.side[level - 2](hd[level]) for level in range(2, 6)]
        return result


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A (B, 1, H, W) float mask bilinearly resized to ``size``."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_loss(outputs: Sequence[torch.Tensor], mask: torch.Tensor, *, fsds: bool) -> torch.Tensor:
    """BCE-with-logits of the level-1 output against ``mask``; with ``fsds`` the weighted sum
    0.95 L1 + (0.1/4) L2 + (0.1/8) L3 + (0.1/16) L4 + (0.1/32) L5, the mask resized to each level."""
    if not fsds:
        return F.binary_cross_entropy_with_logits(outputs[0], resize_mask(mask, outputs[0].shape[-2:]))
    if len(outputs) != 5:
        raise ValueError(f"full-scale deep supervision needs 5 outputs, got {len(outputs)}")
    total = outputs[0].new_zeros(())
    for w, out in zip(FSDS_WEIGHTS, outputs):
        total = total + w * F.binary_cross_entropy_with_logits(out, resize_mask(mask, out.shape[-2:]))
    return total
