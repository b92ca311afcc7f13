"""DCAL main model: SA (the backbone's own blocks) + GLCA (M = 1) + PWCA (T = L, training only).

Paper: Zhu et al., "Dual Cross-Attention Learning for Fine-Grained Visual Categorization and Object
Re-Identification", CVPR 2022, Sec. 3. Heads: FGVC uses one linear classifier per branch on the CLS
token; re-ID uses a BNNeck (BatchNorm1d without bias shift, then a bias-free classifier) per branch,
with the triplet loss on the pre-BN feature. PWCA shares the SA blocks, final norm and SA head (the
BNNeck normalises PWCA features with batch statistics without touching SA's running statistics).

Inference: FGVC combines the SA and GLCA class probabilities; re-ID concatenates the SA and GLCA
BNNeck features. PWCA is skipped in eval mode, so a sample's outputs never depend on its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from dcal.models.attention.glca import GLCABlock
from dcal.models.attention.pwca import pwca_block_forward, sample_distractors
from dcal.models.attention.self_attention import embed_tokens, sa_block_forward
from dcal.models.backbones.timm_wrapper import num_patches
from dcal.utils.attention_rollout import num_local_queries, rollout_update, select_top_patches

TASK_TYPES = ("fgvc", "reid")
NECK_FEATS = ("after", "before")


class BNNeck(nn.Module):
    """BNNeck re-ID head (Luo et al. 2019): BN (bias frozen at 0) then a bias-free classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: Tensor, *, update_stats: bool = True) -> tuple[Tensor, Tensor]:
        """Returns (BN feature, logits). ``update_stats=False`` normalises with the batch's own
        statistics in training without changing the running averages (used for PWCA features)."""
        if self.training and not update_stats:
            bn_feat = F.batch_norm(feat, None, None, self.bn.weight, self.bn.bias, training=True,
                                   eps=self.bn.eps)
        else:
            bn_feat = self.bn(feat)
        return bn_feat, self.classifier(bn_feat)


class DualAttentionModel(nn.Module):
    """DCAL network.

    Args:
        backbone: headless timm VisionTransformer; its blocks are the SA branch.
        num_classes: classes (FGVC) or training identities (re-ID).
        task_type: "fgvc" or "reid".
        top_k_ratio: R, the fraction of patches GLCA uses as local queries (0.1 FGVC, 0.3 re-ID).
        use_glca: build the GLCA branch (M = 1) or not (M = 0, ablation).
        use_pwca: run PWCA in training (T = L) or not (T = 0, ablation).
        neck_feat: re-ID inference feature, "after" (BNNeck output) or "before" the BN.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        *,
        task_type: str = "fgvc",
        top_k_ratio: float = 0.1,
        use_glca: bool = True,
        use_pwca: bool = True,
        neck_feat: str = "after",
    ):
        super().__init__()
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got '{task_type}'")
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got '{neck_feat}'")
        self.backbone = backbone
        self.task_type = task_type
        self.num_classes = num_classes
        self.neck_feat = neck_feat
        self.use_pwca = use_pwca
        self.top_k = num_local_queries(num_patches(backbone), top_k_ratio)
        self.grid_size = tuple(backbone.patch_embed.grid_size)
        dim = backbone.embed_dim
        self.glca = GLCABlock(backbone.blocks[-1], backbone.norm) if use_glca else None
        if task_type == "fgvc":
            self.sa_head = nn.Linear(dim, num_classes)
            self.glca_head = nn.Linear(dim, num_classes) if use_glca else None
        else:
            self.sa_head = BNNeck(dim, num_classes)
            self.glca_head = BNNeck(dim, num_classes) if use_glca else None

    def _head(self, head: nn.Module, feat: Tensor, out: dict[str, Tensor], name: str, update_stats: bool = True) -> None:
        out[f"{name}_feat"] = feat
        if self.task_type == "fgvc":
            out[f"{name}_logits"] = head(feat)
        else:
            out[f"{name}_bn_feat"], out[f"{name}_logits"] = head(feat, update_stats=update_stats)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Args:
            images: (B, 3, H, W).

        Returns:
            dict with ``sa_logits``/``sa_feat`` (and ``sa_bn_feat`` for re-ID), the same for ``glca``
            when GLCA is built, ``pwca_*`` in training when PWCA is on, ``rollout`` (B, N) CLS-row
            rollout scores, ``glca_idx`` (B, K) selected patch positions (1..N), and ``embedding``:
            the inference feature (re-ID) or the combined SA+GLCA class probabilities (FGVC).
        """
        vit = self.backbone
        x = embed_tokens(vit, images)
        pwca = self.training and self.use_pwca
        first_input = x
        layer_kv: list[tuple[Tensor, Tensor]] = []
        rollout = None
        glca_input = x
        for blk in vit.blocks:
            glca_input = x  # ends as the input of the last SA block, which GLCA runs beside
            x, probs, kv = sa_block_forward(blk, x)
            if pwca:
                layer_kv.append(kv)
            rollout = rollout_update(rollout, probs)
        out: dict[str, Tensor] = {}
        self._head(self.sa_head, vit.norm(x)[:, 0], out, "sa")
        out["rollout"] = rollout[:, 0, 1:]
        idx = select_top_patches(rollout, self.top_k)
        out["glca_idx"] = idx
        if self.glca is not None:
            self._head(self.glca_head, self.glca(glca_input, idx)[:, 0], out, "glca")
        if pwca:
            distractor = sample_distractors(images.shape[0], images.device)
            y = first_input
            for blk, (k, v) in zip(vit.blocks, layer_kv, strict=True):
                y = pwca_block_forward(blk, y, (k[distractor], v[distractor]))
            self._head(self.sa_head, vit.norm(y)[:, 0], out, "pwca", update_stats=False)
            out["pwca_distractor"] = distractor
        out["embedding"] = self._embedding(out)
        return out

    def _embedding(self, out: dict[str, Tensor]) -> Tensor:
        branches = ["sa"] + (["glca"] if self.glca is not None else [])
        if self.task_type == "fgvc":
            # paper: class probabilities of SA and GLCA are added for the prediction
            return sum(out[f"{b}_logits"].float().softmax(dim=-1) for b in branches)
        key = "bn_feat" if self.neck_feat == "after" else "feat"
        return torch.cat([out[f"{b}_{key}"] for b in branches], dim=1)
