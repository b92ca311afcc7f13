"""CHARM-Xray losses (charm_xray.md §5): FocalLoss, AsymmetricLoss, ChestXrayLoss.

All take logits [B, C] and 0/1 targets [B, C] and compute in float32 (safe under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """l = BCE_elem * alpha * (1 - exp(-BCE_elem))^gamma, averaged over the elements (original defaults
    alpha 1, gamma 2)."""

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
        return (self.alpha * (1.0 - torch.exp(-bce)) ** self.gamma * bce).mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss in two variants.

    ``variant="original"`` (CHARM's ``losses.py``, the default; quirk 14): p = sigmoid(z);
    l_pos = -y log(max(p, eps)) (1 - max(p, eps))^gamma_pos,
    l_neg = -(1 - y) log(1 - min(p, 1 - eps)) min(p, 1 - eps)^gamma_neg, mean over the elements;
    ``clip`` is stored but not applied and the focusing weights keep their gradient.

    ``variant="official"`` (Ridnik et al., golden_references.md §4.1): the negatives' probability is
    shifted, p_neg = min(1 - p + clip, 1); l = y log(max(p, eps)) + (1 - y) log(max(p_neg, eps)),
    times (1 - p_t)^(gamma_pos y + gamma_neg (1 - y)) computed without gradient, summed (negated).
    """

    VARIANTS = ("original", "official")

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 variant: str = "original"):
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"--asl_variant: unknown '{variant}' (choose from {', '.join(self.VARIANTS)})")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.variant = variant

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.float()
        p = torch.sigmoid(logits.float())
        if self.variant == "original":
            p_pos = p.clamp(min=self.eps)
            p_neg = p.clamp(max=1.0 - self.eps)
            loss_pos = -y * torch.log(p_pos) * (1.0 - p_pos) ** self.gamma_pos
            loss_neg = -(1.0 - y) * torch.log(1.0 - p_neg) * p_neg ** self.gamma_neg
            return (loss_pos + loss_neg).mean()
        p_neg = 1.0 - p
        if self.clip is not None and self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1.0)
        loss = y * torch.log(p.clamp(min=self.eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                p_t = p * y + p_neg * (1.0 - y)
                weight = (1.0 - p_t) ** (self.gamma_pos * y + self.gamma_neg * (1.0 - y))
            loss = loss * weight
        return -loss.sum()


class ChestXrayLoss(nn.Module):
    """The original's dispatch by ``loss_type``: "bce", "focal" or "asymmetric".

    Args:
        loss_type: which loss.
        alpha, gamma: focal-loss settings; ``focal_ignore_kwargs=True`` uses 1 and 2 whatever is given,
            as the notebooks' version does (quirk 15).
        gamma_neg, gamma_pos, clip, asl_variant: asymmetric-loss settings.
    """

    TYPES = ("bce", "focal", "asymmetric")

    def __init__(self, loss_type: str = "bce", *, alpha: float = 1.0, gamma: float = 2.0,
                 focal_ignore_kwargs: bool = False, gamma_neg: float = 4.0, gamma_pos: float = 1.0,
                 clip: float = 0.05, asl_variant: str = "original"):
        super().__init__()
        if loss_type not in self.TYPES:
            raise ValueError(f"loss type: unknown '{loss_type}' (choose from {', '.join(self.TYPES)})")
        self.loss_type = loss_type
        if loss_type == "focal":
            self.loss = FocalLoss() if focal_ignore_kwargs else FocalLoss(alpha, gamma)
        elif loss_type == "asymmetric":
            self.loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, variant=asl_variant)
        else:
            self.loss = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return self.loss(logits, targets)
