"""XMNet networks: a torchvision backbone with the XMNet / MMANet spatial attention for classification
(first-commit dbdd99e ``backboneModels.py`` interface: forward returns a dict with ``out`` and
``features``), and the segmentation branch of the ad0afa8d version (5-stage encoder, attention +
deformable-conv augmentation from ``att_from``, U-Net / UNet3+ decoder in ``xmnet/unet3.py``).

Reference: xmnet.md §5 (classification), §6 (segmentation). Backbones are built by torchvision without
weights (never downloaded); ``load_pretrained`` reads a local torchvision state-dict file.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import DeformConv2d

from common.checkpoint import load_state_dict_strict, load_weights_file

_logger = logging.getLogger(__name__)

BACKBONES = ("densenet161", "resnet50", "resnet34", "resnet18", "vgg19", "mobilenet_v2", "mobilenet_v3_large",
             "inception_v3")
# MGANet mganet.py: children of ``.features`` whose 1-based position is below this are frozen
# (xmnet.md §5.1/§5.4: DenseNet's 9 freezes conv0 ... transition2, the first 8 children)
FREEZE_BELOW = {"densenet": 9, "resnet": 7, "mobilenet_v2": 11, "vgg19": 22}
FREEZE_BELOW_OTHERS = 10
ATTENTIONS = ("xmnet", "mmanet", "none")
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def freeze_threshold(backbone: str) -> int:
    """1-based position below which the children of ``.features`` are frozen (densenet 9, resnet 7,
    mobilenet_v2 11, vgg19 22, others 10): the first ``threshold - 1`` children."""
    for prefix, n in FREEZE_BELOW.items():
        if backbone.startswith(prefix):
            return n
    return FREEZE_BELOW_OTHERS


def build_features(name: str) -> nn.Sequential:
    """The backbone's convolutional part as a ``Sequential`` (its ``.features``), random init.

    DenseNet / VGG / MobileNet: torchvision's own ``.features``. ResNet: conv1, bn1, relu, maxpool,
    layer1..layer4 (torchvision names). Inception-v3: its blocks up to Mixed_7c (no AuxLogits / head).
    """
    if name not in BACKBONES:
        raise ValueError(f"--backbone_class: unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    if name == "inception_v3":
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        keep = [(k, m) for k, m in net.named_children() if k not in ("AuxLogits", "avgpool", "dropout", "fc")]
        return nn.Sequential(OrderedDict(keep))
    net = getattr(torchvision.models, name)(weights=None)
    if name.startswith("resnet"):
        keep = [(k, m) for k, m in net.named_children() if k not in ("avgpool", "fc")]
        return nn.Sequential(OrderedDict(keep))
    return net.features


def load_pretrained(features: nn.Sequential, name: str, path: str | Path) -> int:
    """Load ImageNet weights of torchvision model ``name`` from a local file into ``features``.

    Accepts a full torchvision state dict (``features.*`` / ResNet / Inception top-level keys; the
    classifier keys are ignored) or one of ``features`` itself. The feature keys must be exactly the
    model's, with their shapes (a deeper variant's file, e.g. resnet34 for resnet18, is refused).

    Returns:
        The number of tensors loaded.

    Raises:
        CheckpointError: missing file, unsafe pickle, or missing / mis-shaped keys (named).
    """
    raw = load_weights_file(path)
    raw = {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
    # torchvision's published DenseNet files use the old names 'denselayer1.norm.1.weight'; torchvision
    # renames them to 'denselayer1.norm1.weight' when loading, and so do we
    raw = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in raw.items()}
    own = features.state_dict()
    if any(k.startswith("features.") for k in raw):
        sd = {k[len("features."):]: v for k, v in raw.items() if k.startswith("features.")}
    else:  # a ResNet / Inception state dict: everything but the head belongs to the features
        sd = {k: v for k, v in raw.items() if not k.startswith(("fc.", "classifier.", "AuxLogits."))}
    # files saved before torch 0.4.1 have no BatchNorm counters: keep the model's
    sd.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in sd})
    load_state_dict_strict(features, sd, f"--pretrained_weights {path} (not {name} ImageNet weights)")
    return len(own)


@torch.no_grad()
def probe_stages(features: nn.Sequential, size: int = 224) -> tuple[list[int], list[int]]:
    """Split ``features`` at its spatial down-sampling points into 5 stages (xmnet.md §6.1).

    A 224x224 probe is run child by child; a child whose output is at most 0.75x the current stage's
    side starts a new stage (0.75 so that the 2-pixel shrink of Inception's unpadded convolutions is
    not a stage). Children before the first reduction (VGG's full-resolution convolutions) join the
    first stage; with more than 5 reductions the first stages are merged.

    Returns:
        (index of the last child of each of the 5 stages, channel width of each stage's output).
    """
    was = features.training
    features.eval()
    x = torch.zeros(1, 3, size, size)
    ref = size
    starts: list[int] = []
    widths: list[int] = []
    for i, child in enumerate(features):
        x = child(x)
        side = x.shape[-1]
        if side <= 0.75 * ref:
            starts.append(i)
            ref = side
        widths.append(x.shape[1])
    features.train(was)
    if len(starts) < 5:
        raise ValueError(f"backbone has only {len(starts)} down-sampling stages; the encoder needs 5")
    starts = [0] + starts[len(starts) - 4:]
    ends = [s - 1 for s in starts[1:]] + [len(features) - 1]
    return ends, [widths[e] for e in ends]


class XMNetAttention(nn.Module):
    """``--xmnet``: A = sigmoid(conv1x1_{2->1, no bias}([mean_c F, max_c F])); F' = 0.5 F + 0.5 A F."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=1, bias=False)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        desc = torch.cat([f.mean(1, keepdim=True), f.amax(1, keepdim=True)], dim=1)
        a = torch.sigmoid(self.conv(desc))
        return 0.5 * f + 0.5 * a * f, a


class MMANetAttention(nn.Module):
    """``--mmanet``: A = sigmoid(mean_c F); F' = 0.5 F + 0.5 A F."""

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(f.mean(1, keepdim=True))
        return 0.5 * f + 0.5 * a * f, a


class AttentionAugment(nn.Module):
    """Segmentation skip augmentation of one encoder level (xmnet.md §6.2): the level's output x (C
    channels) concatenated with sigmoid([mean_c x, max_c x]) (2 channels) and a 3x3 deformable
    convolution of x (C -> C//4 channels, offsets from a 3x3 conv with 18 = 2*3*3 outputs), giving
    C + 2 + C//4 channels. The encoder itself continues on the plain x (its weights are pretrained).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.out_deform = max(1, channels // 4)
        self.offset = nn.Conv2d(channels, 18, kernel_size=3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.deform = DeformConv2d(channels, self.out_deform, kernel_size=3, padding=1)
        self.out_channels = channels + 2 + self.out_deform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.sigmoid(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1))
        return torch.cat([x, att, self.deform(x, self.offset(x))], dim=1)


class XMNetModel(nn.Module):
    """Backbone + attention + classifier, optionally with the segmentation decoder.

    Args:
        backbone: one of ``BACKBONES``.
        num_classes: classifier outputs.
        attention: "xmnet", "mmanet" or "none" ("Original").
        segmentation: build the 5-stage encoder taps and a decoder.
        unet: U-Net decoder (else UNet3+).
        att_from: first encoder level (1-5) whose skip gets ``AttentionAugment``; 6 = none.
        fsds: the decoder also returns side outputs of levels 2-5 (full-scale deep supervision).

    ``forward(x)`` returns {"out": logits, "features": pooled attention-modulated vector, "att": A or
    None} and, with segmentation, "seg": [level-1 logits, level-2 ..., level-5] (one entry without fsds).
    """

    def __init__(self, backbone: str = "densenet161", num_classes: int = 200, *, attention: str = "xmnet",
                 segmentation: bool = False, unet: bool = True, att_from: int = 3, fsds: bool = False):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got '{attention}'")
        self.backbone_name = backbone
        self.features = build_features(backbone)
        ends, widths = probe_stages(self.features)
        self.stage_ends = ends
        self.num_features = widths[-1]
        self.attention_type = attention
        self.attention = {"xmnet": XMNetAttention, "mmanet": MMANetAttention}.get(attention, lambda: None)()
        self.relu_before_pool = backbone.startswith("densenet")
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.segmentation = segmentation
        self.seg_head = None
        if segmentation:
            from xmnet.unet3 import UNet3PlusDecoder, UNetDecoder

            if not 1 <= att_from <= 6:
                raise ValueError(f"--att_from must be 1..6 (6 = no augmentation), got {att_from}")
            augs = [AttentionAugment(c) if level >= att_from else nn.Identity()
                    for level, c in enumerate(widths, start=1)]
            skip_widths = [a.out_channels if isinstance(a, AttentionAugment) else c for a, c in zip(augs, widths)]
            decoder_cls = UNetDecoder if unet else UNet3PlusDecoder
            self.seg_head = nn.ModuleDict({"augment": nn.ModuleList(augs),
                                           "decoder": decoder_cls(skip_widths, deep_supervision=fsds)})

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps = []
        for i, child in enumerate(self.features):
            x = child(x)
            if i in self.stage_ends:
                taps.append(x)
        return x, taps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        f, taps = self.forward_stages(x)
        att = None
        if self.attention is not None:
            f, att = self.attention(f)
        if self.relu_before_pool:
            f = F.relu(f)
        pooled = torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)
        out: dict = {"out": self.classifier(pooled), "features": pooled, "att": att}
        if self.seg_head is not None:
            skips = [aug(t) for aug, t in zip(self.seg_head["augment"], taps)]
            out["seg"] = self.seg_head["decoder"](skips)
        return out

    # ------------------------------------------------------------------ freezing (xmnet.md §5.1, §7)
    def classification_modules(self) -> list[nn.Module]:
        return [m for m in (self.features, self.attention, self.classifier) if m is not None]

    def apply_freezing(self, *, freeze_all: bool) -> list[str]:
        """Freeze the children of ``features`` whose 1-based position is below the backbone's threshold
        (MGANet's rule: the first ``threshold - 1``; DenseNet-161: conv0 ... transition2) or, with
        ``freeze_all``, the whole classification network (features, attention, classifier).

        Returns:
            Names of the frozen children of ``features`` (all of them with ``freeze_all``).
        """
        threshold = freeze_threshold(self.backbone_name)
        frozen = []
        for pos, (name, child) in enumerate(self.features.named_children(), start=1):
            if freeze_all or pos < threshold:
                child.requires_grad_(False)
                frozen.append(name)
        if freeze_all:
            for m in self.classification_modules():
                m.requires_grad_(False)
        return frozen

    def eval_frozen_features(self) -> None:
        """Segmentation-only with ``--freeze_all``: BatchNorm / Dropout of ``features`` in eval mode."""
        for m in self.features.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout):
                m.eval()
