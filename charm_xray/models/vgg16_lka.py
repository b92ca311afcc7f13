"""VGG16-BN + Large Kernel Attention: the model the CHARM README's second half describes, taken
from another project (charm_xray.md §11). Its source is not available, so its state-dict key names
beyond the LKA's (``dw_conv1``, ``dw_conv2``, ``pw_conv``) are ours.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from charm_xray.models.components import LKA

# vgg16_bn.features slices of the five convolution blocks, each without its max-pool (§11)
_BLOCKS = ((0, 6), (7, 13), (14, 23), (24, 33), (34, 43))


class VGG16_LKA(nn.Module):  # noqa: N801 - the original class name
    """Five VGG16-BN blocks, LKA after blocks 3, 4 and 5 (256, 512, 512 channels), a 2x2 max-pool after
    every block, global average pooling, dropout 0.5 and Linear(512, num_classes)."""

    def __init__(self, num_classes: int = 14, *, dropout: float = 0.5, pretrained_weights: str | Path | None = None):
        super().__init__()
        from charm_xray.models.chest_xray_model import load_torchvision_weights

        vgg = torchvision.models.vgg16_bn(weights=None)
        load_torchvision_weights(vgg, pretrained_weights, "VGG16-BN")
        feats = vgg.features
        self.block1, self.block2, self.block3, self.block4, self.block5 = (feats[a:b] for a, b in _BLOCKS)
        self.lka3, self.lka4, self.lka5 = LKA(256), LKA(512), LKA(512)
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block1(x))
        x = self.pool(self.block2(x))
        x = self.pool(self.lka3(self.block3(x)))
        x = self.pool(self.lka4(self.block4(x)))
        x = self.pool(self.lka5(self.block5(x)))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))
