"""XMNet networks: a torchvision backbone with the XMNet / MMANet spatial attention for classification
(first-commit dbdd99e ``backboneModels.py`` interface: forward returns a dict with ``out`` and
``features``) and the segmentation branch (5-stage encoder, attention-augmented skips from
``att_from``, U-Net / UNet3+ decoder).

The module tree, and so every state-dict key, is the original's (HEAD ``XMNET`` / ad0afa8d ``MMANET``):
``features.features.*`` (the backbone's ``.features``; ResNet: its children 0-7), ``features.classifier.*``
and ``classifier.*`` (one module under two names, as the original), ``attention.weight`` (always
present), and with segmentation ``Encoders.{1..5}.*`` (slices of ``features.features``), the skip
modules ``atten_layers.{1..5}`` (+ ``offset_layers`` for the ad0afa8d variant), ``center`` and
``decoder_layers.{1..5}.layers.*``. An original checkpoint's ``net`` entry loads strictly.

``seg_arch`` picks the segmentation branch:

* ``head`` (default; HEAD 3563a4e ``get_encoder_ops``): from level ``att_from`` on, skip =
  0.5 x + 0.5 A x with A = sigmoid(conv1x1_{2->1}([mean_c x, max_c x])), one conv per level.
* ``ad0afa8d``: skip = [x, sigmoid([mean_c x, max_c x]), deform_conv3x3(x)] (C + 2 + C/4 channels).
* ``compact``: this project's earlier variant (ad0afa8d skips, decoders of fixed widths 16-256 with
  3x3 side heads, ``seg_head.*`` keys).

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
# children of ``.features`` whose 1-based position is below this are frozen (xmnet ``_freeze_layers``:
# densenet 9, resnet 7, the MobileNet branch 11 for v2 and v3; vgg19 22 and others 10 from MGANet, whose
# xmnet branches crash). DenseNet's 9 freezes conv0 ... transition2, the first 8 children.
FREEZE_BELOW = {"densenet": 9, "resnet": 7, "mobilenet": 11, "vgg19": 22}
FREEZE_BELOW_OTHERS = 10
ATTENTIONS = ("xmnet", "mmanet", "none")
SEG_ARCHS = ("head", "ad0afa8d", "compact")
# the original's segmentation outputs are at level-1 resolution and the U-Net decoders follow the encoder widths
_ORIGINAL_DECODERS = ("head", "ad0afa8d")
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

    DenseNet / VGG / MobileNet: torchvision's own ``.features``. ResNet: ``Sequential(*children[:-2])``
    as the original (children 0-7 = conv1, bn1, relu, maxpool, layer1..layer4). Inception-v3: its blocks
    up to Mixed_7c (no AuxLogits / head; not in the original, whose Inception branch crashes).
    """
    if name not in BACKBONES:
        raise ValueError(f"--backbone_class: unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    if name == "inception_v3":
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        keep = [(k, m) for k, m in net.named_children() if k not in ("AuxLogits", "avgpool", "dropout", "fc")]
        return nn.Sequential(OrderedDict(keep))
    net = getattr(torchvision.models, name)(weights=None)
    if name.startswith("resnet"):
        return nn.Sequential(*[m for k, m in net.named_children() if k not in ("avgpool", "fc")])
    return net.features


def _resnet_child_index() -> dict[str, str]:
    """torchvision ResNet child name -> position in the original's ``Sequential(*children[:-2])``."""
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return {n: str(i) for i, n in enumerate(names)}


def resnet_key_to_index(key: str) -> str:
    """``layer1.0.conv1.weight`` -> ``4.0.conv1.weight`` (torchvision name -> the original's index)."""
    head, _, rest = key.partition(".")
    idx = _resnet_child_index().get(head)
    return f"{idx}.{rest}" if idx is not None else key


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
        if name.startswith("resnet"):
            sd = {resnet_key_to_index(k): v for k, v in sd.items()}
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


def attention_map(f: torch.Tensor, kind: str, conv: nn.Conv2d) -> torch.Tensor:
    """A (B x 1 x H x W): "xmnet" = sigmoid(conv1x1_{2->1}([mean_c F, max_c F])), "mmanet" =
    sigmoid(mean_c F) (xmnet.md §5.2)."""
    if kind == "xmnet":
        return torch.sigmoid(conv(mean_max(f)))
    return torch.sigmoid(f.mean(1, keepdim=True))


def mean_max(x: torch.Tensor) -> torch.Tensor:
    """[mean_c x, max_c x] (B x 2 x H x W)."""
    return torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)


