"""Losses of the CXR-LT 2026 Task 1 code (reference cxrlt.md sections 5.3, 7 and 9).

- ``DistributionBalancedLoss``: the stage-2 loss the original ``train_csra_head.py`` actually uses (a
  "practical" DB loss: effective-number class weights ^ alpha on every element plus a frequency-scaled
  margin subtracted from positive logits). It is not the official DB loss (no co-occurrence weight, no
  logit-regularisation bias, no focal term).
- ``AsymmetricLoss``: official ASL (Ridnik et al., ICCV 2021): probability shift for negatives, focusing
  weight without gradient, **sum** reduction; optional logit clamp (the older ``train_standard_head.py``
  clamps to [-80, 80]).
- ``ClampedAsymmetricLoss``: the variant in the original ``losses.py``, exactly (negative probability
  clamped to p <= 1 - clip instead of shifted, negatives weighted by (1 - p_clamped) ** gamma_neg,
  log(p + eps), mean reduction, defaults 4 / 1 / 0.05), the loss the README names for stage 2.
- ``logit_adjust``: training-only logit adjustment z - tau * log(prior + 1e-8), the original code's
  sign. Menon et al. (2021)'s logit-adjusted loss trains on z + tau * log(prior), which lowers the
  rare classes' training logits (so the loss pushes them up); the original's minus sign raises them
  instead, the opposite effect (a quirk, kept by default; ``sign="menon"`` / ``--la_sign menon``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def effective_number_weights(class_counts: Sequence[float], beta: float) -> np.ndarray:
    """e_c = (1 - beta) / (1 - beta ** n_c) with n_c = max(count_c, 1), normalised to mean 1.

    Computed in float32, as the original builds it (``np.array(counts, dtype=np.float32)``, then numpy
    arithmetic with the Python float beta, which numpy rounds to float32): 1 - beta ** n loses digits to
    cancellation, so a float64 computation differs from the original's weights by up to ~1e-4 relative.
    """
    n = np.clip(np.asarray(class_counts, dtype=np.float32), 1.0, None)
    e = (1.0 - beta) / (1.0 - np.power(np.float32(beta), n))
    return (e / e.mean()).astype(np.float32)


class DistributionBalancedLoss(nn.Module):
    """Distribution-balanced BCE of the original stage-2 script.

    With e the normalised effective-number weights: element weight w_c = e_c ** rebalance_alpha (on
    positives *and* negatives); margin m_c = max_margin * margin_scale * u_c with u = 1/(e + 1e-6)
    min-max normalised (so the most frequent class gets ~max_margin, the rarest ~0: quirk 5);
    z' = z - y * m; loss = mean over B x C of w_c * BCEWithLogits(z', y).

    The negative branch (active only when neg_scale != 1 or neg_margin != 0; the defaults leave it off)
    is the original's: a negative element's term is recomputed as neg_scale * BCEWithLogits(z' +
    neg_margin, 0) *without* the class weight w_c (positives keep w_c * BCE(z', 1)). So turning the
    branch on also drops the class weights from the negatives, a discontinuity at (1, 0) kept as in
    the original.

    Args:
        class_counts: positive-label counts per class in the training split.
        beta, rebalance_alpha, neg_scale, neg_margin, margin_scale, max_margin: as named (original
            defaults 0.9999, 0.5, 1.0, 0.0, 1.0, 0.2).
        margin_direction: "head" (original: large margins for frequent classes) or "tail" (large margins
            for rare classes, the direction the original comments describe and LDAM uses).
    """

    def __init__(self, class_counts: Sequence[float], *, beta: float = 0.9999, rebalance_alpha: float = 0.5,
                 neg_scale: float = 1.0, neg_margin: float = 0.0, margin_scale: float = 1.0,
                 max_margin: float = 0.2, margin_direction: str = "head"):
        super().__init__()
        if margin_direction not in ("head", "tail"):
            raise ValueError(f"margin_direction must be 'head' or 'tail', got '{margin_direction}'")
        # float32 throughout and in the original's order (numpy weights, then torch for the margin and
        # the weight power), so that weights and margins equal the original's to the last bit
        e = torch.from_numpy(effective_number_weights(class_counts, beta))
        u = 1.0 / (e + 1e-6)
        u_norm = (u - u.min()) / (u.max() - u.min() + 1e-6)
        if margin_direction == "tail":
            u_norm = 1.0 - u_norm
        self.neg_scale = neg_scale
        self.neg_margin = neg_margin
        self.register_buffer("weight", torch.pow(e, rebalance_alpha), persistent=False)
        self.register_buffer("margin", (max_margin * u_norm * margin_scale).float(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        z = logits - targets * self.margin
        loss = self.weight * F.binary_cross_entropy_with_logits(z, targets, reduction="none")
        if self.neg_scale != 1.0 or self.neg_margin != 0.0:
            neg = 1.0 - targets
            neg_loss = self.neg_scale * F.binary_cross_entropy_with_logits(z + self.neg_margin, torch.zeros_like(z),
                                                                           reduction="none")
            loss = targets * loss + neg * neg_loss
        return (loss * mask).mean() if mask is not None else loss.mean()


class AsymmetricLoss(nn.Module):
    """Official ASL: shifted negative probability, focusing weight without gradient, sum reduction.

    Args:
        gamma_neg, gamma_pos, clip, eps: as in Alibaba-MIIL/ASL (the original stage-1-style script uses
            4, 0, 0.05, 1e-8).
        logit_clamp: clamp logits to [-logit_clamp, logit_clamp] first (80 in ``train_standard_head.py``;
            None disables).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 logit_clamp: float | None = 80.0):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.logit_clamp = logit_clamp

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        if self.logit_clamp is not None:
            logits = logits.clamp(-self.logit_clamp, self.logit_clamp)
        p = torch.sigmoid(logits)
        p_neg = 1.0 - p
        if self.clip is not None and self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1.0)
        loss = targets * torch.log(p.clamp(min=self.eps)) + (1 - targets) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                p_t = p * targets + p_neg * (1 - targets)
                w = torch.pow(1.0 - p_t, self.gamma_pos * targets + self.gamma_neg * (1 - targets))
            loss = loss * w
        if mask is not None:
            loss = loss * mask
        return -loss.sum()


