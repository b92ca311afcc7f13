"""CHARM-Xray building blocks (charm_xray.md §4.2-4.5) and the VAN Large Kernel Attention (§11).

Attribute names are the original's, so the state-dict keys match it (§4.7).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from charm_xray.config import ModelConfig


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
        # theta_k * m + theta_q * (1 - m) as the original writes it: two products, then their sum (an
        # add_ with alpha may fuse to one multiply-add and round differently)
        for p_k, p_q in zip(self.final_block.parameters(), online.parameters(), strict=True):
            p_k.mul_(self.momentum).add_(p_q.detach() * (1.0 - self.momentum))


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

    The original's signature: ``MemoryBank(feature_dim, bank_size=None, rarity_threshold=None)`` with
    ``update(features, rarity_scores)`` and ``retrieve(query, k=None)``; ``None`` means the
    ``config.ModelConfig`` value (BANK_SIZE 512, RARITY_THRESHOLD 0.2, RETRIEVAL_K 3).

    Update: the rows whose rarity is below ``rarity_threshold`` are copied contiguously from ``index``;
    only ``min(n, bank_size - index)`` rows are written (no wrap inside one write, original quirk 5),
    then ``index <- (index + written) % bank_size``.
    Retrieve: cosine similarity ``F.normalize(query) @ F.normalize(memory).T`` (all-zero slots score 0);
    slots whose similarity is exactly 1.0 are excluded (quirk 6: a sample's own feature often lands at
    0.99999994 or 1.0000001 and is then retrieved); the top ``k`` of the rest are summed weighted by
    their raw similarities, which keep their gradient to the query (quirk 7); nothing left -> zeros.

    Args:
        feature_dim: feature width C.
        bank_size: number of slots.
        rarity_threshold: the write threshold on the rarity score.
        select: "near_mean" (the original: write rarity < threshold) or "rare" (rarity >= threshold).
        wrap_writes: a write wraps around the end of the bank instead of dropping its tail.
        exclusion_tol: exclude slots with similarity >= 1 - tol instead of exactly 1.0.
    """

    SELECT = ("near_mean", "rare")

    def __init__(self, feature_dim: int, bank_size: int | None = None, rarity_threshold: float | None = None, *,
                 select: str = "near_mean", wrap_writes: bool = False, exclusion_tol: float = 0.0):
        super().__init__()
        if select not in self.SELECT:
            raise ValueError(f"--memory_select: unknown '{select}' (choose from {', '.join(self.SELECT)})")
        self.feature_dim = feature_dim
        self.bank_size = ModelConfig.BANK_SIZE if bank_size is None else bank_size
        self.rarity_threshold = ModelConfig.RARITY_THRESHOLD if rarity_threshold is None else rarity_threshold
        self.select = select
        # corrected behaviours (off by default): wrap a write around the end of the bank instead of
        # dropping its tail; exclude slots with similarity >= 1 - tol (a sample's own feature in
        # floating point) instead of exactly 1.0
        self.wrap_writes = wrap_writes
        self.exclusion_tol = exclusion_tol
        self.register_buffer("memory", torch.zeros(self.bank_size, feature_dim))
        self.register_buffer("index", torch.tensor(0))

    @torch.no_grad()
    def update(self, features: torch.Tensor, rarity_scores: torch.Tensor) -> int:
        """Write the rows of ``features`` [n, C] whose ``rarity_scores`` [n] are below the threshold
        (at or above it with ``select="rare"``); returns the number of rows written."""
        if self.select == "near_mean":
            chosen = rarity_scores < self.rarity_threshold
        else:
            chosen = rarity_scores >= self.rarity_threshold
        return self.write(features[chosen])

    @torch.no_grad()
    def write(self, features: torch.Tensor) -> int:
        """Store ``features`` [n, C] (detached) from ``index``; returns the number of rows written."""
        start = int(self.index)
        features = features.detach().to(self.memory.dtype)
        if self.wrap_writes:
            features = features[-self.bank_size:]
            rows = (start + torch.arange(features.shape[0], device=features.device)) % self.bank_size
            self.memory[rows] = features
            self.index.fill_((start + features.shape[0]) % self.bank_size)
            return features.shape[0]
        n = min(features.shape[0], self.bank_size - start)
        if n > 0:
            self.memory[start:start + n] = features[:n]
        self.index.fill_((start + n) % self.bank_size)
        return n

    def retrieve(self, query: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Similarity-weighted sum of the top-``k`` slots for each query row [B, C] -> [B, C].

        The original loops over the queries. Here the similarity is the same matmul of the normalised
        tensors, so the same slots are excluded; queries with no excluded slot are done for the whole
        batch at once with the same product-then-sum over the k picks (no einsum / bmm, whose other
        summation order changes the last bits and, through the exact 1.0 test, which slots a later step
        excludes); the others (in training, mostly the samples just written) take the original's
        per-query path. On CPU, values and gradients equal the original's bit for bit.
        """
        k = ModelConfig.RETRIEVAL_K if k is None else k
        memory = self.memory
        if memory.shape[0] == 0 or k <= 0:
            return torch.zeros_like(query)
        similarity = torch.matmul(F.normalize(query, dim=1), F.normalize(memory, dim=1).T)  # [B, bank_size]
        if self.exclusion_tol > 0:
            excluded = similarity.detach() >= 1.0 - self.exclusion_tol
        else:
            excluded = similarity.detach() == 1.0
        k = min(k, memory.shape[0])
        top, idx = similarity.masked_fill(excluded, float("-inf")).topk(k, dim=1)
        weights = top.masked_fill(top == float("-inf"), 0.0)
        retrieved = memory[idx]  # [B, k, C]
        out = (retrieved * weights.unsqueeze(2).expand_as(retrieved)).sum(dim=1)
        # a query with an excluded slot goes the original's way: top-k over the remaining slots only. The
        # masked top-k above may order tied slots differently, and with fewer than k slots left it sums
        # zero-weight picks too; either changes the summation order, so the last bits.
        for i in torch.nonzero(excluded.any(dim=1)).flatten().tolist():
            valid = torch.nonzero(~excluded[i]).flatten()
            if len(valid) == 0:
                out[i] = 0.0
                continue
            w, rel = similarity[i, valid].topk(min(k, len(valid)))
            rows = memory[valid[rel]]
            out[i] = (rows * w.unsqueeze(1).expand_as(rows)).sum(dim=0)
        return out.to(query.dtype)


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
