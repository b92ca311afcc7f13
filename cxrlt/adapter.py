"""CXR-LT's plug-in for ``common.predict`` / ``common.explain`` / ``common.export``: any checkpoint
``inference.py`` accepts (ours, the original's ``model_state_dict``, a weights-only safetensors), the
architecture read from the weights' keys (``cxrlt.inference.load_any_model``), EMA weights of our
training checkpoints. Images are read as the model card's ``predict()`` does: grey (colour -> luma),
16-bit percentile-rescaled as the original training, resized bilinearly without antialiasing (OpenCV
``INTER_LINEAR``) to 3 identical channels, ImageNet normalisation. Grad-CAM on the ConvNeXt-V2's last
stage."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.predict import LoadedModel, PredictAdapter, read_checkpoint_any, register_adapter
from common.preprocessing import resolve_preprocessing
from cxrlt.data import IMAGENET_MEAN, IMAGENET_STD
from cxrlt.model import CLASS_NAMES

DEFAULT_BACKBONE = "convnextv2_base"


def preprocessing_from_args(args: argparse.Namespace | Mapping[str, Any],
                            class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The evaluation transform of the stage trainers (``cxrlt.data.EvalTransform``) at ``--image_size``."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    size = a.get("image_size")
    return {"paper": "cxrlt", "input_size": [size, size] if size else None, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "channels": "gray", "resize": "resize_cv2", "high_bit_depth": "percentile",
            "class_names": list(class_names) if class_names else None, "backbone": a.get("model")}


def _class_names(run_dir: Path, k: int) -> list[str] | None:
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        names = json.loads(metrics.read_text(encoding="utf-8")).get("class_names")
        if isinstance(names, list) and len(names) == k:
            return names
    # the Task-1 label order is the contract of the released 30-class head
    return list(CLASS_NAMES) if k == len(CLASS_NAMES) else None


class CxrltAdapter(PredictAdapter):
    paper = "cxrlt"
    task = "multilabel"

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        if "model_state_dict" in ckpt:
            return True
        state = ckpt.get("model") if isinstance(ckpt.get("model"), Mapping) else ckpt
        return any(str(k).startswith(("head.classifier", "head.multi_head.", "classifier.6.")) for k in state)

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        from cxrlt.inference import load_any_model

        ckpt = read_checkpoint_any(path)
        fallback = dict(fallback or {})
        fallback_backbone = fallback.pop("backbone", None)
        recorded = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else {}
        stored = ckpt.get("preprocessing") if isinstance(ckpt.get("preprocessing"), Mapping) else None
        backbone = (stored or {}).get("backbone") or recorded.get("model") or fallback_backbone or DEFAULT_BACKBONE
        model = load_any_model(path, backbone)
        k = model.num_classes
        derived = preprocessing_from_args(recorded, _class_names(path.parent, k))
        prep = resolve_preprocessing(stored, derived, f"--checkpoint {path}", fallback=fallback,
                                     hint="pass --image_size for the original code's files, which do not "
                                          "record it (the released model: --image_size 512)")
        return LoadedModel(model.to(device).eval(), prep, path, path.parent,
                           {"thresholds": ckpt["thresholds"]} if "thresholds" in ckpt else {},
                           {"args": {**dict(recorded), "model": backbone}})

    def cam_layer(self, model: nn.Module) -> nn.Module:
        return model.backbone.stages[-1]


ADAPTER = register_adapter(CxrltAdapter())
