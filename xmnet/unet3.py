"""Segmentation decoders of XMNet (``unet3.py``; xmnet.md §6.3) and the deep-supervision loss.

``UNetDecoderLevel`` / ``UNet3PlusDecoderLevel``: one level of the original's decoders
(``UNetDecoderLayerModule`` / ``UNetDecoderLayerModule2`` and ``UNet3PlusDecoderLayerModule``), with its
module names (``layers.<i>.*``), so that ``decoder_layers.{1..5}`` holds the original's keys. Their
widths follow the encoder: U-Net level l maps [skip_l, deeper output] to the width of encoder level
l-1 (level 1: to level 1's, then to 1 channel); UNet3+ levels fuse five 64-channel branches into one
channel. ``UNetDecoder`` / ``UNet3PlusDecoder``: this project's earlier compact decoders
(``--seg_arch compact``: fixed widths, 3x3 side heads).

All decoders take the five encoder skips (level 1 = highest resolution) and return logits at level-1
resolution (half the input for most backbones, the original's masks resized to seg_size / 2).
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


def _fit(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` at ``ref``'s spatial size (bilinear); unchanged when the sizes agree, as they always do for
    inputs divisible by 32 (the original concatenated without resizing and crashed otherwise)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=tuple(ref.shape[-2:]), mode="bilinear", align_corners=True)


class UNetDecoderLevel(nn.Module):
    """Level ``level`` of the original U-Net decoder (``--unet``): [skip_l, deeper output] -> 3x3 conv +
    ReLU -> 3x3 conv + ReLU -> bilinear x2 (align_corners=True) for levels 2-5; level 1 ends in a 3x3
    conv to 1 channel instead. Output width: encoder level l-1's (level 1: level 1's).

    Args:
        level: 1..5.
        widths: output widths of the 5 encoder levels.
        skip_widths: widths of the 5 skips (= ``widths`` for HEAD's attention-multiplied skips).
    """

    def __init__(self, level: int, widths: Sequence[int], skip_widths: Sequence[int], no_classes: int = 1):
        super().__init__()
        self.level = level
        cin = skip_widths[level - 1] + widths[level - 1]  # the deeper level (or the centre) outputs widths[l-1]
        cout = widths[level - 2] if level > 1 else widths[0]
        last: nn.Module = (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True) if level > 1
                           else nn.Conv2d(cout, no_classes, kernel_size=3, padding=1))
        self.layers = nn.ModuleDict({"1": nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True), last)})

    def forward(self, skips: Sequence[torch.Tensor], deeper: torch.Tensor) -> torch.Tensor:
        skip = skips[self.level - 1]
        return self.layers["1"](torch.cat([skip, _fit(deeper, skip)], dim=1))


class UNet3PlusDecoderLevel(nn.Module):
    """Level ``level`` of the original UNet3+ decoder (no ``--unet``): five 64-channel branches, for
    source i = 1..5 a 3x3 conv of encoder skip i, or for i = level + 1 of the deeper decoder output
    (1 channel), followed by bilinear x2^(i-l) up-sampling (align_corners=True) when i > l, or a 3x3
    max-pool with stride 2^(l-i) (padding 1) when i < l; concatenated (320 channels) and fused by a
    3x3 conv to 1 channel (+ BatchNorm + ReLU except at level 1). Level 5 reads only the encoder.
    """

    CAT = 64

    def __init__(self, level: int, widths: Sequence[int], skip_widths: Sequence[int], no_classes: int = 1):
        super().__init__()
        self.level = level
        self.layers = nn.ModuleDict()
        for i in range(1, 6):
            cin = no_classes if i == level + 1 else skip_widths[i - 1]
            conv = nn.Conv2d(cin, self.CAT, kernel_size=3, padding=1)
            if i > level:
                self.layers[str(i)] = nn.Sequential(
                    conv, nn.Upsample(scale_factor=2 ** (i - level), mode="bilinear", align_corners=True))
            elif i < level:
                self.layers[str(i)] = nn.Sequential(conv, nn.MaxPool2d(3, stride=2 ** (level - i), padding=1))
            else:
                self.layers[str(i)] = conv
        fuse = nn.Conv2d(5 * self.CAT, no_classes, kernel_size=3, padding=1)
        self.layers["6"] = fuse if level == 1 else nn.Sequential(fuse, nn.BatchNorm2d(no_classes), nn.ReLU(inplace=True))

    def forward(self, skips: Sequence[torch.Tensor], deeper: torch.Tensor) -> torch.Tensor:
        ref = skips[self.level - 1]
        parts = [self.layers[str(i)](deeper if i == self.level + 1 else skips[i - 1]) for i in range(1, 6)]
        return self.layers["6"](torch.cat([_fit(p, ref) for p in parts], dim=1))


class UNetDecoder(nn.Module):
    """``--seg_arch compact --unet``: centre 3x3 conv on level 5; levels 5 -> 1 each apply two 3x3 conv + ReLU to
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
    """``--seg_arch compact`` without ``--unet``: UNet3+ full-scale skips. Decoder level l (4..1) fuses five
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
    """BCE-with-logits of the level-1 output against ``mask`` (bilinearly resized to its size); with
    ``fsds`` the weighted sum 0.95 L1 + (0.1/4) L2 + (0.1/8) L3 + (0.1/16) L4 + (0.1/32) L5.

    As the original (ad0afa8d ``Train.py``), the side outputs' masks come from a cascade: the level-1
    mask is halved (bilinear) again and again, and each output takes the first mask of its size (the
    original's U-Net side output k is at 1/2^(k-2) of level 1); a size off the cascade is resized
    directly.
    """
    target = resize_mask(mask, outputs[0].shape[-2:])
    loss = F.binary_cross_entropy_with_logits(outputs[0], target)
    if not fsds:
        return loss
    if len(outputs) != 5:
        raise ValueError(f"full-scale deep supervision needs 5 outputs, got {len(outputs)}")
    total = FSDS_WEIGHTS[0] * loss
    m = target
    for w, out in zip(FSDS_WEIGHTS[1:], outputs[1:]):
        size = tuple(out.shape[-2:])
        while tuple(m.shape[-2:]) != size and m.shape[-1] // 2 >= size[-1] and m.shape[-2] // 2 >= size[-2]:
            m = F.interpolate(m, size=(m.shape[-2] // 2, m.shape[-1] // 2), mode="bilinear", align_corners=False)
        t = m if tuple(m.shape[-2:]) == size else resize_mask(m, size)
        total = total + w * F.binary_cross_entropy_with_logits(out, t)
    return total
