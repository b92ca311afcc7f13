"""Robust image loading shared by every dataset.

Errors name the image, and when the image came from a list file, the list file and line too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.errors import DataError


def _where(path: str | Path, source: tuple[str | Path, int] | None) -> str:
    if source is None:
        return str(path)
    list_file, line = source
    return f"{path} (listed at {list_file}:{line})"


def to_8bit(img: Image.Image) -> Image.Image:
    """Convert 16-bit / 32-bit / float grayscale images to 8-bit 'L' by min-max rescaling.

    8-bit modes are returned unchanged. A constant image maps to zeros.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return img


def load_image(
    path: str | Path,
    mode: str | None = "RGB",
    *,
    source: tuple[str | Path, int] | None = None,
) -> Image.Image:
    """Open an image fully (so a truncated file fails here, not in a worker later).

    Args:
        path: image file.
        mode: PIL mode to convert to ("RGB", "L"), or None to keep the file's mode. 16-bit and
            float grayscale images are first rescaled to 8 bit when a mode is requested.
        source: (list file, line number) the path came from, quoted in errors.

    Raises:
        DataError: the file is missing, not an image, or corrupt; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {_where(path, source)}")
    try:
        with Image.open(path) as img:
            img.load()
            if mode is not None:
                img = to_8bit(img)
                if img.mode != mode:
                    img = img.convert(mode)
            else:
                img = img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {_where(path, source)}: {exc}") from None
    return img
