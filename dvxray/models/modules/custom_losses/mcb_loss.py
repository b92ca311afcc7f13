"""MCB losses: BCE with dynamic per-class weights from the intra-batch dispersion of the predictions.

``MCBLossConvex`` (``--base_loss mcb_convex``, the paper's loss), per call on logits z (B x C):
  1. p = sigmoid(z); s_c = population std (unbiased=False) of p[:, c] over the batch;
  2. w = softmax_c(s / max(tau, 1e-8)); w = max(w, w_min); w = w / sum_c w;
  3. w (detached) is pushed to the signal channel as ``w_mcb`` (the channel keeps its own EMA, used by
     CoordAtt-U; quirk 6: this is a second EMA, separate from the loss's own);
  4. ema_w <- w on the first call (or when C changes), else momentum * ema_w + (1 - momentum) * w;
  5. loss = mean over B x C of BCEWithLogits(z, y) * ema_w[c] (weights are constants for the gradient).
Because sum_c w_c = 1 the loss is about mean-BCE / C.

``MCBLoss`` (``--base_loss mcb``): the same without the clamp/renormalisation and without the push.

Computation is done in float32 even under autocast (the weights are statistics of probabilities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel


class _EmaWeightLoss(nn.Module):
    """Shared state handling: the ``ema_w`` buffer starts empty and is sized on first use."""

    def __init__(self, momentum: float, reduction: str):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got '{reduction}'")
        self.momentum = float(momentum)
        self.reduction = reduction
        self.register_buffer("ema_w", torch.empty(0))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # the buffer's size is data-dependent (empty before the first call): adopt the saved size
        key = prefix + "ema_w"
        if key in state_dict:
            self.ema_w = torch.empty_like(state_dict[key], device=self.ema_w.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _update_ema(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        if self.ema_w.numel() == 0 or self.ema_w.shape != w.shape:
            self.ema_w = w.clone()
        else:
            self.ema_w = self.momentum * self.ema_w + (1.0 - self.momentum) * w
        return self.ema_w

    def _weighted_bce(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights.unsqueeze(0)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class MCBLoss(_EmaWeightLoss):
    """MCB loss: softmax(std / tau) class weights, EMA-smoothed, no clamp, no signal push.

    Args:
        tau: softmax temperature (``main_finetune.py`` never passes ``--mcb_tau`` here, so it stays 1.0).
        momentum: EMA momentum of the class weights.
        reduction: "mean" or "sum".
    """

    def __init__(self, tau: float = 1.0, momentum: float = 0.9, reduction: str = "mean"):
        super().__init__(momentum, reduction)
        self.tau = float(tau)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        with torch.no_grad():
            s = torch.sigmoid(logits).std(dim=0, unbiased=False)
            w = torch.softmax(s / max(self.tau, 1e-8), dim=0)
        return self._weighted_bce(logits, targets, self._update_ema(w))


class MCBLossConvex(_EmaWeightLoss):
    """MCB-Convex loss (see the module docstring for the formula).

    Args:
        tau: softmax temperature (floored at 1e-8).
        w_min: lower bound of each class weight before renormalisation.
        momentum: EMA momentum of the loss's class weights.
        reduction: "mean" or "sum".
        signal: channel that receives ``w_mcb`` for CoordAtt-U (None: nothing is pushed).
    """

    def __init__(self, tau: float = 1.0, w_min: float = 1e-3, momentum: float = 0.9, reduction: str = "mean",
                 signal: SignalChannel | None = None):
        super().__init__(momentum, reduction)
        self.tau = float(tau)
        self.w_min = float(w_min)
        self.signal = signal

    @torch.no_grad()
    def class_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Step 1-2: the clamped, renormalised softmax weights w of one batch (before any EMA)."""
        s = torch.sigmoid(logits.float()).std(dim=0, unbiased=False)
        w = torch.softmax(s / max(self.tau, 1e-8), dim=0)
        w = torch.clamp(w, min=self.w_min)
        return w / w.sum()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        w = self.class_weights(logits)
        if self.signal is not None:
            self.signal.push("w_mcb", w)
        return self._weighted_bce(logits, targets, self._update_ema(w))
