"""DALS: difficulty-aware label smoothing BCE; w = (1 - p_t)^gamma (detached) smooths y toward 1 - y."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DALSBCE(nn.Module):
    """Args: eps: smoothing strength; gamma: focusing exponent of the difficulty weight."""

    def __init__(self, eps: float = 0.1, gamma: float = 2.0):
        super().__init__()
        self.eps = float(eps)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        with torch.no_grad():
            p = torch.sigmoid(logits)
            w = (1 - (p * targets + (1 - p) * (1 - targets))).pow(self.gamma)
        smoothed = (1 - w * self.eps) * targets + w * self.eps * (1 - targets)
        return F.binary_cross_entropy_with_logits(logits, smoothed)
