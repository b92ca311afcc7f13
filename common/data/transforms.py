"""Generic transform helpers; paper-specific augmentation pipelines live in the paper folders."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_eval_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_eval_transform(
    size: int | tuple[int, int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
) -> T.Compose:
    """Resize to a fixed square (or ``(h, w)``) size, no crop, then to tensor and normalise.

    Args:
        size: output side, or ``(height, width)``.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided by.
        interpolation: resize filter (antialiased).

    Returns:
        A picklable ``Compose`` mapping a PIL image to a normalised C x H x W float tensor.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return T.Compose(
        [
            T.Resize(hw, interpolation=interpolation, antialias=True),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
