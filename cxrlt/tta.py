"""Test-time augmentation sets of the original ``tta.py`` (reference cxrlt.md 8.3).

Views act on a batch of [0, 1] images (B x 3 x H x W) before ImageNet normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

View = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _rotate(angle: float) -> View:
    return lambda x: TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)


def _scale(factor: float) -> View:
    """Zoom about the centre: > 1 resizes up and centre-crops, < 1 resizes down and reflect-pads."""

    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if factor >= 1:
            top, left = (nh - h) // 2, (nw - w) // 2
            return y[..., top:top + h, left:left + w]
        pt, pl = (h - nh) // 2, (w - nw) // 2
        return F.pad(y, (pl, w - nw - pl, pt, h - nh - pt), mode="reflect")

    return view


def _brightness(factor: float) -> View:
    return lambda x: (x * factor).clamp(0.0, 1.0)


def _then(first: View, second: View) -> View:
    return lambda x: second(first(x))


def tta_views(name: str) -> list[View]:
    """The views of a TTA set: none, flip, light, medium, heavy or flip_scale."""
    flip = [_identity, _hflip]
    light = flip + [_rotate(5.0), _rotate(-5.0)]
    medium = light + [_scale(1.1), _scale(0.9)]
    sets = {
        "none": [_identity],
        "flip": flip,
        "light": light,
        "medium": medium,
        "heavy": medium + [_brightness(1.1), _brightness(0.9)],
        "flip_scale": [_identity, _hflip, _scale(1.05), _scale(0.95), _then(_scale(1.05), _hflip),
                       _then(_scale(0.95), _hflip)],
    }
    if name not in sets:
        raise ValueError(f"--tta_config: unknown set '{name}' (choose from {', '.join(sets)})")
    return sets[name]


TTA_CONFIGS = ("none", "flip", "light", "medium", "heavy", "flip_scale")
MERGE_MODES = ("mean", "max", "gmean", "median", "logit_mean")


def merge(logits: torch.Tensor, mode: str, eps: float = 1e-7) -> torch.Tensor:
    """Merge V x B x C view logits into B x C probabilities.

    mean / max / median act on sigmoid probabilities, gmean is exp(mean(log p)); ``logit_mean`` (the
    README's "logit mean", rejected by the original's argument parsing) averages logits first.
    """
    if mode == "logit_mean":
        return torch.sigmoid(logits.mean(0))
    p = torch.sigmoid(logits)
    if mode == "mean":
        return p.mean(0)
    if mode == "max":
        return p.max(0).values
    if mode == "gmean":
        return torch.exp(torch.log(p.clamp(min=eps)).mean(0))
    if mode == "median":
        return p.median(0).values
    raise ValueError(f"--tta_merge_mode: unknown mode '{mode}' (choose from {', '.join(MERGE_MODES)})")
