"""CHARM-Xray building blocks (charm_xray.md §4.2-4.5) and the VAN Large Kernel Attention (§11).

Attribute names are the original's, so the state-dict keys match it (§4.7).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class MomentumFinalBlock(nn.Module):
    """A frozen copy of the backbone's final block, moved towards the live block after every training
    forward: theta_k <- m * theta_k + (1 - m) * theta_q (parameters only; §4.2).

    The copy's BatchNorm buffers are not averaged: it runs in the model's mode, so in training its
    running statistics follow the batches (original quirk 8).

    Args:
        final_block: the live final block (copied, starting from its current, e.g. pretrained, weights).
        momentum: m, constant from the first step.
    """

    def __init__(self, final_block: nn.Module, momentum: float = 0.99):
        super().__init__()
        self.momentum = momentum
        self.final_block = copy.deepcopy(final_block)
        for p in self.final_block.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.final_block(x)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """One momentum step towards ``online`` (the live final block)."""
        for p_k, p_q in zip(self.final_block.parameters(), online.parameters(), strict=True):
            p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)


class SpatialAttention(nn.Module):
    """Multi-scale spatial attention (§4.3): 1x1, 3x3 and 5x5 convolutions C -> r (r = max(C // 8, 8)),
    concatenated, a 1x1 convolution to one channel and a sigmoid: A in [B, 1, H, W].

    Args:
        in_channels: C.
        reduction: the divisor of C (the original's ATTENTION_REDUCTION, 8).
    """

    def __init__(self, in_channels: int, reduction: int = 8):
        super().__init__()
        r = max(in_channels // reduction, 8)
        self.reduced_channels = r
        self.conv1 = nn.Conv2d(in_channels, r, kernel_size=1)
        self.conv3 = nn.Conv2d(in_channels, r, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(in_channels, r, kernel_size=5, padding=2)
        self.spatial_att = nn.Sequential(nn.Conv2d(3 * r, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_att(torch.cat([self.conv1(x), self.conv3(x), self.conv5(x)], dim=1))


class MemoryBank(nn.Module):
    """The "rare" feature memory (§4.5), kept in the state dict (``memory``, ``index``).

    Write: rows are copied contiguously from ``index``; only ``min(n, size - index)`` rows are written
    (no wrap inside one write, original quirk 5), then ``index <- (index + written) % size``.
    Retrieve: cosine similarity of each query to every slot (all-zero slots score 0); slots whose
    similarity is exactly 1.0 are excluded (quirk 6); the top ``k`` of the rest are summed weighted by
    their raw similarities, which keep their gradient to the query (quirk 7); nothing left -> zeros.

    Args:
        size: number of slots (BANK_SIZE, 512).
        dim: feature width C.
    """

    def __init__(self, size: int, dim: int, *, wrap_writes: bool = False, exclusion_tol: float = 0.0):
        super().__init__()
        self.size = size
        # corrected behaviours (off by default): wrap a write around the end of the bank instead of
        # dropping its tail; exclude slots with similarity >= 1 - tol (a sample's own feature in
        # floating point) instead of exactly 1.0
        self.wrap_writes = wrap_writes
        self.exclusion_tol = exclusion_tol
        self.register_buffer("memory", torch.zeros(size, dim))
        self.register_buffer("index", torch.tensor(0))

    @torch.no_grad()
    def write(self, features: torch.Tensor) -> int:
        """Store ``features`` [n, C] (detached); returns the number of rows written."""
        start = int(self.index)
        features = features.detach().to(self.memory.dtype)
        if self.wrap_writes:
            features = features[-self.size:]
            rows = (start + torch.arange(features.shape[0], device=features.device)) % self.size
            self.memory[rows] = features
            self.index.fill_((start + features.shape[0]) % self.size)
            return features.shape[0]
        n = min(features.shape[0], self.size - start)
        if n > 0:
            self.memory[start:start + n] = features[:n]
        self.index.fill_((start + n) % self.size)
        return n

    def retrieve(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """Similarity-weighted sum of the top-``k`` slots for each query row [B, C] -> [B, C]."""
        memory = self.memory.to(query.dtype)
        sim = F.normalize(query, dim=1) @ F.normalize(memory, dim=1).t()  # [B, size]
        k = min(k, self.size)
        if k <= 0:
            return torch.zeros_like(query)
        excluded = sim.detach() >= 1.0 - self.exclusion_tol if self.exclusion_tol > 0 else sim.detach() == 1.0
        masked = sim.masked_fill(excluded, float("-inf"))
        top, idx = masked.topk(k, dim=1)
        # fewer than k slots left: the -inf picks weigh nothing (k = min(K, available) of the original)
        weights = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return torch.einsum("bk,bkc->bc", weights, memory[idx])


class LKA(nn.Module):
    """Large Kernel Attention (VAN; golden_references.md §7): depthwise 5x5 -> depthwise 7x7 with
    dilation 3 -> 1x1 convolution, multiplied with the input. Attribute names follow the VGG16-LKA
    project quoted by the CHARM README (``dw_conv1``, ``dw_conv2``, ``pw_conv``; charm_xray.md §11).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dw_conv1 = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        self.dw_conv2 = nn.Conv2d(dim, dim, kernel_size=7, padding=9, dilation=3, groups=dim)
        self.pw_conv = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pw_conv(self.dw_conv2(self.dw_conv1(x)))
