"""XMNet evidence overlays: the attention map A of the classification branch and, for segmentation
models, the predicted vein mask, for a few leaf images (called by ``python -m common.plots``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.plots import save_overlay_grid, to_display


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


def draw_xmnet(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
               names: Sequence[str] | None = None, title: str = "XMNet") -> Path:
    """One row per image: the leaf, the attention map A over it, and the predicted vein mask (when the
    model has a segmentation decoder), captioned with the predicted class."""
    logits, att, mask = attention_and_mask(model, images)
    probs = logits.float().softmax(-1)
    rows = []
    for i in range(images.shape[0]):
        img = to_display(images[i])
        p, j = probs[i].max(0)
        row = [(img, None, f"{names[i] if names else f'image {i}'} | pred class {int(j)} ({float(p):.2f})")]
        if att is not None:
            row.append((img, att[i].numpy(), "attention map A"))
        if mask is not None:
            row.append((mask[i].numpy(), None, "predicted vein probability (white = 1)"))
        rows.append(row)
    what = " and the predicted vein mask" if mask is not None else ""
    return save_overlay_grid(rows, out, title=f"{title}: the classification branch's attention map{what}",
                             map_label="attention A")


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Overlays from a finished run folder (not wired yet; Train.py --save_masks writes its masks)."""
    print(f"plots: xmnet overlays from a run folder are not implemented yet ({run_dir}); "
          "call xmnet.plots.draw_xmnet(model, images, out)", file=sys.stderr)
    return []