ASL_NEG_WEIGHTINGS = ("original", "conventional")


class ClampedAsymmetricLoss(nn.Module):
    """ASL variant of the original ``losses.py`` (reference cxrlt.md §9), reproduced exactly by default.

    With p = sigmoid(z) and p_n = min(p, 1 - clip) (a clamp, not the official shift; p_n = p when
    clip <= 0):
      loss_pos = y * log(p + eps),            w_pos = (1 - p) ** gamma_pos
      loss_neg = (1 - y) * log(1 - p_n + eps), w_neg = (1 - p_n) ** gamma_neg   (``neg_weighting="original"``)
      loss = mean over elements of -(w_pos * loss_pos + w_neg * loss_neg); the weights keep their gradient.
    The original's w_neg = (1 - p_n) ** gamma_neg emphasises the *easy* negatives (p near 0) and
    down-weights the hard ones, the opposite of ASL's intent (a quirk, kept by default);
    ``neg_weighting="conventional"`` uses the ASL focusing weight p_n ** gamma_neg instead (same eps
    placement and clamp).

    Args:
        gamma_neg, gamma_pos, clip, eps: the original defaults 4, 1, 0.05, 1e-8.
        neg_weighting: "original" or "conventional" (see above).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 neg_weighting: str = "original"):
        super().__init__()
        if neg_weighting not in ASL_NEG_WEIGHTINGS:
            raise ValueError(f"neg_weighting must be one of {', '.join(ASL_NEG_WEIGHTINGS)}, got '{neg_weighting}'")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.neg_weighting = neg_weighting

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        p = torch.sigmoid(logits)
        p_n = p.clamp(max=1.0 - self.clip) if self.clip > 0 else p
        loss_pos = targets * torch.log(p + self.eps)
        loss_neg = (1 - targets) * torch.log(1.0 - p_n + self.eps)
        w_pos = torch.pow(1.0 - p, self.gamma_pos)
        w_neg = torch.pow(1.0 - p_n if self.neg_weighting == "original" else p_n, self.gamma_neg)
        loss = w_pos * loss_pos + w_neg * loss_neg
        if mask is not None:
            loss = loss * mask
        return -loss.mean()


LA_SIGNS = ("original", "menon")


def logit_adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0, sign: str = "original") -> torch.Tensor:
    """Logit adjustment for training (log_prior = log(prior + 1e-8)).

    ``sign="original"``: z - tau * log_prior (the original code); ``"menon"``: z + tau * log_prior
    (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, logit-adjusted loss).
    """
    if sign not in LA_SIGNS:
        raise ValueError(f"--la_sign: unknown sign '{sign}' (choose from {', '.join(LA_SIGNS)})")
    lp = tau * log_prior.to(logits.dtype)
    return logits - lp if sign == "original" else logits + lp


def log_prior(class_counts: Sequence[float]) -> torch.Tensor:
    """log(count_c / sum(counts) + 1e-8), the prior of ``train_standard_head.py``."""
    counts = np.asarray(class_counts, dtype=np.float64)
    prior = counts / max(counts.sum(), 1.0)
    return torch.as_tensor(np.log(prior + 1e-8), dtype=torch.float32)


LOSSES = ("db", "asl", "asl_official")


def build_loss(name: str, class_counts: Sequence[float], *, db_kwargs: dict | None = None,
               asl_kwargs: dict | None = None) -> nn.Module:
    """Loss by name: ``db`` (original stage-2 code), ``asl`` (original ``losses.py`` variant) or
    ``asl_official`` (Alibaba-MIIL ASL, sum reduction)."""
    if name == "db":
        return DistributionBalancedLoss(class_counts, **(db_kwargs or {}))
    if name == "asl":
        return ClampedAsymmetricLoss(**(asl_kwargs or {}))
    if name == "asl_official":
        return AsymmetricLoss(**(asl_kwargs or {}))
    raise ValueError(f"unknown loss '{name}' (choose from {', '.join(LOSSES)})")
