"""Attention visualisation for DCAL: rollout heat-map overlays and GLCA query-selection overlays.

For each image two PNGs are written: ``<stem>_rollout.png`` (the CLS-row attention rollout over the
patch grid, upsampled and blended over the image with a jet colour map) and ``<stem>_glca.png`` (the
image with the K patches GLCA uses as local queries highlighted and the rest darkened).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from common.synth.render import save_png


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8."""
    x = image.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def rollout_overlay(image: np.ndarray, scores: torch.Tensor, grid: tuple[int, int], alpha: float = 0.5) -> Image.Image:
    """Blend the (N,) rollout scores, reshaped to ``grid`` and min-max scaled, over ``image``."""
    h, w = image.shape[:2]
    s = scores.detach().float().cpu().reshape(grid).numpy()
    s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
    heat = Image.fromarray((s * 255).astype(np.uint8), mode="L").resize((w, h), Image.Resampling.BILINEAR)
    rgb = colormaps["jet"](np.asarray(heat, dtype=np.float64) / 255.0)[..., :3]
    out = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * rgb
    return Image.fromarray((out.clip(0, 1) * 255).round().astype(np.uint8), mode="RGB")


def selection_overlay(image: np.ndarray, idx: torch.Tensor, grid: tuple[int, int]) -> Image.Image:
    """Keep the selected patches (token positions 1..N) bright, darken the others, outline in red."""
    h, w = image.shape[:2]
    gh, gw = grid
    mask = np.zeros(gh * gw, dtype=bool)
    mask[idx.detach().cpu().long().numpy() - 1] = True
    cell = np.asarray(Image.fromarray(mask.reshape(grid).astype(np.uint8) * 255, mode="L")
                      .resize((w, h), Image.Resampling.NEAREST)) > 0
    out = image.astype(np.float64) * np.where(cell, 1.0, 0.3)[..., None]
    edge = cell ^ np.roll(cell, 1, 0) | cell ^ np.roll(cell, 1, 1)
    out[edge & cell] = (255, 0, 0)
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8), mode="RGB")


def save_attention_maps(images: torch.Tensor, rollout: torch.Tensor, glca_idx: torch.Tensor, grid: tuple[int, int],
                        out_dir: str | Path, names: Sequence[str], *, mean: Sequence[float], std: Sequence[float]) -> list[Path]:
    """Write the two overlays for each image of a batch.

    Args:
        images: (B, 3, H, W) normalised inputs.
        rollout: (B, N) CLS-row rollout scores; glca_idx: (B, K) selected token positions (1..N).
        grid: patch grid (gh, gw) with gh * gw = N.
        out_dir: destination folder (created).
        names: file stem per image.
        mean, std: the normalisation to undo.

    Returns:
        Paths written.
    """
    out_dir = Path(out_dir)
    written = []
    for i, stem in enumerate(names):
        img = denormalize(images[i], mean, std)
        for suffix, pic in (("rollout", rollout_overlay(img, rollout[i], grid)),
                            ("glca", selection_overlay(img, glca_idx[i], grid))):
            path = out_dir / f"{stem}_{suffix}.png"
            save_png(pic, path)
            written.append(path)
    return written
