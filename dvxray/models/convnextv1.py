"""ConvNeXt V1 backbones (Liu et al., "A ConvNet for the 2020s", CVPR 2022): the fallback location of
the original ``--model`` lookup (``convnext_tiny`` etc.), with the official module names so the
official ``convnext_*_1k_224_ema.pth`` files convert and load. V1 blocks have a layer-scale ``gamma``
(init 1e-6) and no GRN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import DropPath
from torch import nn

from dvxray.models.convnextv2 import ConvNeXtV2, LayerNorm, register_model


class BlockV1(nn.Module):
    """ConvNeXt V1 block: dwconv 7x7 -> LN -> Linear 4x -> GELU -> Linear -> layer scale -> residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


def _v1(depths: Sequence[int], dims: Sequence[int], kwargs: dict) -> ConvNeXtV2:
    return ConvNeXtV2(depths=depths, dims=dims, block=BlockV1, **kwargs)


@register_model
def convnext_tiny(**kwargs) -> ConvNeXtV2:
    return _v1([3, 3, 9, 3], [96, 192, 384, 768], kwargs)


@register_model
def convnext_small(**kwargs) -> ConvNeXtV2:
    return _v1([3, 3, 27, 3], [96, 192, 384, 768], kwargs)


@register_model
def convnext_base(**kwargs) -> ConvNeXtV2:
    return _v1([3, 3, 27, 3], [128, 256, 512, 1024], kwargs)


@register_model
def convnext_large(**kwargs) -> ConvNeXtV2:
    return _v1([3, 3, 27, 3], [192, 384, 768, 1536], kwargs)
