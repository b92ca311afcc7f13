"""Self-attention (SA) branch of DCAL: the backbone ViT's own transformer blocks.

Paper (Zhu et al., CVPR 2022, Sec. 3): the SA branch is the L = 12 blocks of the ViT/DeiT backbone.
GLCA needs every SA layer's attention map (for rollout) and PWCA re-uses the SA weights, so the
blocks are run here step by step instead of through timm's fused ``forward_features``.

Change from the replication (mossbee/DCAL, quirk 2/3/4): it stacked 12 *new*, randomly initialised
blocks on top of the complete pretrained ViT and re-initialised the backbone; here the pretrained
blocks themselves are the SA branch and nothing is re-initialised.
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import Tensor


def check_block(block: torch.nn.Module, where: str) -> None:
    """Raise ValueError unless ``block`` is a plain pre-norm timm ViT block with fused qkv."""
    if not isinstance(block, Block) or not isinstance(block.attn, Attention):
        raise ValueError(f"{where}: DCAL needs timm VisionTransformer pre-norm Blocks with a fused-qkv "
                         f"Attention, got {type(block).__name__}/{type(getattr(block, 'attn', None)).__name__}")
    if block.attn.gate is not None:
        raise ValueError(f"{where}: gated attention is not supported by DCAL")


def split_qkv(attn: Attention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Project normalised tokens ``x`` (B, N, D) to per-head q, k, v, each (B, h, N, d)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention with explicit probabilities, then the output projection.

    Args:
        attn: timm Attention whose scale, dropout, norm and projection are used.
        q: queries (B, h, Nq, d); k, v: keys/values (B, h, Nk, d).

    Returns:
        ``(out, probs)``: projected output (B, Nq, D) and softmax probabilities (B, h, Nq, Nk)
        before attention dropout (what rollout must see).
    """
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    # softmax in float32: under bf16 autocast the rows must still sum to one for rollout.
    probs = logits.float().softmax(dim=-1)
    out = attn.attn_drop(probs.to(v.dtype)) @ v
    b, _, nq, _ = q.shape
    out = out.transpose(1, 2).reshape(b, nq, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    return out, probs


def sa_block_forward(block: Block, x: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """One SA block (identical maths to timm's ``Block.forward``) that also returns the attention.

    Returns:
        ``(tokens, probs, (k, v))`` with tokens (B, N, D), probs (B, h, N, N) and the layer's keys
        and values (B, h, N, d each), which PWCA re-uses for the distractor instead of projecting
        the same hidden states again.
    """
    q, k, v = split_qkv(block.attn, block.norm1(x))
    out, probs = attend(block.attn, q, k, v)
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, probs, (k, v)


def block_kv(block: Block, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values (B, h, N, d) of tokens ``x`` at ``block`` (what ``sa_block_forward`` returns)."""
    _, k, v = split_qkv(block.attn, block.norm1(x))
    return k, v


def embed_tokens(vit: torch.nn.Module, images: Tensor) -> Tensor:
    """Patch embedding + CLS token + position embedding, as timm's ``forward_features`` does first."""
    x = vit.patch_embed(images)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)

