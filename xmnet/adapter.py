"""XMNet's plug-in for ``common.predict`` / ``common.explain`` / ``common.export``: ``best_model.pth``
(the original's ``{"net": ...}``; its flags from the file, or from the run's ``args.json`` beside it for
files written before they were recorded) or a training checkpoint (``checkpoint_best.pth``), rebuilt as
``Train.py`` builds the model. Test-time input as ``leafvein2.py``'s test split: RGB, ImageNet
normalisation, zero-padding to ``--crop_size`` and the centre window (no resize). Outputs the class
probabilities and, for segmentation models, the vein mask (decoder level 1, bilinear to the input,
p > 0.5). Grad-CAM on the backbone's last stage; the attention map A (XMNet / MMANet) as the model's own."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import CheckpointError
from common.predict import LoadedModel, PredictAdapter, read_checkpoint_any, register_adapter
from common.preprocessing import resolve_preprocessing
from xmnet.leafvein2 import IMAGENET_MEAN, IMAGENET_STD


def preprocessing_from_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The test transform of ``Train.py``; classes are named ``class_<labels.pkl value>`` (1-based)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    crop, k = a.get("crop_size"), a.get("num_classes")
    return {"paper": "xmnet", "input_size": [crop, crop] if crop else None, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "channels": "rgb", "resize": "pad_center_crop", "high_bit_depth": "min_max",
            "class_names": [f"class_{i + 1}" for i in range(k)] if k else None}


def _vein_probability(seg: torch.Tensor) -> torch.Tensor:
    seg = seg.float()
    return torch.sigmoid(seg[:, 0]) if seg.shape[1] == 1 else seg.softmax(1)[:, 1]


class _ExportXMNet(nn.Module):
    """Tensors only: the classification logits and, with a decoder, the level-1 vein logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        return (out["out"], out["seg"][0]) if out.get("seg") else out["out"]


class XMNetAdapter(PredictAdapter):
    paper = "xmnet"
    task = "multiclass"

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        args = ckpt.get("args")
        return "net" in ckpt or (isinstance(args, Mapping) and "backbone_class" in args and "seg_included" in args)

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        from common.checkpoint import load_state_dict_strict
        from xmnet.backboneModels import XMNetModel
        from xmnet.engine_xmnet import attention_of

        ckpt = read_checkpoint_any(path)
        state = ckpt.get("net", ckpt.get("model"))
        if not isinstance(state, Mapping):
            raise CheckpointError(f"--checkpoint {path}: no state dict under 'net' or 'model'")
        recorded = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else None
        if recorded is None and (path.parent / "args.json").is_file():
            recorded = json.loads((path.parent / "args.json").read_text(encoding="utf-8"))
        if recorded is None:
            raise CheckpointError(f"--checkpoint {path}: no training flags recorded (in the file or an args.json beside "
                                  "it): cannot rebuild the model (backbone_class, num_classes, seg_included, ...) or "
                                  "its preprocessing (input_size, class_names)")
        from xmnet.Train import get_args_parser

        a = argparse.Namespace(**{**vars(get_args_parser().parse_args([])), **recorded})
        prep = resolve_preprocessing(ckpt.get("preprocessing"), preprocessing_from_args(a), f"--checkpoint {path}",
                                     fallback=fallback)
        model = XMNetModel(a.backbone_class, a.num_classes, attention=attention_of(a), segmentation=a.seg_included,
                           unet=a.unet, att_from=a.att_from, fsds=a.fsds)
        load_state_dict_strict(model, dict(state), f"--checkpoint {path} (flags: backbone {a.backbone_class}, "
                               f"{a.num_classes} classes, segmentation {a.seg_included})")
        return LoadedModel(model.to(device).eval(), prep, path, path.parent,
                           {"thresholds": ckpt["thresholds"]} if "thresholds" in ckpt else {},
                           {"args": dict(recorded), "masks": bool(a.seg_included)})

    def forward(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(inputs[0])
        result = {"logits": out["out"]}
        if out.get("seg"):
            prob = _vein_probability(out["seg"][0])
            result["masks"] = F.interpolate(prob[:, None], size=inputs[0].shape[-2:], mode="bilinear",
                                            align_corners=False)[:, 0]
        return result

    def cam_layer(self, model: nn.Module) -> nn.Module:
        return model.features.features[-1]  # the last block of the backbone's convolutional part

    def attention(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        att = model(inputs[0]).get("att")
        return None if att is None else [att.float().mean(1)]

    def attention_label(self) -> str:
        return "attention map A"

    def export_module(self, model: nn.Module) -> nn.Module:
        return _ExportXMNet(model)

    def export_output_names(self, model: nn.Module) -> list[str]:
        return ["logits", "vein_logits"] if getattr(model, "segmentation", False) else ["logits"]


ADAPTER = register_adapter(XMNetAdapter())
