"""CHARM-Xray's plug-in for ``common.predict`` / ``common.explain`` / ``common.export``: any checkpoint
``test_checkpoint.py`` accepts (ours, fastai ``learn.save``, a plain or notebook-prefixed state dict),
rebuilt as ``charm_xray.evaluate.build_from_checkpoint`` does, in eval mode (the memory bank is read,
never written; the momentum branch is not updated). Grad-CAM on the last backbone stage (the online
final block; VGG16-LKA: LKA after block 5), the spatial-attention map as the model's own attention."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from charm_xray import config
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from common.predict import LoadedModel, PredictAdapter, read_checkpoint_any, register_adapter
from common.preprocessing import resolve_preprocessing


def preprocessing_from_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The test transform of ``train.py``: RGB (PIL ``convert``, 16-bit min-max scaled), Resize to
    ``--image_size`` on the PIL image, ImageNet normalisation; classes in ``DISEASE_LABELS`` order."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    size = a.get("image_size")
    return {"paper": "charm_xray", "input_size": [size, size] if size else None, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "channels": "rgb", "resize": "resize", "high_bit_depth": "min_max",
            "class_names": list(config.DISEASE_LABELS)}


def _run_dir(path: Path) -> Path:
    """``<output_dir>/models/final_<exp>.pth`` belongs to the run folder ``<output_dir>/runs/<exp>``."""
    for prefix in ("final_", "phase1_"):
        if path.parent.name == "models" and path.stem.startswith(prefix):
            return path.parent.parent / "runs" / path.stem[len(prefix):]
    return path.parent


class CharmAdapter(PredictAdapter):
    paper = "charm_xray"
    task = "multilabel"

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        args = ckpt.get("args")
        if isinstance(args, Mapping) and "bank_size" in args and "model_name" in args:
            return True
        state = ckpt.get("model") if isinstance(ckpt.get("model"), Mapping) else ckpt
        return any(str(k).endswith(("memory_bank.memory", "lka3.dw_conv1.weight")) for k in state)

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        from charm_xray.evaluate import build_from_checkpoint, read_checkpoint

        ckpt = read_checkpoint_any(path)
        if path.suffix == ".safetensors":
            state, recorded = ckpt["model"], dict(ckpt.get("args") or {})
        else:
            state, recorded = read_checkpoint(path)
        ns = argparse.Namespace()
        model = build_from_checkpoint(state, recorded, ns, f"--checkpoint {path}")
        # image_size: the recorded flag, else the config default build_from_checkpoint fell back to
        derived = preprocessing_from_args({"image_size": recorded.get("image_size")})
        prep = resolve_preprocessing(ckpt.get("preprocessing"), derived, f"--checkpoint {path}",
                                     fallback=fallback, hint="pass --image_size (the side it was trained at) for "
                                     "the original code's state dicts, which do not record it")
        return LoadedModel(model.to(device).eval(), prep, path, _run_dir(path),
                           {"thresholds": ckpt["thresholds"]} if "thresholds" in ckpt else {},
                           {"args": {**recorded, **{k: v for k, v in vars(ns).items()}}})

    def cam_layer(self, model: nn.Module) -> nn.Module:
        return model.final_block if hasattr(model, "final_block") else model.lka5

    def attention(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        if not hasattr(model, "forward_features"):
            return None
        _, att = model.forward_features(inputs[0])
        return [att[:, 0]]

    def attention_label(self) -> str:
        return "CHARM spatial attention"


ADAPTER = register_adapter(CharmAdapter())
