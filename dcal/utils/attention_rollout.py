"""Attention rollout (Abnar & Zuidema 2020) as DCAL uses it to pick GLCA's local queries.

Paper (DCAL Sec. 3.1, Eq. 2): S_bar_l = 0.5 * S_l + 0.5 * E (heads averaged, identity E added,
rows re-normalised) and S_hat_i = S_bar_i x S_bar_{i-1} x ... x S_bar_1. The CLS row of S_hat over the
patch tokens scores each patch.

Change from the replication: no MD5-keyed evaluation cache (quirk 19); rollout is cheap and a cache
keyed on attention statistics can return another image's map on a collision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Accumulated attention over layers.

    Args:
        attentions: per-layer attention probabilities, each (B, heads, N, N), first layer first.

    Returns:
        Rollout matrix (B, N, N) in float32: R_L = A_L ... A_1 with A_l = rownorm(mean_h(S_l) + I).
    """
    if len(attentions) == 0:
        raise ValueError("attention_rollout needs at least one attention map")
    rollout = None
    for att in attentions:
        rollout = rollout_update(rollout, att)
    return rollout


@torch.no_grad()
def rollout_update(rollout: Tensor | None, attention: Tensor) -> Tensor:
    """One rollout step R <- A_l R (R = identity when ``rollout`` is None); lets callers accumulate
    layer by layer instead of keeping every map.

    Args:
        rollout: accumulated (B, N, N) so far, or None before the first layer.
        attention: this layer's probabilities (B, heads, N, N).

    Returns:
        The updated (B, N, N) float32 rollout.
    """
    n = attention.shape[-1]
    eye = torch.eye(n, device=attention.device, dtype=torch.float32)
    a = attention.detach().float().mean(dim=1) + eye
    a = a / a.sum(dim=-1, keepdim=True)
    return a if rollout is None else a @ rollout


def num_local_queries(num_patches: int, ratio: float) -> int:
    """K = max(1, floor(N * R)): the number of top patches GLCA uses as local queries."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"top_k_ratio must be in (0, 1], got {ratio}")
    # the small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28
    return max(1, min(num_patches, math.floor(num_patches * ratio + 1e-9)))


@torch.no_grad()
def select_top_patches(rollout: Tensor, k: int) -> Tensor:
    """Indices (B, k) of the k patch tokens with the highest CLS-row rollout score, best first.

    Args:
        rollout: (B, N+1, N+1) rollout with the CLS token at position 0.
        k: number of patches to keep.

    Returns:
        Token positions in 1..N (i.e. already offset past the CLS token).
    """
    scores = rollout[:, 0, 1:]
    return scores.topk(k, dim=-1, largest=True, sorted=True).indices + 1