def modulate(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The original's ``getAttFeats``: 0.5 x + 0.5 A x (A never fully suppresses a location)."""
    return 0.5 * x + 0.5 * (a * x)


class BackboneEncoder(nn.Module):
    """The original's ``DensenetEncoder`` / ``ResNetEncoder`` / ``MobileNet`` wrapper: ``.features`` (the
    convolutional part) and ``.classifier`` (Linear; MobileNet: Dropout(0.2) + Linear as the original)."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.features = build_features(backbone)
        ends, widths = probe_stages(self.features)
        self.stage_ends, self.stage_widths = ends, widths
        if backbone.startswith("mobilenet"):
            self.classifier: nn.Module = nn.Sequential(nn.Dropout(0.2), nn.Linear(widths[-1], num_classes))
        else:
            self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class AttentionAugment(nn.Module):
    """``--seg_arch compact`` skip augmentation of one encoder level: the level's output x (C channels)
    concatenated with sigmoid([mean_c x, max_c x]) (2 channels) and a 3x3 deformable convolution of x
    (C -> C//4 channels, offsets from a 3x3 conv with 18 = 2*3*3 outputs, zero-initialised), giving
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
        att = torch.sigmoid(mean_max(x))
        return torch.cat([x, att, self.deform(x, self.offset(x))], dim=1)


class XMNetModel(nn.Module):
    """Backbone + attention + classifier, optionally with the segmentation decoder; the original's
    module tree (see the module docstring for the key names).

    Args:
        backbone: one of ``BACKBONES``.
        num_classes: classifier outputs.
        attention: "xmnet", "mmanet" or "none" ("Original"). ``attention.weight`` exists for every
            type (the original creates it always); it is used, and trained, with "xmnet" only.
        segmentation: build the encoder slices, skip modules and a decoder.
        unet: U-Net decoder (else UNet3+).
        att_from: first encoder level (1-5) whose skip is augmented; 6 = none.
        fsds: return the side outputs of decoder levels 2-5 too (full-scale deep supervision).
        seg_arch: "head" (default), "ad0afa8d" or "compact" (see the module docstring).

    ``forward(x)`` returns {"out": logits, "features": pooled attention-modulated vector, "att": A or
    None} and, with segmentation, "seg": [level-1 logits, side outputs 2..5] (one entry without fsds).
    """

    def __init__(self, backbone: str = "densenet161", num_classes: int = 200, *, attention: str = "xmnet",
                 segmentation: bool = False, unet: bool = True, att_from: int = 3, fsds: bool = False,
                 seg_arch: str = "head"):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got '{attention}'")
        if seg_arch not in SEG_ARCHS:
            raise ValueError(f"--seg_arch must be one of {SEG_ARCHS}, got '{seg_arch}'")
        self.backbone_name = backbone
        self.features = BackboneEncoder(backbone, num_classes)
        self.classifier = self.features.classifier  # the same module under the original's second name
        self.attention = nn.Conv2d(2, 1, kernel_size=1, bias=False)
        ends, widths = self.features.stage_ends, self.features.stage_widths
        self.stage_ends = ends
        self.num_features = widths[-1]
        self.attention_type = attention
        self.relu_before_pool = backbone.startswith("densenet")
        self.segmentation, self.unet, self.att_from, self.fsds = segmentation, unet, att_from, fsds
        self.seg_arch = seg_arch
        self.seg_head = None
        self._inert: list[nn.Module] = []  # modules the forward never uses (no gradient in the original either)
        if attention != "xmnet":
            self._inert.append(self.attention)
        if not segmentation:
            self._freeze_inert()
            return
        if not 1 <= att_from <= 6:
            raise ValueError(f"--att_from must be 1..6 (6 = no augmentation), got {att_from}")
        from xmnet import unet3

        if seg_arch == "compact":
            augs = [AttentionAugment(c) if level >= att_from else nn.Identity()
                    for level, c in enumerate(widths, start=1)]
            skip_widths = [a.out_channels if isinstance(a, AttentionAugment) else c for a, c in zip(augs, widths)]
            decoder_cls = unet3.UNetDecoder if unet else unet3.UNet3PlusDecoder
            self.seg_head = nn.ModuleDict({"augment": nn.ModuleList(augs),
                                           "decoder": decoder_cls(skip_widths, deep_supervision=fsds)})
            self._freeze_inert()
            return
        feats = self.features.features
        starts = [0] + [e + 1 for e in ends[:-1]]
        self.Encoders = nn.ModuleDict({str(level): feats[s:e + 1]
                                       for level, (s, e) in enumerate(zip(starts, ends), start=1)})
        if seg_arch == "head":
            self.atten_layers = nn.ModuleDict({str(i): nn.Conv2d(2, 1, kernel_size=1, bias=False) for i in range(1, 6)})
            skip_widths = list(widths)
        else:  # ad0afa8d: a deformable conv C -> int(0.25 C), offsets from a 3x3 conv with 18 outputs
            self.atten_layers = nn.ModuleDict({str(i): DeformConv2d(c, int(c * 0.25), kernel_size=3, padding=1)
                                               for i, c in enumerate(widths, start=1)})
            self.offset_layers = nn.ModuleDict({str(i): nn.Conv2d(c, 18, kernel_size=3, padding=1)
                                                for i, c in enumerate(widths, start=1)})
            skip_widths = [c + 2 + int(c * 0.25) if i >= att_from else c for i, c in enumerate(widths, start=1)]
        for i in range(1, min(att_from, 6)):
            self._inert.append(self.atten_layers[str(i)])
            if seg_arch == "ad0afa8d":
                self._inert.append(self.offset_layers[str(i)])
        # the original sizes the centre for an augmented level 5 (ad0afa8d: int(1.25 C5 + 2)); with
        # --att_from 6 its input is the plain level 5 (the original crashed there)
        self.center = nn.Conv2d(skip_widths[4], widths[4], kernel_size=3, padding=1)
        level_cls = unet3.UNetDecoderLevel if unet else unet3.UNet3PlusDecoderLevel
        self.decoder_layers = nn.ModuleDict({str(level): level_cls(level, widths, skip_widths)
                                             for level in range(1, 6)})
        if not unet:  # UNet3+ level 5 reads only the encoder: the centre's output is unused (as the original)
            self._inert.append(self.center)
        self._freeze_inert()

    def _freeze_inert(self) -> None:
        for m in self._inert:
            m.requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's output and the output of each of its 5 encoder levels (one pass)."""
        taps = []
        for i, child in enumerate(self.features.features):
            x = child(x)
            if i in self.stage_ends:
                taps.append(x)
        return x, taps

    def skips(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's skips: level ``l >= att_from`` augmented (HEAD: 0.5 x + 0.5 A x with A from
        ``atten_layers[l]``; ad0afa8d: [x, sigmoid([mean, max]), deform_conv(x)]), others plain."""
        out = []
        for level, x in enumerate(taps, start=1):
            if level < self.att_from:
                out.append(x)
            elif self.seg_arch == "head":
                out.append(modulate(x, torch.sigmoid(self.atten_layers[str(level)](mean_max(x)))))
            else:
                deform = self.atten_layers[str(level)](x, self.offset_layers[str(level)](x))
                out.append(torch.cat([x, torch.sigmoid(mean_max(x)), deform], dim=1))
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        f, taps = self.forward_stages(x)
        att = None
        if self.attention_type != "none":
            att = attention_map(f, self.attention_type, self.attention)
            f = modulate(f, att)
        if self.relu_before_pool:
            f = F.relu(f)
        pooled = torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)
        out: dict = {"out": self.classifier(pooled), "features": pooled, "att": att}
        if not self.segmentation:
            return out
        if self.seg_head is not None:
            skips = [aug(t) for aug, t in zip(self.seg_head["augment"], taps)]
            out["seg"] = self.seg_head["decoder"](skips)
            return out
        skips = self.skips(taps)
        d = self.center(skips[4])
        levels: dict[int, torch.Tensor] = {}
        for level in range(5, 0, -1):
            d = self.decoder_layers[str(level)](skips, d)
            levels[level] = d
        seg = [levels[1]]
        if self.fsds:  # the original's side outputs: the channel mean of decoder levels 2-5
            seg += [levels[level].mean(1, keepdim=True) for level in range(2, 6)]
        out["seg"] = seg
        return out

    # ------------------------------------------------------------------ freezing (xmnet.md §5.1, §7)
    def classification_modules(self) -> list[nn.Module]:
        return [self.features, self.attention, self.classifier]

    def apply_freezing(self, *, freeze_all: bool) -> list[str]:
        """Freeze the children of ``features.features`` whose 1-based position is below the backbone's
        threshold (the original's rule: the first ``threshold - 1``; DenseNet-161: conv0 ... transition2)
        or, with ``freeze_all``, the whole classification network (features, attention, classifier).

        Returns:
            Names of the frozen children of ``features.features`` (all of them with ``freeze_all``).
        """
        threshold = freeze_threshold(self.backbone_name)
        frozen = []
        for pos, (name, child) in enumerate(self.features.features.named_children(), start=1):
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


def upgrade_legacy_keys(state: dict[str, torch.Tensor], model: XMNetModel) -> dict[str, torch.Tensor]:
    """A state dict of this project's earlier layout (``features.<child>``, ``attention.conv.weight``,
    ``classifier.*`` once) in the original's names; other state dicts are returned unchanged."""
    if any(k.startswith(("features.features.", "features.classifier.")) for k in state):
        return state
    if not any(k.startswith("features.") for k in state):
        return state
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("features."):
            rest = k[len("features."):]
            if model.backbone_name.startswith("resnet"):
                rest = resnet_key_to_index(rest)
            out["features.features." + rest] = v
        elif k == "attention.conv.weight":
            out["attention.weight"] = v
        elif k.startswith("classifier."):
            rest = k[len("classifier."):]
            if model.backbone_name.startswith("mobilenet") and not rest.startswith("1."):
                rest = "1." + rest
            out["classifier." + rest] = v
            out["features.classifier." + rest] = v
        else:
            out[k] = v
    own = model.state_dict()
    if "attention.weight" not in out and "attention.weight" in own:  # mmanet / none had no conv
        out["attention.weight"] = own["attention.weight"]
    return out
