"""DvXray's plug-in for ``common.predict`` / ``common.explain`` / ``common.export``: the dual-view model
rebuilt from a checkpoint's stored ``args`` (EMA weights when present, the CoordAtt-U signal restored,
as ``eval_only.py`` does), the OL / SD pairing of the DvXray file naming (``<ID>_OL.png`` +
``<ID>_SD.png``), Grad-CAM on the backbone's last stage for both views, the N3 CoordAtt-U map as the
model's own attention, and a two-input export."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.checkpoint import CheckpointError
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from common.predict import LoadedModel, PredictAdapter, read_checkpoint_any, register_adapter
from common.preprocessing import resolve_preprocessing

_VIEW = re.compile(r"^(?P<id>.+)_(?P<view>OL|SD)$", re.IGNORECASE)


def preprocessing_from_args(args: argparse.Namespace | Mapping[str, Any],
                            class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The evaluation transform of ``main_finetune.py``: RGB, Resize(input_size) on the PIL image, ImageNet
    normalisation (``common.data.transforms.build_eval_transform``)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    size = a.get("input_size")
    return {"paper": "dvxray", "input_size": [size, size] if size else None, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "channels": "rgb", "resize": "resize", "high_bit_depth": "min_max",
            "class_names": list(class_names) if class_names else None}


def _class_names(args: Mapping[str, Any], run_dir: Path) -> list[str] | None:
    """Older checkpoints: the ``--classes_file`` as recorded (relative to where training ran: tried from
    the current folder), else ``class_names`` in the run's metrics.json."""
    from dvxray.datasets import read_classes

    classes_file = args.get("classes_file")
    if classes_file and Path(classes_file).is_file():
        return read_classes(classes_file, args["num_classes"])
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        names = json.loads(metrics.read_text(encoding="utf-8")).get("class_names")
        if isinstance(names, list) and len(names) == args.get("num_classes"):
            return names
    return None


class DvXrayAdapter(PredictAdapter):
    paper = "dvxray"
    task = "multilabel"
    views = ("image_OL", "image_SD")

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        args = ckpt.get("args")
        return isinstance(args, Mapping) and "fuse_mode" in args and "head_type" in args

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        from dvxray.engine_finetune import build_model_from_args
        from dvxray.eval_only import _ema_weights, load_eval_weights
        from dvxray.main_finetune import get_args_parser

        ckpt = read_checkpoint_any(path)
        recorded = ckpt.get("args")
        if not isinstance(recorded, Mapping) or "model" not in recorded:
            raise CheckpointError(f"--checkpoint {path}: no training 'args' stored; cannot rebuild the DvXray model")
        train_args = {**vars(get_args_parser().parse_args([])), **recorded}
        derived = preprocessing_from_args(train_args, _class_names(train_args, path.parent))
        prep = resolve_preprocessing(ckpt.get("preprocessing"), derived, f"--checkpoint {path}",
                                     fallback=fallback)
        model, signal = build_model_from_args(train_args)
        weights = _ema_weights(ckpt)
        what = "EMA"
        if weights is None:
            weights, what = ckpt["model"], "model"
        load_eval_weights(model, weights, f"{path} ({what} weights)")
        signal_state = ((ckpt.get("task") or {}).get("_extra_state") or {}).get("signal")
        if signal_state is None and isinstance((ckpt.get("extra") or {}).get("signal"), Mapping):
            stored = ckpt["extra"]["signal"]  # a safetensors export: the values as JSON lists
            signal_state = {"momentum": stored["momentum"],
                            "values": {k: torch.tensor(v) for k, v in stored["values"].items()}}
        if signal_state is not None:
            signal.load_state_dict(signal_state)
        model.return_intermediate = False
        return LoadedModel(model.to(device).eval(), prep, path, path.parent,
                           {"thresholds": ckpt["thresholds"]} if "thresholds" in ckpt else {},
                           {"args": dict(recorded), "extra": {"signal": {
                               "momentum": signal.momentum,
                               "values": {k: v.tolist() for k, v in signal.state_dict()["values"].items()}}}})

    def pair_view(self, path: Path) -> tuple[str, int] | None:
        m = _VIEW.match(path.stem)
        if m is None:
            return None
        key = (path.parent / m["id"]).as_posix()
        return key, 0 if m["view"].upper() == "OL" else 1

    def cam_layer(self, model: nn.Module) -> nn.Module:
        return model.backbone.stages[max(model.out_indices)]

    def attention(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        from dvxray.plots import coordatt_maps

        try:
            _, att = coordatt_maps(model, inputs[0], inputs[1])
        except ValueError:  # no CoordAtt-U at N3
            return None
        return [att, att]

    def attention_label(self) -> str:
        return "CoordAtt-U at N3 (fused views)"

    def export_output_names(self, model: nn.Module) -> list[str]:
        return ["logits"]


ADAPTER = register_adapter(DvXrayAdapter())
