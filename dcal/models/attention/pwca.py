"""Pair-Wise Cross-Attention (PWCA), DCAL Sec. 3.2 (T = 12 blocks, training only).

For a target image i and a distractor j from the same batch, each PWCA layer computes
f_PWCA(Q_1, K_c, V_c) = softmax(Q_1 K_c^T / sqrt(d)) V_c with K_c = [K_1; K_2], V_c = [V_1; V_2]:
the target's queries attend over its own and the distractor's keys/values, the softmax running over
all 2(N+1) keys. PWCA shares every weight with the SA block of the same layer. The distractor's
keys/values come from its own SA hidden states at that layer.

Change from the replication (quirk 6): the distractor is drawn from a random derangement of the batch,
so an image is never its own distractor; the replication used a plain permutation.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor

from dcal.models.attention.self_attention import attend, split_qkv


def pwca_block_forward(block: Block, x: Tensor, distractor: Tensor) -> Tensor:
    """One PWCA layer with the SA block's weights.

    Args:
        block: the SA block of this layer (weights shared).
        x: target tokens in the PWCA path (B, N+1, D).
        distractor: distractor tokens at the same layer of their SA path (B, N+1, D).

    Returns:
        Target tokens after the layer (B, N+1, D).
    """
    q1, k1, v1 = split_qkv(block.attn, block.norm1(x))
    _, k2, v2 = split_qkv(block.attn, block.norm1(distractor))
    out, _ = attend(block.attn, q1, torch.cat([k1, k2], dim=2), torch.cat([v1, v2], dim=2))
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def sample_distractors(batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Random derangement: index of each sample's distractor, never the sample itself.

    A random cyclic shift of a random permutation: sample perm[i] is paired with perm[i + 1].

    Raises:
        ValueError: batch_size < 2 (no other image to pair with).
    """
    if batch_size < 2:
        raise ValueError(f"PWCA needs at least 2 images per batch to pick a distractor, got {batch_size}")
    perm = torch.randperm(batch_size, generator=generator)
    distractor = torch.empty_like(perm)
    distractor[perm] = perm.roll(-1)
    return distractor.to(device)
