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
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor

from dcal.models.attention.self_attention import split_qkv


def pwca_block_forward(block: Block, x: Tensor, distractor_kv: tuple[Tensor, Tensor]) -> Tensor:
    """One PWCA layer with the SA block's weights.

    Args:
        block: the SA block of this layer (weights shared).
        x: target tokens in the PWCA path (B, N+1, D).
        distractor_kv: the distractors' keys and values at this layer of their SA path
            (B, h, N+1, d each): what ``sa_block_forward`` computed, indexed by distractor, so the
            same projection is not run twice (values and gradients are those of projecting the
            distractor's SA tokens here).

    Returns:
        Target tokens after the layer (B, N+1, D).
    """
    attn = block.attn
    q1, k1, v1 = split_qkv(attn, block.norm1(x))
    k2, v2 = distractor_kv
    # No attention map is needed here (rollout reads SA only), so the fused kernel can be used.
    out = F.scaled_dot_product_attention(q1, torch.cat([k1, k2], dim=2), torch.cat([v1, v2], dim=2),
                                         dropout_p=attn.attn_drop.p if block.training else 0.0, scale=attn.scale)
    b, _, n, _ = q1.shape
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))))
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
