"""DCAL losses: per-branch cross-entropy (+ batch-hard triplet for re-ID) and Kendall uncertainty
weighting over the branches.

Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018; DCAL Sec. 3.3):
L_total = 1/2 * sum_i (exp(-w_i) * L_i + w_i), w_i = log sigma_i^2 initialised at 0, over
(L_SA, L_GLCA, L_PWCA) in training. Change from the replication (quirk 7): the w_i are parameters of
the training task, so they are in the optimiser, move with the model and are checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UncertaintyWeightedLoss(nn.Module):
    """Kendall uncertainty weighting with one learnable log-variance per named task.

    Args:
        names: task names in a fixed order (e.g. ("sa", "glca", "pwca")).
        learnable: False keeps every w_i at 0 (fixed weights 1/2, the replication's effective loss).
    """

    def __init__(self, names: Sequence[str], *, learnable: bool = True):
        super().__init__()
        self.names = tuple(names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)), requires_grad=learnable)

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum over the tasks present in ``losses`` (names outside ``names`` are an error)."""
        unknown = set(losses) - set(self.names)
        if unknown:
            raise KeyError(f"UncertaintyWeightedLoss: unknown task(s) {sorted(unknown)}; known: {self.names}")
        total = self.log_vars.new_zeros(())
        for i, name in enumerate(self.names):
            if name in losses:
                w = self.log_vars[i]
                total = total + 0.5 * (torch.exp(-w) * losses[name].float() + w)
        return total

    def weights(self) -> dict[str, float]:
        """Effective multiplier 1/2 * exp(-w_i) of each task loss (for logging)."""
        return {n: float(0.5 * torch.exp(-w)) for n, w in zip(self.names, self.log_vars.detach(), strict=True)}


def euclidean_dist(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distances sqrt(max(||x||^2 + ||y||^2 - 2 x.y, 1e-12)), shape (len(x), len(y))."""
    xx = x.pow(2).sum(dim=1, keepdim=True)
    yy = y.pow(2).sum(dim=1, keepdim=True).t()
    d = xx + yy - 2.0 * x @ y.t()
    return d.clamp(min=1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) with margin: mean over anchors of
    relu(max_pos d(a, p) - min_neg d(a, n) + margin). Anchors without a positive (other than
    themselves) or without a negative are left out."""

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, feat: Tensor, target: Tensor) -> Tensor:
        feat = feat.float()
        dist = euclidean_dist(feat, feat)
        same = target.unsqueeze(0) == target.unsqueeze(1)
        eye = torch.eye(len(target), dtype=torch.bool, device=target.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        if not bool(valid.any()):
            # no triplet in this batch (e.g. one identity): zero loss that keeps the graph connected
            return feat.sum() * 0.0
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)
        return F.relu(hardest_pos - hardest_neg + self.margin)[valid].mean()
