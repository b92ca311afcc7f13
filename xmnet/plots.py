"""XMNet evidence overlays: the attention map A of the classification branch (XMNet / MMANet attention
module) and, for segmentation models, the predicted vein mask beside the ground truth, for a few test
leaves (called by ``python -m common.plots RUN_DIR`` and at the end of ``Train.py``, ``--plots``).

From a run folder the model is rebuilt from the flags recorded in ``args.json`` and the weights of the
selected checkpoint (``best_model.pth``, else ``checkpoint_best.pth`` / ``checkpoint_last.pth``); the
images are spread over the test split of the recorded ``--data_dir`` / ``--dataset``. Classification
runs get ``attention_overlays.png``, segmentation runs ``vein_mask_overlays.png`` (both when both).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.plots import PlotError, save_overlay_grid, to_display

ATTENTION_PNG = "attention_overlays.png"
MASK_PNG = "vein_mask_overlays.png"
PRED_RGB = (1.0, 0.1, 0.1)
TRUTH_RGB = (0.1, 1.0, 0.1)


@torch.no_grad()
def attention_and_mask(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                             torch.Tensor | None]:
    """(logits [B, K], attention [B, h, w] or None, vein probability [B, H, W] or None) of an XMNetModel."""
    model.eval()
    out = model(images)
    att = out.get("att")
    att = None if att is None else att.float().mean(1)
    mask = None
    if out.get("seg"):
        seg = out["seg"][0].float()
        mask = torch.sigmoid(seg[:, 0]) if seg.shape[1] == 1 else seg.softmax(1)[:, 1]
    return out["out"], att, mask


def tint(image: np.ndarray, mask: np.ndarray, rgb: tuple[float, float, float], alpha: float = 0.6) -> np.ndarray:
    """``image`` [H, W(, 3)] in [0, 1] with the pixels of the boolean ``mask`` (resized, nearest) blended
    towards ``rgb``."""
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    m = F.interpolate(m, size=img.shape[:2], mode="nearest")[0, 0].numpy()[..., None]
    return np.clip(img * (1 - alpha * m) + np.asarray(rgb) * alpha * m, 0, 1)


def _class_caption(logits: torch.Tensor, label: int | None) -> str:
    p, j = logits.float().softmax(-1).max(0)
    truth = "" if label is None else f"true class {label}, "
    return f"{truth}pred {int(j)} (p {float(p):.2f})"


def draw_attention(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
                   names: Sequence[str] | None = None, labels: Sequence[int] | None = None,
                   display: Sequence[np.ndarray] | None = None, title: str = "XMNet") -> Path:
    """One row per image: the leaf captioned with its true and predicted class, and the attention map A
    of the classification branch over it.

    Args:
        model: an ``XMNetModel`` with ``attention`` "xmnet" or "mmanet".
        images: normalised batch [B, 3, H, W].
        out: PNG path.
        names: per-image captions (file names).
        labels: true class indices.
        display: the images to draw, [H, W, 3] in [0, 1] (default: min-max scaled ``images``).
        title: figure title prefix.

    Returns:
        ``out``.

    Raises:
        ValueError: the model has no attention module (``--xmnet`` / ``--mmanet`` not given).
    """
    logits, att, _ = attention_and_mask(model, images)
    if att is None:
        raise ValueError("model has no attention map (trained without --xmnet / --mmanet)")
    kind = getattr(model, "attention_type", "xmnet")
    formula = ("A = sigmoid(1x1 conv of [channel mean, channel max])" if kind == "xmnet"
               else "A = sigmoid(channel mean)")
    rows = []
    for i in range(images.shape[0]):
        img = display[i] if display is not None else to_display(images[i])
        cap = f"{names[i] if names else f'image {i}'}\n{_class_caption(logits[i], labels[i] if labels else None)}"
        a = att[i]
        rows.append([(img, None, cap),
                     (img, a.numpy(), f"attention A, {a.shape[0]}x{a.shape[1]} cells\n"
                                      f"(A from {float(a.min()):.2f} to {float(a.max()):.2f})")])
    return save_overlay_grid(
        rows, out, map_label="attention A (blue low, red high)",
        title=f"{title}: one test leaf per row. Right: the {'XMNet' if kind == 'xmnet' else 'MMANet'} attention "
              f"map over the last backbone feature ({formula}; the pooled feature is 0.5 F + 0.5 A F), "
              "upsampled to the leaf")


def draw_vein_masks(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
                    masks: torch.Tensor | None = None, names: Sequence[str] | None = None,
                    display: Sequence[np.ndarray] | None = None, title: str = "XMNet") -> Path:
    """One row per image: the leaf, its predicted vein mask (red) and, when ``masks`` is given, the
    ground-truth veins (green) with the image's IoU.

    Args:
        model: an ``XMNetModel`` built with ``segmentation=True``.
        images: normalised batch [B, 3, H, W].
        out: PNG path.
        masks: ground-truth vein masks [B, 1, H, W] (> 0.5 = vein), or None.
        names: per-image captions (file names).
        display: the images to draw, [H, W, 3] in [0, 1] (default: min-max scaled ``images``).
        title: figure title prefix.

    Returns:
        ``out``.

    Raises:
        ValueError: the model has no segmentation decoder.
    """
    from xmnet.utils import iou_dice

    _, _, prob = attention_and_mask(model, images)
    if prob is None:
        raise ValueError("model has no segmentation decoder (trained without --seg_included)")
    iou = None
    if masks is not None:
        iou, _ = iou_dice(torch.logit(prob.clamp(1e-6, 1 - 1e-6))[:, None], masks.float())
    # drawn as the run's predicted_masks/ are: bilinear to the image, then the threshold
    shown = F.interpolate(prob[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    rows = []
    for i in range(images.shape[0]):
        img = display[i] if display is not None else to_display(images[i])
        pred = shown[i].numpy() > 0.5
        row = [(img, None, names[i] if names else f"image {i}"),
               (tint(img, pred, PRED_RGB), None, f"predicted veins (red, p > 0.5)\n{pred.mean():.0%} of the image")]
        if masks is not None:
            truth = masks[i, 0].numpy() > 0.5
            row.append((tint(img, truth, TRUTH_RGB), None, f"ground-truth veins (green)\nIoU with the prediction "
                                                           f"{float(iou[i]):.2f}"))
        rows.append(row)
    side = f"{prob.shape[-2]}x{prob.shape[-1]}"
    gt = "; right: the ground-truth mask (l2_mask/)" if masks is not None else ""
    return save_overlay_grid(rows, out, title=f"{title}: one test leaf per row. Middle: the decoder's vein "
                             f"probability (level-1 output, {side}) thresholded at 0.5 and drawn over the leaf{gt}")


def draw_xmnet(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
               names: Sequence[str] | None = None, title: str = "XMNet") -> Path:
    """From a model and a batch: one row per image, the leaf captioned with the predicted class, the
    attention map A over it (when the model has one) and the predicted vein mask (when it segments)."""
    logits, att, prob = attention_and_mask(model, images)
    rows = []
    for i in range(images.shape[0]):
        img = to_display(images[i])
        row = [(img, None, f"{names[i] if names else f'image {i}'}\n{_class_caption(logits[i], None)}")]
        if att is not None:
            row.append((img, att[i].numpy(), "attention map A"))
        if prob is not None:
            row.append((tint(img, prob[i].numpy() > 0.5, PRED_RGB), None, "predicted veins (red, p > 0.5)"))
        rows.append(row)
    what = " and the predicted vein mask (red)" if prob is not None else ""
    return save_overlay_grid(rows, out, title=f"{title}: the classification branch's attention map{what}",
                             map_label="attention A")


def _weights(run: Path) -> tuple[Path, dict] | None:
    from common.checkpoint import load_checkpoint

    for name, key in (("best_model.pth", "net"), ("checkpoint_best.pth", "model"), ("checkpoint_last.pth", "model")):
        if (run / name).is_file():
            ckpt = load_checkpoint(run / name)
            if isinstance(ckpt.get(key), dict):
                return run / name, ckpt[key]
    return None


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Attention / vein-mask overlays for a ``Train.py`` output folder.

    Returns [] with a one-line note on stderr when ``args.json``, the weights or the data set (as
    recorded, relative to the folder the training ran in) is missing.

    Raises:
        PlotError: the recorded flags and the weights do not fit together.
    """
    from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from xmnet.backboneModels import XMNetModel, upgrade_legacy_keys
    from xmnet.engine_xmnet import attention_of
    from xmnet.leafvein2 import LeafVeinDataset
    from xmnet.utils import seg_target

    run = Path(run_dir)
    args_file = run / "args.json"
    found = _weights(run)
    if found is None or not args_file.is_file():
        print(f"plots: xmnet overlays skipped: no best_model.pth / checkpoint_best.pth / args.json in {run}",
              file=sys.stderr)
        return []
    ckpt, state = found
    args = argparse.Namespace(**json.loads(args_file.read_text(encoding="utf-8")))
    root = Path(args.data_dir) / args.dataset
    if not (root / "test").is_dir():
        print(f"plots: xmnet overlays skipped: test images {root / 'test'} (--data_dir, --dataset) not found from "
              f"{Path.cwd()}", file=sys.stderr)
        return []
    attention = attention_of(args)
    # runs recorded before --seg_arch existed used the compact decoders
    model = XMNetModel(args.backbone_class, args.num_classes, attention=attention, segmentation=args.seg_included,
                       unet=args.unet, att_from=args.att_from, fsds=args.fsds,
                       seg_arch=getattr(args, "seg_arch", "compact"))
    try:
        model.load_state_dict(upgrade_legacy_keys(state, model), strict=True)
    except RuntimeError as err:
        raise PlotError(f"xmnet overlays: {ckpt} does not fit the flags in {args_file} "
                        f"({str(err).splitlines()[0]})") from None
    n_test = len([p for p in (root / "test").iterdir() if p.is_file() and not p.name.startswith(".")])
    # spread over the split (sorted by id), and load only those images
    idx = sorted({int(round(x)) for x in np.linspace(0, n_test - 1, min(n_images, n_test))})
    data = LeafVeinDataset(root, "test", train=False, crop=args.crop_size, indices=idx)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it[0] for it in items])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    display = [(x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for x in images]
    names = [Path(r.path).name for r in data.records]
    title = f"XMNet {run.name} ({args.dataset}, {args.backbone_class}, {ckpt.name})"
    written = []
    if args.cls_included:
        if attention == "none":
            print(f"plots: xmnet attention overlay skipped: {run.name} has no attention module (no --xmnet / "
                  "--mmanet)", file=sys.stderr)
        else:
            written.append(draw_attention(model, images, run / ATTENTION_PNG, names=names,
                                          labels=[int(it[1]) for it in items], display=display, title=title))
    if args.seg_included:
        masks = seg_target(torch.stack([it[2] for it in items]), args.seg_target)
        written.append(draw_vein_masks(model, images, run / MASK_PNG, masks=masks, names=names, display=display,
                                       title=title))
    return written
