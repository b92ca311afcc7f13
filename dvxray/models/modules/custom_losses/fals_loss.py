"""FALS: focal-weighted adversarial label smoothing for multi-label BCE.

w = (1 - p_t)^gamma (kept in the graph, as in the original); the target is smoothed toward the
"adversarial" label 1[z < 0] by w * eps; the batch mean of w is pushed to the signal channel as
``difficulty`` (read by ``eca_da``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel


class FALSLoss(nn.Module):
    """Args: eps: smoothing strength; gamma: focusing exponent; signal: channel for ``difficulty``."""

    def __init__(self, eps: float = 0.1, gamma: float = 2.0, signal: SignalChannel | None = None):
        super().__init__()
        self.eps = float(eps)
        self.gamma = float(gamma)
        self.signal = signal

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        w = (1 - p_t).pow(self.gamma)
        adversarial = (logits < 0).float()
        smoothed = (1 - w * self.eps) * targets + w * self.eps * adversarial
        if self.signal is not None:
            self.signal.push("difficulty", w.mean())
        return F.binary_cross_entropy_with_logits(logits, smoothed)
