"""DCAL evidence overlays: the attention rollout of the SA branch (CLS row over the patches) and the
patches GLCA selected as local queries (its top-R rollout patches), for a few images (called by
``python -m common.plots``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.plots import save_overlay_grid, to_display


@torch.no_grad()
def rollout_and_selection(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """(rollout [B, gh, gw], GLCA selection mask [B, gh, gw] (1 = selected), prediction scores [B, K] or
    None for re-ID) from one eval-mode forward of a ``DualAttentionModel``."""
    model.eval()
    out = model(images)
    gh, gw = model.grid_size
    rollout = out["rollout"].float().view(-1, gh, gw)
    mask = torch.zeros(rollout.shape[0], gh * gw)
    if "glca_idx" in out:
        mask.scatter_(1, (out["glca_idx"].long() - 1).clamp(min=0), 1.0)  # positions are 1..N (0 = CLS)
    scores = out["embedding"] if model.task_type == "fgvc" else None
    return rollout, mask.view(-1, gh, gw), scores


def draw_rollout(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
                 names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 title: str = "DCAL") -> Path:
    """One row per image: the image, the SA attention rollout over it, and the GLCA-selected patches
    (highlighted) with the top FGVC class when the model classifies."""
    rollout, mask, scores = rollout_and_selection(model, images)
    rows = []
    for i in range(images.shape[0]):
        img = to_display(images[i])
        cap = names[i] if names else f"image {i}"
        if scores is not None:
            p, j = scores[i].max(0)
            cls = class_names[int(j)] if class_names else f"class {int(j)}"
            cap = f"{cap} | pred {cls} ({float(p) / 2:.2f})"  # SA + GLCA probabilities are summed
        grey = img if img.ndim == 2 else img.mean(-1)
        m = torch.nn.functional.interpolate(mask[i][None, None], size=grey.shape, mode="nearest")[0, 0].numpy()
        selected = np.stack([np.clip(grey * 0.35 + m * 0.65, 0, 1), grey * 0.35 + m * 0.3, grey * 0.35], -1)
        rows.append([(img, None, cap), (img, rollout[i].numpy(), "SA attention rollout (CLS row)"),
                     (selected, None, f"GLCA local queries: {int(mask[i].sum())} of {mask[i].numel()} patches")])
    return save_overlay_grid(rows, out, title=f"{title}: attention rollout through the SA blocks and the top-R "
                             "patches GLCA attends from (orange)", map_label="rollout score")


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Overlays from a finished run folder (not wired yet; eval_fgvc/eval_reid --visualize draws its own)."""
    print(f"plots: dcal overlays from a run folder are not implemented yet ({run_dir}); "
          "call dcal.plots.draw_rollout(model, images, out)", file=sys.stderr)
    return []
