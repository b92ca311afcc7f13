"""XMNet helpers (``utils.py``): run names, losses, segmentation metrics, the original's result files
and predicted-mask overlays."""

from __future__ import annotations

import fcntl
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD

MASK_GUIDANCE_WEIGHT = 0.1


def get_folder_path(*, attention: str, maskguided: bool, cls_included: bool, seg_included: bool,
                    unet: bool) -> str:
    """The original's run name: {MMANet | XMNet | Original}[_mask_guided][_Classification]
    [_Segmentation_Unet | _Segmentation_Unet3Plus] (the original read ``args.Unet`` here: quirk 5)."""
    parts = [{"xmnet": "XMNet", "mmanet": "MMANet"}.get(attention, "Original")]
    if maskguided:
        parts.append("mask_guided")
    if cls_included:
        parts.append("Classification")
    if seg_included:
        parts.append("Segmentation_Unet" if unet else "Segmentation_Unet3Plus")
    return "_".join(parts)


def mask_guided_target(mask: torch.Tensor, att_hw: Sequence[int], seg_size: int) -> torch.Tensor:
    """The mask-guidance target (xmnet.md §5.3): the raw mask bilinearly resized to seg_size / 2,
    adaptive-average-pooled to the attention map's size, flattened, + 1e-12, divided by its
    per-sample maximum. Returns (B, h*w)."""
    half = seg_size // 2
    m = F.interpolate(mask.float(), size=(half, half), mode="bilinear", align_corners=False)
    m = F.adaptive_avg_pool2d(m, tuple(att_hw)).flatten(1) + 1e-12
    return m / m.amax(dim=1, keepdim=True)


def mask_guided_mse(att: torch.Tensor, mask: torch.Tensor, seg_size: int) -> torch.Tensor:
    """MSE between the flattened attention map A (B, 1, h, w) and :func:`mask_guided_target` (the
    loss is weighted by 0.1 in the total)."""
    target = mask_guided_target(mask, att.shape[-2:], seg_size)
    return F.mse_loss(att.flatten(1).float(), target)


def seg_target(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """BCE target from the raw mask: "binary" = (mask > 0), "raw" = the loaded values (the original)."""
    return (mask > 0).float() if mode == "binary" else mask.float()


def iou_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image IoU and Dice of (sigmoid(logits) > 0.5) against (target > 0.5), the target resized
    (nearest) to the logits' size. An image with empty prediction and empty mask scores 1."""
    if tuple(target.shape[-2:]) != tuple(logits.shape[-2:]):
        target = F.interpolate(target.float(), size=tuple(logits.shape[-2:]), mode="nearest")
    pred = (torch.sigmoid(logits.float()) > 0.5).flatten(1)
    gt = (target > 0.5).flatten(1)
    inter = (pred & gt).sum(1).double()
    union = (pred | gt).sum(1).double()
    total = pred.sum(1).double() + gt.sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return iou, dice


def timestamp_name(now: Any) -> str:
    """The original's ``%H:%M-%d-%m-%Y`` timestamp."""
    return now.strftime("%H:%M-%d-%m-%Y")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def write_model_accuracies(path: Path, args: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                           final: Mapping[str, Any]) -> None:
    """``model_accuracies.txt``: the arguments, one line per epoch (train/test accuracy in %, CE, total
    loss, IoU in %) and the final results."""
    lines = ["Arguments:"] + [f"  {k}: {v}" for k, v in sorted(args.items())] + ["", "Per epoch:"]
    for r in history:
        fields = {"Epoch": r.get("epoch"), "Train_acc": _pct(r.get("train_acc1")),
                  "Test_acc": _pct(r.get("val_acc1")), "CE": r.get("train_ce"), "Total_loss": r.get("train_loss"),
                  "Train_IoU": _pct(r.get("train_iou")), "Test_IoU": _pct(r.get("val_iou"))}
        lines.append("  " + ", ".join(f"{k}: {_fmt(v)}" for k, v in fields.items() if v is not None))
    lines += ["", "Final:"] + [f"  {k}: {_fmt(v)}" for k, v in final.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pct(v: Any) -> float | None:
    return None if v is None else 100.0 * float(v)


def append_all_results(path: Path, line: str) -> None:
    """Append one line to ``all_results_file.txt`` under an exclusive file lock (several runs may
    share the file, as in the original's filelock-guarded append)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line.rstrip("\n") + "\n")
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_overlay(image: torch.Tensor, logits: torch.Tensor, path: Path, alpha: float = 0.5) -> None:
    """PNG of the (de-normalised) image with the predicted mask (sigmoid > 0.5, resized to the image)
    blended in red."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.float().cpu() * std + mean).clamp(0, 1)
    pred = F.interpolate(logits.float().cpu()[None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[0]
    m = (torch.sigmoid(pred) > 0.5).float()
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    out = rgb * (1 - alpha * m) + red * alpha * m
    arr = (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path)
