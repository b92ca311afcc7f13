"""Binary focal loss for multi-label logits (Lin et al., ICCV 2017): (1 - p_t)^gamma * BCE.

The class default alpha is 0.25, but ``main_finetune.py`` passes ``--focal_alpha`` (default None), so
no alpha term is used unless the flag is given (``main.sh`` passes 0.25; quirk 17).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Args: gamma: focusing exponent; alpha: positive-class weight (None: no alpha term); reduction."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, reduction: str = "mean"):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = alpha
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = (1 - p_t).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean() if self.reduction == "mean" else loss.sum()
