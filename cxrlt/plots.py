"""CXR-LT CSRA class-attention overlays: for the top-k predicted classes of a few images, the CSRA
head's spatial attention of that class (called by ``python -m common.plots``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.plots import save_overlay_grid, to_display


@torch.no_grad()
def csra_maps(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], class attention [B, K, H, W]) of a ``ConvNeXtV2CXR``.

    The seed's head (``CSRAHead``): softmax over positions of ``conv_att``; the official head (``MHA``):
    softmax over positions of the first (T = 1) head's normalised class scores.
    """
    model.eval()
    feats = model.bn(model.backbone(images))
    logits = model.head(feats)
    head = model.head
    if hasattr(head, "conv_att"):
        score = head.conv_att(feats)
    else:
        h0 = head.multi_head[0]
        score = h0.head(feats) / torch.norm(h0.head.weight, dim=1, keepdim=True).transpose(0, 1) * h0.T
    b, k, hh, ww = score.shape
    return logits, score.flatten(2).softmax(-1).view(b, k, hh, ww)


def draw_csra(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *, class_names: Sequence[str],
              top_k: int = 3, names: Sequence[str] | None = None, title: str = "CXR-LT CSRA class attention") -> Path:
    """One row per image: the image, then the CSRA attention of each of its top-k predicted classes."""
    logits, att = csra_maps(model, images)
    probs = torch.sigmoid(logits.float())
    rows = []
    for i in range(images.shape[0]):
        img = to_display(images[i])
        row = [(img, None, names[i] if names else f"image {i}")]
        top = torch.topk(probs[i], min(top_k, probs.shape[1]))
        for j, p in zip(top.indices.tolist(), top.values.tolist()):
            row.append((img, att[i, j].numpy(), f"{class_names[j]} p={p:.2f}"))
        rows.append(row)
    return save_overlay_grid(rows, out, title=f"{title}: per row the image, then the spatial attention of its "
                             f"top-{top_k} predicted classes", map_label="class attention (softmax over positions)")


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Overlays from a finished run folder (not wired yet: needs the run's data and checkpoint)."""
    print(f"plots: cxrlt overlays from a run folder are not implemented yet ({run_dir}); "
          "call cxrlt.plots.draw_csra(model, images, out, class_names=...)", file=sys.stderr)
    return []
