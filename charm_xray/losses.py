"""CHARM-Xray losses (charm_xray.md §5): FocalLoss, AsymmetricLoss, ChestXrayLoss.

All take logits [B, C] and 0/1 targets [B, C] and compute in float32 (safe under autocast), or in
float64 for float64 logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: unknown '{reduction}' (choose from {', '.join(_REDUCTIONS)})")
    return reduction


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return torch.mean(loss)
    if reduction == "sum":
        return torch.sum(loss)
    return loss


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half-precision logits (autocast), else the logits' own (float64 stays float64)."""
    return torch.promote_types(logits.dtype, torch.float32)


class FocalLoss(nn.Module):
    """l = BCE_elem * alpha * (1 - exp(-BCE_elem))^gamma (the original's ``FocalLoss(alpha=1, gamma=2,
    reduction="mean")``)."""

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        bce = F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype), reduction="none")
        return _reduce(self.alpha * (1.0 - torch.exp(-bce)) ** self.gamma * bce, self.reduction)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss in two variants; the original's signature
    ``AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, reduction="mean")``.

    ``variant="original"`` (CHARM's ``losses.py``, the default; quirk 14): p = sigmoid(z);
    l_pos = -y log(max(p, eps)) (1 - max(p, eps))^gamma_pos,
    l_neg = -(1 - y) log(1 - min(p, 1 - eps)) min(p, 1 - eps)^gamma_neg;
    ``clip`` is stored but not applied and the focusing weights keep their gradient. Computed in the
    log domain: log(max(p, eps)) = max(logsigmoid(z), log eps) and log(1 - min(p, 1 - eps)) =
    max(logsigmoid(-z), log eps), with 1 - p as sigmoid(-z). The original takes the log of
    ``1 - min(p, 1 - 1e-8)``, which is 0 in float32 as soon as p rounds to 1 (z > ~17): a positive with
    logit 40 gives NaN (0 * log 0), a negative with logit 25 gives inf; here every finite logit gives a
    finite loss equal to the original's float64 value.

    ``variant="official"`` (Ridnik et al., golden_references.md §4.1): the negatives' probability is
    shifted, p_neg = min(1 - p + clip, 1); l = y log(max(p, eps)) + (1 - y) log(max(p_neg, eps)),
    times (1 - p_t)^(gamma_pos y + gamma_neg (1 - y)) computed without gradient, negated; the official
    code sums (``reduction="sum"``, which ``ChestXrayLoss`` passes for this variant).
    """

    VARIANTS = ("original", "official")

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "mean", *, variant: str = "original"):
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"--asl_variant: unknown '{variant}' (choose from {', '.join(self.VARIANTS)})")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.reduction = _check_reduction(reduction)
        self.variant = variant

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        z, y = logits.to(dtype), targets.to(dtype)
        if self.variant == "original":
            log_eps = math.log(self.eps)
            log_p = F.logsigmoid(z).clamp(min=log_eps)  # log(max(p, eps))
            log_1mp = F.logsigmoid(-z).clamp(min=log_eps)  # log(1 - min(p, 1 - eps)) = log(max(1 - p, eps))
            weight_pos = torch.sigmoid(-z).clamp(max=1.0 - self.eps) ** self.gamma_pos  # (1 - max(p, eps))^g+
            weight_neg = torch.sigmoid(z).clamp(max=1.0 - self.eps) ** self.gamma_neg  # min(p, 1 - eps)^g-
            loss = -y * log_p * weight_pos - (1.0 - y) * log_1mp * weight_neg
            return _reduce(loss, self.reduction)
        p = torch.sigmoid(z)
        p_neg = 1.0 - p
        if self.clip is not None and self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1.0)
        loss = y * torch.log(p.clamp(min=self.eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                p_t = p * y + p_neg * (1.0 - y)
                weight = (1.0 - p_t) ** (self.gamma_pos * y + self.gamma_neg * (1.0 - y))
            loss = loss * weight
        return _reduce(-loss, self.reduction)


class ChestXrayLoss(nn.Module):
    """The original's dispatch ``ChestXrayLoss(loss_type="focal", **kwargs)``: "focal", "asymmetric" or
    "bce", with the original's keyword arguments ``focal_alpha`` / ``focal_gamma`` (default 1 / 2) and
    ``asymmetric_gamma_neg`` / ``asymmetric_gamma_pos`` (default 4 / 1); the asymmetric loss keeps its
    other defaults (clip 0.05, eps 1e-8, mean).

    Our extras (keyword-only): ``focal_ignore_kwargs=True`` uses alpha 1 and gamma 2 whatever is given, as
    the notebooks' version does (quirk 15); ``asymmetric_clip``; ``asl_variant`` ("official" sums, as
    Ridnik et al.). Unknown keywords are an error (the original ignores them silently).
    """

    TYPES = ("bce", "focal", "asymmetric")

    def __init__(self, loss_type: str = "focal", *, focal_alpha: float = 1.0, focal_gamma: float = 2.0,
                 asymmetric_gamma_neg: float = 4.0, asymmetric_gamma_pos: float = 1.0,
                 focal_ignore_kwargs: bool = False, asymmetric_clip: float = 0.05, asl_variant: str = "original"):
        super().__init__()
        if loss_type not in self.TYPES:
            raise ValueError(f"loss type: unknown '{loss_type}' (choose from {', '.join(self.TYPES)})")
        self.loss_type = loss_type
        if loss_type == "focal":
            self.loss = FocalLoss() if focal_ignore_kwargs else FocalLoss(focal_alpha, focal_gamma)
        elif loss_type == "asymmetric":
            reduction = "sum" if asl_variant == "official" else "mean"
            self.loss = AsymmetricLoss(asymmetric_gamma_neg, asymmetric_gamma_pos, asymmetric_clip,
                                       reduction=reduction, variant=asl_variant)
        else:
            self.loss = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            dtype = _compute_dtype(logits)
            return F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype))
        return self.loss(logits, targets)
