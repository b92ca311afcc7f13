"""Global-Local Cross-Attention (GLCA), DCAL Sec. 3.1 (M = 1 block).

The local queries are the CLS token plus the top-R patch tokens by attention rollout; they attend to
the keys/values of *all* tokens: f_GLCA(Q_l, K_g, V_g) = softmax(Q_l K_g^T / sqrt(d)) V_g.

The block has its own weights (GLCA does not share weights with SA) and the usual pre-norm
transformer structure (cross-attention + MLP, both residual). It runs in parallel with the last SA
block on the same input tokens, so its rollout includes every SA layer. Its parameters start as a
copy of that last pretrained SA block, so no randomly initialised layer sits on the pretrained path.

Change from the replication (quirk 5): there GLCA read the backbone's final tokens, had no MLP and
applied its output projection to every token, not only to the queries.
"""

from __future__ import annotations

import copy

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from dcal.models.attention.self_attention import attend, check_block, split_qkv


class GLCABlock(nn.Module):
    """Cross-attention block: K + 1 local queries over all N + 1 global tokens.

    Args:
        template: SA block whose architecture (and initial weights) GLCA copies.
        final_norm: the backbone's final LayerNorm, copied so GLCA has its own output norm.
    """

    def __init__(self, template: Block, final_norm: nn.Module):
        super().__init__()
        check_block(template, "GLCA template")
        # deep copies: own parameters, initialised from the pretrained block (never shared with SA)
        self.block = copy.deepcopy(template)
        self.norm = copy.deepcopy(final_norm)

    def forward(self, x: Tensor, query_idx: Tensor) -> Tensor:
        """Args:
            x: input tokens (B, N+1, D) with CLS first.
            query_idx: selected patch positions (B, K), values in 1..N.

        Returns:
            Normalised output tokens (B, K+1, D): CLS first, then the K local queries.
        """
        blk = self.block
        b = x.shape[0]
        cls_pos = torch.zeros(b, 1, dtype=query_idx.dtype, device=query_idx.device)
        pos = torch.cat([cls_pos, query_idx], dim=1)  # (B, K+1)
        local = torch.gather(x, 1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        q, _, _ = split_qkv(blk.attn, blk.norm1(local))
        _, k, v = split_qkv(blk.attn, blk.norm1(x))
        out, _ = attend(blk.attn, q, k, v)
        y = local + blk.drop_path1(blk.ls1(out))
        y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
        return self.norm(y)
