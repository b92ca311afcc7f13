"""CXR-LT 2026 Task 1 models: ConvNeXtV2 + BatchNorm2d + CSRA-style head, and the stage-1 MLP-head model.

Paper: H.-H. Pham et al., "Handling Supervision Scarcity in Chest X-ray Classification: Long-Tailed and
Zero-Shot Learning", arXiv 2602.13430 (2026); original code hieuphamha19/CXR_LT `Task1_Long_tailed/model.py`.

- ``ConvNeXtV2CXR``: timm ``convnextv2_base`` (num_classes 0, global_pool "", drop_path 0.2; timm still
  applies ``head.norm`` to the spatial map) -> ``bn`` BatchNorm2d -> ``head``. The default head is the
  seed's "CSRA" (separate 1x1 attention conv, bias in both terms, no temperature, lambda 0.1); the
  official CSRA / multi-head MHA (Zhu & Wu, ICCV 2021) is available with ``head="csra"``.
- ``StandardCXR``: the stage-1 architecture (global-average-pooled backbone -> BN1d -> Dropout ->
  Linear 1024->512 -> ReLU -> BN1d -> Dropout -> Linear 512->C, keys ``classifier.0`` ... ``classifier.6``).
- timm registration ``cxrlt2026_task1_csra_dbcas``; ``pretrained=True`` reads a *local* safetensors file
  (``weights=`` argument or ``$CXRLT2026_WEIGHTS``), never a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from common.checkpoint import load_state_dict_strict

CLASS_NAMES: tuple[str, ...] = (
    "Normal", "aortic elongation", "cardiomegaly", "pleural effusion", "Nodule", "atelectasis",
    "pleural thickening", "aortic atheromatosis", "Support Devices", "alveolar pattern", "fracture",
    "Hernia", "Emphysema", "azygos lobe", "Hydropneumothorax", "Kyphosis", "Mass", "Pneumothorax",
    "Subcutaneous Emphysema", "pneumoperitoneo", "vascular hilar enlargement",
    "vertebral degenerative changes", "hyperinflated lung", "interstitial pattern",
    "central venous catheter", "hypoexpansion", "bronchiectasis", "hemidiaphragm elevation",
    "sternotomy", "calcified densities",
)

# The 14 CheXpert-labeller columns of mimic-cxr-2.0.0-chexpert.csv, in file order.
MIMIC_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)

WEIGHTS_FILENAME = "convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors"
WEIGHTS_ENV = "CXRLT2026_WEIGHTS"
HEAD_TYPES = ("csra_dbcas", "csra")


class CSRAHead(nn.Module):
    """The seed's CSRA-style head: logit = classifier(GAP(x)) + lam * (<f_c, W_c> + b_c).

    f_c is the average of x over positions weighted by softmax_hw(conv_att(x)_c). Unlike the official CSRA
    the attention comes from a separate bias-free 1x1 conv, there is no temperature and no weight
    normalisation, and the classifier bias enters both terms (quirk 3 in the README).

    Args:
        input_dim: channels of the feature map.
        num_classes: number of outputs.
        lam: weight of the attention term.
    """

    def __init__(self, input_dim: int, num_classes: int, lam: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.lam = lam
        self.classifier = nn.Linear(input_dim, num_classes)
        self.conv_att = nn.Conv2d(input_dim, num_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit_gap = self.classifier(x.mean(dim=(2, 3)))
        att = self.conv_att(x).flatten(2).softmax(dim=-1)               # [B, C, HW]
        feats = torch.einsum("bkn,bdn->bkd", att, x.flatten(2))          # class-wise pooled [B, C, D]
        logit_csra = (feats * self.classifier.weight.unsqueeze(0)).sum(-1) + self.classifier.bias
        return logit_gap + self.lam * logit_csra


class OfficialCSRA(nn.Module):
    """Official CSRA head (Kevinz-code/CSRA ``pipeline/csra.py``): class scores from a bias-free 1x1 conv
    whose per-class weight is L2-normalised; base = mean over positions; attention = max (T == 99) or
    sum(score * softmax(T * score)); output base + lam * attention.
    """

    def __init__(self, input_dim: int, num_classes: int, T: float, lam: float):
        super().__init__()
        self.T = T
        self.lam = lam
        self.head = nn.Conv2d(input_dim, num_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(self.head.weight, dim=1, keepdim=True).transpose(0, 1)  # [1, C, 1, 1]
        score = (self.head(x) / norm).flatten(2)                                   # [B, C, HW]
        base = score.mean(dim=2)
        if self.T == 99:
            att = score.max(dim=2)[0]
        else:
            att = (score * F.softmax(score * self.T, dim=2)).sum(dim=2)
        return base + self.lam * att


MHA_TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1,), 2: (1, 99), 4: (1, 2, 4, 99), 6: (1, 2, 3, 4, 5, 99), 8: (1, 2, 3, 4, 5, 6, 7, 99),
}


class MHA(nn.Module):
    """Official multi-head CSRA: the sum of ``OfficialCSRA`` heads with the paper's temperature sets."""

    def __init__(self, num_heads: int, lam: float, input_dim: int, num_classes: int):
        super().__init__()
        if num_heads not in MHA_TEMPERATURES:
            raise ValueError(f"--num_heads {num_heads}: official CSRA supports {sorted(MHA_TEMPERATURES)} heads")
        self.multi_head = nn.ModuleList(
            OfficialCSRA(input_dim, num_classes, T, lam) for T in MHA_TEMPERATURES[num_heads]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for head in self.multi_head:
            out = out + head(x)
        return out


def timm_weights_hint(name: str) -> str:
    """One line: which file of which hub repository ``--pretrained_path`` takes for backbone ``name``."""
    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except (AttributeError, RuntimeError):
        hub_id = None
    where = f"https://huggingface.co/{hub_id}" if hub_id else f"the timm weights of {name}"
    return f"download model.safetensors from {where} and pass --pretrained_path PATH/TO/model.safetensors"


def _backbone(name: str, pretrained: bool | str | Path | None, drop_path_rate: float, global_pool: str) -> nn.Module:
    """timm backbone; ``pretrained`` is a local timm weights file (never a hub download) or False/None."""
    if pretrained is True:
        raise ValueError(f"--model {name}: pretrained backbone weights come from a local file: "
                         f"{timm_weights_hint(name)}")
    kwargs: dict = {}
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained_path: weights file not found: {path} ({timm_weights_hint(name)})")
        # timm reads pretrained_cfg["file"] before any hub source, with the model's own key filter
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path), "source": ""}}
    try:
        return timm.create_model(name, num_classes=0, drop_path_rate=drop_path_rate, global_pool=global_pool,
                                 **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model", a file of another architecture
        raise ValueError(f"--model {name}: cannot build the backbone (pretrained={pretrained}): {exc}") from None


class ConvNeXtV2CXR(nn.Module):
    """Stage-2 / released model: backbone (spatial map) -> BatchNorm2d -> CSRA head.

    Args:
        num_classes: outputs (30 for CXR-LT 2026 Task 1).
        backbone: timm model name (``convnextv2_base`` in the original; tiny variants for tests).
        pretrained_backbone: a local timm weights file for the backbone (the original training lets timm
            download its default ImageNet weights; here nothing is downloaded), or False for random weights.
        drop_path_rate: stochastic depth of the backbone (0.2).
        head: ``csra_dbcas`` (the seed's head) or ``csra`` (official CSRA / MHA).
        lam: attention weight lambda (0.1).
        num_heads: heads of the official MHA (only with ``head="csra"``).
    """

    def __init__(self, num_classes: int = 30, *, backbone: str = "convnextv2_base",
                 pretrained_backbone: bool | str | Path | None = False, drop_path_rate: float = 0.2, head: str = "csra_dbcas",
                 lam: float = 0.1, num_heads: int = 1):
        super().__init__()
        self.backbone = _backbone(backbone, pretrained_backbone, drop_path_rate, "")
        nf = self.backbone.num_features
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(nf)
        if head == "csra_dbcas":
            self.head = CSRAHead(nf, num_classes, lam=lam)
        elif head == "csra":
            self.head = MHA(num_heads, lam, nf, num_classes)
        else:
            raise ValueError(f"unknown head '{head}' (choose from {', '.join(HEAD_TYPES)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.backbone(x)))


class StandardCXR(nn.Module):
    """Stage-1 model (the original ``inference.py`` "standard" class): pooled features -> MLP head.

    Args:
        num_classes: outputs (14 on MIMIC-CXR).
        backbone / pretrained_backbone / drop_path_rate: as for ``ConvNeXtV2CXR``.
        dropout: rate of both Dropout layers (0.3).
    """

    def __init__(self, num_classes: int = 14, *, backbone: str = "convnextv2_base",
                 pretrained_backbone: bool | str | Path | None = False, drop_path_rate: float = 0.2, dropout: float = 0.3):
        super().__init__()
        self.backbone = _backbone(backbone, pretrained_backbone, drop_path_rate, "avg")
        nf = self.backbone.num_features
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(nf), nn.Dropout(dropout), nn.Linear(nf, 512), nn.ReLU(inplace=True),
            nn.BatchNorm1d(512), nn.Dropout(dropout), nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters trained in the head warm-up (everything outside ``backbone``)."""
    return [n for n, _ in model.named_parameters() if "backbone" not in n]


def reset_csra_head(model: ConvNeXtV2CXR) -> None:
    """Initialise a fresh head as ``load_pretrained_and_surgery`` does: Xavier-uniform weights, zero bias."""
    for name, p in model.head.named_parameters():
        if name.endswith("weight"):
            nn.init.xavier_uniform_(p)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def state_dict_param_count(model: nn.Module) -> int:
    """Elements in the state dict (parameters + buffers): the model card's "Total parameters"."""
    return sum(t.numel() for t in model.state_dict().values())


def resolve_weights_path(weights: str | Path | None, *, flag: str = "weights=") -> Path:
    """The local weights file for ``pretrained=True``: the argument, else ``$CXRLT2026_WEIGHTS``.

    Args:
        weights: a file, a folder holding the released file name, or None.
        flag: how the caller's argument is named in messages (``weights=`` or a CLI flag).

    Raises:
        FileNotFoundError: neither is given, or the file does not exist (the message names it).
    """
    source = flag
    if weights is None:
        weights, source = os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}"
    if not weights:
        raise FileNotFoundError(
            f"a local weights file is needed: pass {flag}{'' if flag.endswith('=') else ' '}PATH or set "
            f"${WEIGHTS_ENV} (e.g. to {WEIGHTS_FILENAME}); no hub download is attempted"
        )
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{source}: weights file not found: {path}")
    return path


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file (.safetensors, or a checkpoint with model / model_state_dict) strictly."""
    from common.checkpoint import load_weights_file

    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_weights_file(path)
    else:
        from common.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        state = extract_state_dict(ckpt, path)
    load_state_dict_strict(model, state, str(path))


def extract_state_dict(ckpt: dict, path: str | Path, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint dict.

    Args:
        ckpt: a loaded checkpoint: the original's (``model_state_dict``, which holds EMA weights), one
            written by ``common.engine.fit`` (``model`` and, when EMA was used, ``ema``), or a bare
            state dict.
        path: the file it came from, quoted in errors.
        use_ema: for ``fit`` checkpoints take the EMA weights when present (what the original saves).

    Returns:
        The model state dict.
    """
    if "model_state_dict" in ckpt:
        return ckpt["model_state_dict"]
    ema = ckpt.get("ema")
    if use_ema and isinstance(ema, dict) and any(k.startswith("module.") for k in ema):
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    if isinstance(ckpt.get("model"), dict):
        return ckpt["model"]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise ValueError(f"{path}: no model weights found (looked for model_state_dict, ema, model, a bare state dict)")


@register_model
def cxrlt2026_task1_csra_dbcas(pretrained: bool = False, weights: str | Path | None = None,
                               num_classes: int = 30, pretrained_cfg=None, pretrained_cfg_overlay=None,
                               cache_dir=None, **kwargs) -> ConvNeXtV2CXR:
    """ConvNeXtV2-Base + BN + CSRA head of the CXR-LT 2026 Task 1 winner (87,756,318 parameters).

    ``pretrained=True`` loads ``weights`` (a safetensors file or a folder holding
    ``convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors``) or ``$CXRLT2026_WEIGHTS`` strictly.
    Other keyword arguments go to ``ConvNeXtV2CXR`` (``backbone=`` may name a smaller ConvNeXt-V2).
    """
    kwargs.setdefault("pretrained_backbone", False)
    model = ConvNeXtV2CXR(num_classes=num_classes, **kwargs)
    if pretrained:
        load_model_weights(model, resolve_weights_path(weights))
    return model


def _log_load(path: Path, loaded: int, skipped: list[str]) -> None:
    import logging

    logging.getLogger(__name__).info("%s: loaded %d tensors, skipped %d (%s%s)", path, loaded, len(skipped),
                                     ", ".join(skipped[:6]), ", ..." if len(skipped) > 6 else "")


def load_pretrained_and_surgery(model: ConvNeXtV2CXR, path: str | Path, *,
                                keep_backbone_head_norm: bool = False) -> list[str]:
    """Stage-2 initialisation from a stage-1 checkpoint (reference cxrlt.md 5.4).

    Keys containing ``classifier`` or ``head`` and keys whose shape differs are dropped, the rest loaded
    non-strictly; the new head gets Xavier-uniform weights and zero bias. The substring filter also drops
    ``backbone.head.norm.*`` (quirk 10) unless ``keep_backbone_head_norm``.

    Returns:
        The dropped keys.

    Raises:
        ValueError: no backbone tensor matched (wrong file or backbone), naming the file.
    """
    from common.checkpoint import load_checkpoint

    path = Path(path)
    state = extract_state_dict(load_checkpoint(path), path)
    own = model.state_dict()
    keep, skipped = {}, []
    for k, v in state.items():
        dropped_by_name = "classifier" in k or "head" in k
        if keep_backbone_head_norm and k.startswith("backbone.head.norm."):
            dropped_by_name = False
        if dropped_by_name or k not in own or own[k].shape != v.shape:
            skipped.append(k)
        else:
            keep[k] = v
    if not any(k.startswith("backbone.") for k in keep):
        raise ValueError(f"--pretrained_checkpoint {path}: no backbone weight matches the model "
                           f"(is it a stage-1 checkpoint of the same --model?)")
    model.load_state_dict(keep, strict=False)
    reset_csra_head(model)
    _log_load(path, len(keep), skipped)
    return skipped


def load_resume_weights(model: ConvNeXtV2CXR, path: str | Path) -> bool:
    """The original RESUME_CHECKPOINT weight loading (reference cxrlt.md 5.4).

    An old MLP-head checkpoint (``classifier.0.weight`` but no ``head.classifier.weight``) keeps its
    ``backbone.*`` and its first BatchNorm1d (``classifier.0.*``) as ``bn.*``; the head is re-initialised
    and the warm-up must run. Any other checkpoint is loaded strictly and the warm-up is skipped.

    Returns:
        True when the warm-up should be skipped.
    """
    from common.checkpoint import load_checkpoint

    path = Path(path)
    state = extract_state_dict(load_checkpoint(path), path)
    if "classifier.0.weight" in state and "head.classifier.weight" not in state:
        keep = {k: v for k, v in state.items() if k.startswith("backbone.")}
        keep.update({"bn." + k[len("classifier.0."):]: v for k, v in state.items() if k.startswith("classifier.0.")})
        load_state_dict_strict(model, keep, f"--resume_checkpoint {path}", allow_missing=True)
        reset_csra_head(model)
        _log_load(path, len(keep), sorted(set(state) - set(k for k in state if k.startswith(("backbone.", "classifier.0.")))))
        return False
    load_state_dict_strict(model, state, f"--resume_checkpoint {path}")
    return True
