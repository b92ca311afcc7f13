"""``--base_loss`` dispatch (the original ``build_base_criterion``).

| name | criterion |
| bce | BCEWithLogitsLoss | mlsm | MultiLabelSoftMarginLoss | focal | FocalLoss(gamma, alpha) |
| fals | FALSLoss(eps, gamma) | mcb | MCBLoss(momentum), tau not passed (stays 1.0, quirk 17) |
| dals | DALSBCE(eps, gamma) | mcb_convex | MCBLossConvex(tau, w_min, momentum) | gebce | GEBCELoss(--ge_*) |

The original's distillation losses (``kd_losses``/``predictors``) were deleted upstream and are not
re-implemented; ``main_finetune.py`` refuses ``--use_distillation true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dvxray.models.modules.custom_losses.dals_loss import DALSBCE
from dvxray.models.modules.custom_losses.fals_loss import FALSLoss
from dvxray.models.modules.custom_losses.focal_loss import FocalLoss
from dvxray.models.modules.custom_losses.gebce import GEBCELoss
from dvxray.models.modules.custom_losses.mcb_loss import MCBLoss, MCBLossConvex
from dvxray.models.modules.custom_losses.signals import SignalChannel

BASE_LOSSES = ("bce", "mlsm", "focal", "fals", "mcb", "gebce", "dals", "mcb_convex")


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of every loss, with the original parser defaults."""

    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    fals_eps: float = 0.1
    fals_gamma: float = 2.0
    mcb_momentum: float = 0.9
    mcb_tau: float = 1.0
    mcb_wmin: float = 1e-3
    ge_lambda: float = 0.1
    ge_pos_only: bool = True
    ge_alpha: float = 0.75
    ge_ema: bool = True
    ge_momentum: float = 0.9
    ge_band: float = 0.0
    ge_trainable: bool = False
    dals_eps: float = 0.1
    dals_gamma: float = 2.0


def build_base_criterion(name: str, params: LossParams, signal: SignalChannel | None = None) -> nn.Module:
    """Criterion for ``--base_loss name``; losses that feed attention modules get the signal channel."""
    p = params
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "mlsm":
        return nn.MultiLabelSoftMarginLoss()
    if name == "focal":
        return FocalLoss(gamma=p.focal_gamma, alpha=p.focal_alpha)
    if name == "fals":
        return FALSLoss(eps=p.fals_eps, gamma=p.fals_gamma, signal=signal)
    if name == "mcb":
        return MCBLoss(momentum=p.mcb_momentum)
    if name == "dals":
        return DALSBCE(eps=p.dals_eps, gamma=p.dals_gamma)
    if name == "mcb_convex":
        return MCBLossConvex(tau=p.mcb_tau, w_min=p.mcb_wmin, momentum=p.mcb_momentum, signal=signal)
    if name == "gebce":
        return GEBCELoss(lam=p.ge_lambda, pos_only=p.ge_pos_only, alpha=p.ge_alpha, ema=p.ge_ema,
                         momentum=p.ge_momentum, band=p.ge_band, trainable=p.ge_trainable, signal=signal)
    raise ValueError(f"--base_loss: unknown loss '{name}' (choose from {', '.join(BASE_LOSSES)})")
