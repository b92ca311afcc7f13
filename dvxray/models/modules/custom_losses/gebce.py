"""GE-BCE: BCE plus lambda times the variance over classes of the per-class mean gradient strength.

The reference documents only this idea and the flag names; the details below are this
re-implementation's reading. Gradient strength g = |sigmoid(z) - y| (the BCE gradient magnitude).
Per class: the mean over positives (``pos_only``) or alpha * mean over positives + (1 - alpha) * mean
over negatives. With ``ema`` the per-class strengths are blended with a detached EMA (momentum) of
earlier batches; ``band`` is a dead zone subtracted from the variance (relu(var - band)); with
``trainable`` lambda is a learnable parameter (stored as log lambda, optimised with the model). The
strength vector is pushed to the signal channel as ``ge_strength`` (read by ``cbam_ge``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(0) / mask.sum(0).clamp(min=1.0)


class GEBCELoss(nn.Module):
    """Args: lam, pos_only, alpha, ema, momentum, band, trainable (``--ge_*``); signal channel."""

    def __init__(self, lam: float = 0.1, pos_only: bool = True, alpha: float = 0.75, ema: bool = True,
                 momentum: float = 0.9, band: float = 0.0, trainable: bool = False,
                 signal: SignalChannel | None = None):
        super().__init__()
        self.pos_only, self.alpha, self.ema, self.momentum, self.band = pos_only, alpha, ema, momentum, band
        self.signal = signal
        log_lam = torch.tensor(math.log(max(lam, 1e-12)))
        if trainable:
            self.log_lam = nn.Parameter(log_lam)
        else:
            self.register_buffer("log_lam", log_lam)
        self.register_buffer("ema_strength", torch.empty(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "ema_strength"
        if key in state_dict:
            self.ema_strength = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        g = (torch.sigmoid(logits) - targets).abs()
        strength = _masked_mean(g, targets)
        if not self.pos_only:
            strength = self.alpha * strength + (1 - self.alpha) * _masked_mean(g, 1 - targets)
        if self.ema:
            if self.ema_strength.shape == strength.shape:
                strength = self.momentum * self.ema_strength + (1 - self.momentum) * strength
            self.ema_strength = strength.detach()
        if self.signal is not None:
            self.signal.push("ge_strength", strength)
        penalty = F.relu(strength.var() - self.band) if strength.numel() > 1 else strength.sum() * 0
        return bce + self.log_lam.exp() * penalty
