"""Test-time augmentation sets of the original ``tta.py`` (reference cxrlt.md 8.3).

``style="original"`` (default) reproduces the original views, which act on the already
ImageNet-normalised batch (B x 3 x H x W):
  * rotations ±5°: ``affine_grid`` + ``grid_sample``, bilinear, ``padding_mode="reflection"``,
    align_corners False;
  * scale f: new size ``int(h * f)``, ``int(w * f)`` (truncation: 1.05 x 512 -> 537), bilinear
    (align_corners False); f > 1 centre-crops back from ``(new - h) // 2``, f < 1 reflect-pads back
    (the extra pixel of an odd difference goes to the right/bottom);
  * brightness, on the *normalised* tensor: up = clamp(x * 1.1, 0, 1) (which cuts every negative
    normalised value to 0), down = x * 0.9 (no clamp).
``style="corrected"`` (``--tta_style corrected``) applies the views to the [0, 1] image before
normalisation instead: rotations fill with black (0, as the training ShiftScaleRotate's border),
scaled sizes use round() (537.6 -> 538, closer to the nominal factor) and brightness scales the
image (clamped to [0, 1] both ways), so no view leaves the training distribution.

Merges (both styles): mean / max / median of sigmoid probabilities, ``gmean`` = exp(mean(log(p + 1e-8)))
as the original, and ``logit_mean`` (the README's mode, rejected by the original's argument parsing).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

View = Callable[[torch.Tensor], torch.Tensor]

TTA_CONFIGS = ("none", "flip", "light", "medium", "heavy", "flip_scale")
TTA_STYLES = ("original", "corrected")
MERGE_MODES = ("mean", "max", "gmean", "median", "logit_mean")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _rotate(angle: float, padding_mode: str) -> View:
    """Rotation by ``angle`` degrees about the centre with an affine sampling grid."""

    def view(x: torch.Tensor) -> torch.Tensor:
        a = math.radians(angle)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)

    return view


def _scale(factor: float, size_fn: Callable[[float], int]) -> View:
    """Zoom about the centre: > 1 resizes up and centre-crops, < 1 resizes down and reflect-pads."""

    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        nh, nw = max(1, size_fn(h * factor)), max(1, size_fn(w * factor))
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if factor >= 1:
            top, left = (nh - h) // 2, (nw - w) // 2
            return y[..., top:top + h, left:left + w]
        pt, pl = (h - nh) // 2, (w - nw) // 2
        return F.pad(y, (pl, w - nw - pl, pt, h - nh - pt), mode="reflect")

    return view


def _brightness(factor: float, clamp: bool) -> View:
    return (lambda x: (x * factor).clamp(0.0, 1.0)) if clamp else (lambda x: x * factor)


def _then(first: View, second: View) -> View:
    return lambda x: second(first(x))


def tta_views(name: str, style: str = "original") -> list[View]:
    """The views of a TTA set (none, flip, light, medium, heavy or flip_scale) in the given style
    (``original``: views of the normalised tensor; ``corrected``: views of the [0, 1] image)."""
    if style not in TTA_STYLES:
        raise ValueError(f"--tta_style: unknown style '{style}' (choose from {', '.join(TTA_STYLES)})")
    original = style == "original"
    size_fn = int if original else round
    rot = "reflection" if original else "zeros"
    flip = [_identity, _hflip]
    light = flip + [_rotate(5.0, rot), _rotate(-5.0, rot)]
    medium = light + [_scale(1.1, size_fn), _scale(0.9, size_fn)]
    # original: up clamped to [0, 1], down not clamped; corrected: both clamped to the image range
    bright = [_brightness(1.1, clamp=True), _brightness(0.9, clamp=not original)]
    up, down = _scale(1.05, size_fn), _scale(0.95, size_fn)
    sets = {
        "none": [_identity],
        "flip": flip,
        "light": light,
        "medium": medium,
        "heavy": medium + bright,
        "flip_scale": [_identity, _hflip, up, down, _then(up, _hflip), _then(down, _hflip)],
    }
    if name not in sets:
        raise ValueError(f"--tta_config: unknown set '{name}' (choose from {', '.join(sets)})")
    return sets[name]


def merge(logits: torch.Tensor, mode: str, eps: float = 1e-8) -> torch.Tensor:
    """Merge V x B x C view logits into B x C probabilities.

    mean / max / median act on sigmoid probabilities, gmean is exp(mean(log(p + eps))) with the
    original's eps 1e-8 added (not a clamp); ``logit_mean`` averages logits first.
    """
    if mode == "logit_mean":
        return torch.sigmoid(logits.mean(0))
    p = torch.sigmoid(logits)
    if mode == "mean":
        return p.mean(0)
    if mode == "max":
        return p.max(0).values
    if mode == "gmean":
        return torch.exp(torch.log(p + eps).mean(0))
    if mode == "median":
        return p.median(0).values
    raise ValueError(f"--tta_merge_mode: unknown mode '{mode}' (choose from {', '.join(MERGE_MODES)})")
