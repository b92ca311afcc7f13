"""The CHARM-Xray network (charm_xray.md §4): a torchvision backbone whose final block is duplicated
as a momentum branch, multi-scale spatial attention, a memory bank and an MLP classifier.

State-dict keys are the original's (§4.7) for every backbone: ``backbone.*``, ``final_block.*``,
``momentum_final_block.final_block.*``, ``spatial_attention.{conv1,conv3,conv5,spatial_att.0}.*``,
``memory_bank.{memory,index}``, ``classifier.{0,1,4}.*`` and the duplicate ``base_model.*`` entries
(the torchvision model kept as an attribute; same tensors). A state dict of the original ``.py``
model therefore loads strict; notebook checkpoints add a ``model.`` prefix (read by ``charm_xray.evaluate.read_checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from charm_xray.models.components import MemoryBank, MomentumFinalBlock, SpatialAttention
from charm_xray.models.vgg16_lka import VGG16_LKA
from common.checkpoint import CheckpointError, load_weights_file
from common.pretrained import rename_torchvision_legacy_keys

_logger = logging.getLogger(__name__)

# model_name -> (torchvision builder, what it is); "efficientnet_b0" builds EfficientNetV2-S as the
# original does (quirk 2); "resnet18" is our addition for quick CPU runs (same split rule as resnet50).
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "efficientnet_b0": (torchvision.models.efficientnet_v2_s, "EfficientNetV2-S (the original's name)"),
    "efficientnet_b1": (torchvision.models.efficientnet_b1, "EfficientNet-B1"),
    "resnet50": (torchvision.models.resnet50, "ResNet-50"),
    "densenet121": (torchvision.models.densenet121, "DenseNet-121"),
    "resnet18": (torchvision.models.resnet18, "ResNet-18 (not in the original; small CPU runs)"),
}
MODEL_NAMES: tuple[str, ...] = (*_BACKBONES, "vgg16_lka")
MEMORY_SELECT = MemoryBank.SELECT


def describe_model_names() -> str:
    """One line per ``--model_name`` choice (for ``--help``)."""
    parts = [f"{name}: {what}" for name, (_, what) in _BACKBONES.items()]
    return "; ".join(parts + ["vgg16_lka: VGG16-BN with LKA after blocks 3-5 (the second README's model)"])


def load_torchvision_weights(model: nn.Module, path: str | Path | None, what: str) -> None:
    """Load ImageNet weights for a torchvision model from a local file (never downloaded)."""
    if path is None:
        _logger.info("no --pretrained_weights given: %s starts from random weights (the original used "
                     "torchvision ImageNet weights)", what)
        return
    state = rename_torchvision_legacy_keys(load_weights_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"--pretrained_weights {path}: not torchvision {what} weights "
            f"({len(missing)} missing key(s), e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    _logger.info("loaded %s ImageNet weights from %s", what, path)


def _split_torchvision(name: str, net: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """(backbone, final block, C) built as the original builds them (§4.1), so the state-dict keys
    are its keys (§4.7):

    * ResNet: ``backbone = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)`` and the
      final block is ``layer4`` itself (``final_block.<bottleneck>.*``);
    * DenseNet: ``backbone = Sequential(*features.children()[:-1])`` (positional keys ``backbone.0.*``
      = conv0, ...) and ``final_block = Sequential(norm5)`` (``final_block.0.*``);
    * EfficientNet: ``backbone = Sequential(*features[:-1])``, ``final_block = Sequential(features[-1])``.
    """
    if name.startswith("resnet"):
        backbone = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        final = net.layer4
        channels = net.fc.in_features
        net.fc = nn.Identity()
    elif name == "densenet121":
        children = list(net.features.children())
        backbone = nn.Sequential(*children[:-1])
        final = nn.Sequential(children[-1])  # DenseNet's last feature module is its final BatchNorm2d
        channels = children[-1].num_features
        net.classifier = nn.Identity()
    else:
        children = list(net.features)
        backbone = nn.Sequential(*children[:-1])
        final = nn.Sequential(children[-1])
        channels = children[-1][0].out_channels
        net.classifier = nn.Identity()
    return backbone, final, channels


class ChestXrayModel(nn.Module):
    """CHARM-Xray (§4.4, order matters).

    Training forward: b = backbone(x); F = final_block(b); F_m = momentum branch(b) (no grad);
    A = attention(F); fused = GAP(F * A) + GAP(F_m); write the samples whose feature norm is within
    ``rarity_threshold`` of the batch mean into the bank; add the bank's retrieval; classify; then one
    momentum step. Evaluation skips the write and the momentum step.

    Args:
        model_name: a key of ``MODEL_NAMES`` except "vgg16_lka" (see :func:`build_model`).
        num_classes: 14 for ChestX-ray14.
        momentum, attention_reduction, bank_size, rarity_threshold, retrieval_k, dropout_rate,
        hidden_dim: ``config.ModelConfig`` (0.99, 8, 512, 0.2, 3, 0.3, 512).
        memory_select: "near_mean" (the original: write features with rarity < threshold) or "rare"
            (rarity >= threshold).
        memory_wrap, exclusion_tol: :class:`MemoryBank` corrections (off by default).
        pretrained_weights: local torchvision ImageNet weights file, or None for random weights.
    """

    def __init__(self, model_name: str = "efficientnet_b0", num_classes: int = 14, *, momentum: float = 0.99,
                 attention_reduction: int = 8, bank_size: int = 512, rarity_threshold: float = 0.2,
                 retrieval_k: int = 3, dropout_rate: float = 0.3, hidden_dim: int = 512,
                 pretrained_weights: str | Path | None = None, memory_select: str = "near_mean",
                 memory_wrap: bool = False, exclusion_tol: float = 0.0):
        super().__init__()
        if model_name not in _BACKBONES:
            raise ValueError(f"--model_name: unknown '{model_name}' (choose from {', '.join(MODEL_NAMES)})")
        builder, what = _BACKBONES[model_name]
        net = builder(weights=None)
        load_torchvision_weights(net, pretrained_weights, what.split(" (")[0])
        backbone, final, channels = _split_torchvision(model_name, net)
        self.model_name = model_name
        self.feature_dim = channels
        self.retrieval_k = retrieval_k
        self.base_model = net
        self.backbone = backbone
        self.final_block = final
        self.momentum_final_block = MomentumFinalBlock(self.final_block, momentum)
        self.spatial_attention = SpatialAttention(channels, attention_reduction)
        self.memory_bank = MemoryBank(channels, bank_size, rarity_threshold, select=memory_select,
                                      wrap_writes=memory_wrap, exclusion_tol=exclusion_tol)
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.Linear(channels, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout_rate),
            nn.Linear(hidden_dim, num_classes),
        )

    @property
    def momentum(self) -> float:
        return self.momentum_final_block.momentum

    @property
    def rarity_threshold(self) -> float:
        return self.memory_bank.rarity_threshold

    @property
    def memory_select(self) -> str:
        return self.memory_bank.select

    def set_memory_params(self, *, momentum: float | None = None, retrieval_k: int | None = None,
                          rarity_threshold: float | None = None) -> None:
        """Set the grid's three settings (MOMENTUM, RETRIEVAL_K, RARITY_THRESHOLD)."""
        if momentum is not None:
            self.momentum_final_block.momentum = momentum
        if retrieval_k is not None:
            self.retrieval_k = retrieval_k
        if rarity_threshold is not None:
            self.memory_bank.rarity_threshold = rarity_threshold

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused pooled feature [B, C], spatial attention map [B, 1, H, W])."""
        b = self.backbone(x)
        feat = self.final_block(b)
        feat_m = self.momentum_final_block(b)
        att = self.spatial_attention(feat)
        # the original's ops (adaptive_avg_pool2d, then the sum): its bank compares similarities with
        # 1.0 exactly, so a last-bit difference in these features changes which slots are retrieved
        roi = F.adaptive_avg_pool2d(feat * att, (1, 1)).flatten(1)
        fused = roi + F.adaptive_avg_pool2d(feat_m, (1, 1)).flatten(1)
        return fused, att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused, _ = self.forward_features(x)
        if self.training:
            with torch.no_grad():
                norms = torch.norm(fused, dim=1)
                mean_norm = torch.mean(norms)
                rarity = torch.abs(norms - mean_norm) / mean_norm
            # the original stores features whose norm is close to the batch mean (quirk 4); "rare" stores
            # the outliers, as the paper's wording ("rare feature storage") suggests
            self.memory_bank.update(fused.detach(), rarity)
        enhanced = fused + self.memory_bank.retrieve(fused, k=self.retrieval_k)
        logits = self.classifier(enhanced)
        if self.training:
            self.momentum_final_block.update(self.final_block)
        return logits


def build_model(model_name: str = "efficientnet_b0", num_classes: int = 14, *,
                pretrained_weights: str | Path | None = None, **memory_kwargs) -> nn.Module:
    """The network for ``--model_name``: :class:`ChestXrayModel`, or :class:`VGG16_LKA` for "vgg16_lka"
    (which takes no memory settings)."""
    if model_name == "vgg16_lka":
        return VGG16_LKA(num_classes, pretrained_weights=pretrained_weights)
    return ChestXrayModel(model_name, num_classes, pretrained_weights=pretrained_weights, **memory_kwargs)
