"""timm ViT/DeiT backbone for DCAL, with pretrained weights read from a local file.

Changes from the replication: drop_path_rate reaches the backbone's blocks (quirk 8), and the
pretrained weights are never re-initialised afterwards (quirk 3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from common.checkpoint import load_state_dict_strict, load_weights_file
from dcal.models.attention.self_attention import check_block

logger = logging.getLogger(__name__)

# ViT/DeiT families with one CLS token and no distillation/register tokens; a timm pretrained tag
# such as ".fb_in1k" may follow the name.
SUPPORTED_BACKBONES = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_base_patch16_384",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
)

# Classifier weights of the ImageNet checkpoint: DCAL replaces the head, so these are dropped by name.
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def create_backbone(
    name: str,
    *,
    img_size: tuple[int, int],
    patch_size: int | None = None,
    depth: int | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained_path: str | None = None,
) -> VisionTransformer:
    """Build a headless timm ViT/DeiT and optionally load local pretrained weights (strict).

    Args:
        name: one of SUPPORTED_BACKBONES, optionally with a timm tag (``deit_tiny_patch16_224.fb_in1k``).
        img_size: (H, W) input size; the position embedding of pretrained weights is resampled to it.
        patch_size: override the patch size (tests use 8 px patches on 32 px images); None = the model's.
        depth: number of transformer blocks L; None = the model's (12).
        drop_rate: dropout after the position embedding, the attention projection and in the MLPs.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        pretrained_path: local .pth/.safetensors ImageNet weights; None or "" = random init.

    Returns:
        The VisionTransformer with ``num_classes=0`` (tokens are taken by DCAL, not its head).

    Raises:
        ValueError: unsupported backbone, or weights that do not fit (names the file and keys).
    """
    arch = name.split(".", 1)[0]
    if arch not in SUPPORTED_BACKBONES:
        raise ValueError(f"model.backbone_name '{name}' is not supported; choose one of {', '.join(SUPPORTED_BACKBONES)}")
    # timm >= 0.9 reads ``drop_rate`` as *head* dropout only, and DCAL does not use timm's head; the
    # config's drop_rate therefore goes to the position-embedding and projection/MLP dropouts, which
    # is what ``drop_rate`` meant in the timm versions the replication's configs were written for.
    kwargs = {"img_size": tuple(img_size), "pos_drop_rate": drop_rate, "proj_drop_rate": drop_rate,
              "drop_path_rate": drop_path_rate}
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    if depth is not None:
        kwargs["depth"] = depth
    vit = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if not isinstance(vit, VisionTransformer) or vit.num_prefix_tokens != 1 or vit.cls_token is None:
        raise ValueError(f"model.backbone_name '{name}': DCAL needs a ViT with exactly one CLS token")
    for i, blk in enumerate(vit.blocks):
        check_block(blk, f"{name} block {i}")
    if pretrained_path:
        if not Path(pretrained_path).is_file():
            raise ValueError(f"model.pretrained_path: weights file not found: {pretrained_path}")
        load_pretrained(vit, pretrained_path)
    else:
        logger.info("backbone %s: no model.pretrained_path given, starting from random initialisation", name)
    return vit


def load_pretrained(vit: VisionTransformer, path: str | Path) -> None:
    """Load ImageNet ViT/DeiT weights strictly; only the classifier head keys may be skipped."""
    state = load_weights_file(path)
    state = {k: v for k, v in state.items() if k not in _HEAD_KEYS}
    # timm's filter resamples pos_embed/patch_embed to this model's grid and maps original key names
    state = checkpoint_filter_fn(state, vit)
    load_state_dict_strict(vit, state, f"model.pretrained_path {path} (check model.backbone_name)")
    logger.info("loaded pretrained backbone weights from %s", path)


def num_patches(vit: VisionTransformer) -> int:
    """Number of patch tokens N (without CLS)."""
    gh, gw = vit.patch_embed.grid_size
    return gh * gw
