"""Render small, learnable synthetic images from real hand-written digits.

Every synthetic data set in ``common.synth`` draws its pixels here, so that the learning checks of
all five paper folders rest on one class encoding:

* class ``c`` shows digit ``c % 10``; every instance is a real 8x8 scikit-learn digit written by a
  random writer, resized with position and scale jitter;
* ``k = c // 10`` selects a second visual factor. In RGB the glyph is tinted with colour
  ``PALETTE[k % 10]`` and ``(k // 10) % 4`` selects a decoration; in L mode ``k % 4`` selects the
  decoration. Decorations: 0 plain, 1 frame around the glyph, 2 inverted (bright tile, dark
  glyph), 3 bar under the glyph.

So L mode distinguishes up to 40 classes and RGB up to 400; larger ``num_classes`` raise
``ValueError`` instead of silently repeating an encoding.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from common.checkpoint import atomic_write_bytes, atomic_write_text

# Ten well-separated tints (RGB, 0..1). Index 0 is white so that factor 0 looks like the L-mode glyph.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0),
    (1.0, 0.2, 0.2),
    (0.2, 1.0, 0.2),
    (0.3, 0.4, 1.0),
    (1.0, 1.0, 0.2),
    (1.0, 0.2, 1.0),
    (0.2, 1.0, 1.0),
    (1.0, 0.6, 0.1),
    (0.6, 0.3, 1.0),
    (0.6, 1.0, 0.6),
)
NUM_DECORATIONS = 4
MAX_CLASSES = {"L": 10 * NUM_DECORATIONS, "RGB": 10 * len(PALETTE) * NUM_DECORATIONS}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

    data = load_digits()
    # load_digits stores intensities 0..16; 16 * 255 / 16 keeps the full 8-bit range.
    images = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = data.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    by_digit = tuple(np.flatnonzero(labels == d) for d in range(10))
    return images, labels, by_digit


def digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn hand-written digits as 8-bit glyphs (loaded once, read-only).

    Returns:
        ``(images, labels)``: uint8 array ``(1797, 8, 8)`` in 0..255 and int64 labels 0..9.
    """
    images, labels, _ = _digits()
    return images, labels


def class_encoding(class_id: int, num_classes: int, mode: str = "RGB") -> tuple[int, tuple[float, ...], int]:
    """How class ``class_id`` is drawn: its digit, tint and decoration.

    Args:
        class_id: class index, ``0 <= class_id < num_classes``.
        num_classes: number of classes of the data set (checked against the mode's capacity).
        mode: "L" or "RGB".

    Returns:
        ``(digit, tint, decoration)``; ``tint`` is an RGB triple in 0..1 (white in L mode) and
        ``decoration`` one of 0 plain, 1 frame, 2 inverted, 3 underline.

    Raises:
        ValueError: unknown mode, class out of range, or more classes than the mode can encode.
    """
    if mode not in MAX_CLASSES:
        raise ValueError(f"render: mode must be one of {sorted(MAX_CLASSES)}, got {mode!r}")
    if num_classes > MAX_CLASSES[mode]:
        raise ValueError(
            f"render: mode {mode} distinguishes at most {MAX_CLASSES[mode]} classes, got num_classes={num_classes}"
        )
    if not 0 <= class_id < num_classes:
        raise ValueError(f"render: class_id {class_id} out of range for num_classes={num_classes}")
    digit, factor = class_id % 10, class_id // 10
    if mode == "L":
        return digit, PALETTE[0], factor % NUM_DECORATIONS
    return digit, PALETTE[factor % len(PALETTE)], (factor // len(PALETTE)) % NUM_DECORATIONS


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` is an int (square) or PIL-style ``(width, height)``; returns ``(height, width)``."""
    if isinstance(size, int):
        w = h = size
    else:
        w, h = size
    if w < 8 or h < 8:
        raise ValueError(f"render: image size must be at least 8x8, got {size!r}")
    return int(h), int(w)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Dim noisy background with a smooth random gradient (float, 0..1, shape (h, w))."""
    base = rng.uniform(0.05, 0.25)
    gy, gx = rng.uniform(-0.08, 0.08, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    grad = gy * (yy / max(h - 1, 1) - 0.5) + gx * (xx / max(w - 1, 1) - 0.5)
    noise = rng.normal(0.0, 0.05, size=(h, w))
    return np.clip(base + grad + noise, 0.0, 1.0)


def _glyph(digit: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random writer's ``digit`` resized to ``side`` x ``side`` (float alpha 0..1)."""
    images, _, by_digit = _digits()
    idx = int(rng.choice(by_digit[digit]))
    img = Image.fromarray(images[idx], mode="L").resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


def _draw(
    canvas: np.ndarray,
    class_id: int,
    num_classes: int,
    mode: str,
    box: tuple[int, int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Composite one class glyph into ``canvas`` (h, w, 3) inside square box ``(top, left, side)``.

    Returns the box's drawn coverage (side x side, 0..1): glyph strokes plus decoration.
    """
    digit, tint, decoration = class_encoding(class_id, num_classes, mode)
    top, left, side = box
    colour = np.asarray(tint, dtype=np.float64) * rng.uniform(0.85, 1.0)
    region = canvas[top : top + side, left : left + side]
    line = max(1, side // 10)
    if decoration == 3:
        # Leave the bottom rows for the bar so it never hides the digit's lower stroke.
        gside = max(4, side - 2 * line)
        alpha = np.zeros((side, side))
        off = (side - gside) // 2
        alpha[:gside, off : off + gside] = _glyph(digit, gside, rng)
        alpha[side - line :, :] = 1.0
    else:
        alpha = _glyph(digit, side, rng)
    if decoration == 2:
        # Bright tile with a dark glyph: the digit shape survives as the tile's hole.
        tile = 1.0 - alpha
        region[...] = region * (1.0 - tile[..., None]) + colour * tile[..., None] * 0.9
        return tile
    if decoration == 1:
        alpha = alpha.copy()
        alpha[:line, :] = alpha[-line:, :] = 1.0
        alpha[:, :line] = alpha[:, -line:] = 1.0
    region[...] = region * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return alpha


def _to_image(canvas: np.ndarray, mode: str) -> Image.Image:
    arr = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    if mode == "L":
        # L-mode tints are white, so the three channels are equal; channel 0 is the image.
        return Image.fromarray(np.ascontiguousarray(arr[..., 0]), mode="L")
    return Image.fromarray(arr, mode="RGB")


def _canvas(h: int, w: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "L":
        return np.repeat(_background(h, w, rng)[..., None], 3, axis=2)
    # RGB: grey noise plus a faint random colour cast, so tint (not background) carries the class.
    bg = np.repeat(_background(h, w, rng)[..., None], 3, axis=2)
    return np.clip(bg + rng.uniform(-0.03, 0.03, size=3), 0.0, 1.0)


def render_multilabel(
    active: Sequence[int],
    num_classes: int,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    mode: str = "RGB",
) -> Image.Image:
    """An image showing one glyph per active class on a noisy background.

    Glyphs go into distinct cells of a ``g x g`` grid (``g = max(2, ceil(sqrt(len(active))))``)
    with random cell choice, scale (70-100 % of the cell) and position jitter, so they never
    overlap and each stays recognisable.

    Args:
        active: class indices present (duplicates are ignored; empty gives background only).
        num_classes: number of classes of the data set.
        size: side length, or ``(width, height)``.
        rng: NumPy generator; the image is a pure function of its state.
        mode: "L" (grayscale) or "RGB".

    Returns:
        PIL image of the requested mode and size.

    Raises:
        ValueError: bad mode/size, a class out of range, or too many classes for the mode.
    """
    h, w = _size_hw(size)
    classes = sorted(set(int(c) for c in active))
    for c in classes:
        class_encoding(c, num_classes, mode)  # validate before drawing anything
    canvas = _canvas(h, w, mode, rng)
    if classes:
        g = max(2, math.ceil(math.sqrt(len(classes))))
        cell_h, cell_w = h // g, w // g
        cell = min(cell_h, cell_w)
        if cell < 4:
            raise ValueError(f"render: image {w}x{h} too small for {len(classes)} glyphs")
        cells = rng.permutation(g * g)[: len(classes)]
        for c, k in zip(rng.permutation(classes), cells):
            side = int(rng.integers(max(4, int(0.7 * cell)), cell + 1))
            r, col = divmod(int(k), g)
            top = r * cell_h + int(rng.integers(0, cell_h - side + 1))
            left = col * cell_w + int(rng.integers(0, cell_w - side + 1))
            _draw(canvas, int(c), num_classes, mode, (top, left, side), rng)
    return _to_image(canvas, mode)


def render_class(
    class_id: int,
    num_classes: int,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    mode: str = "RGB",
) -> Image.Image:
    """A single-label image: one large glyph of ``class_id`` (55-85 % of the short side).

    Args:
        class_id: the class (e.g. a bird species or a re-ID identity index).
        num_classes: number of classes of the data set.
        size: side length, or ``(width, height)``.
        rng: NumPy generator; the image is a pure function of its state.
        mode: "L" or "RGB".

    Returns:
        PIL image of the requested mode and size.

    Raises:
        ValueError: bad mode/size, class out of range, or too many classes for the mode.
    """
    return render_class_with_mask(class_id, num_classes, size, rng, mode)[0]


def render_class_with_mask(
    class_id: int,
    num_classes: int,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    mode: str = "RGB",
) -> tuple[Image.Image, np.ndarray]:
    """:func:`render_class` plus the glyph's footprint (e.g. as a segmentation target).

    Consumes ``rng`` exactly like :func:`render_class`, so both give the same image for one state.

    Args:
        class_id: the class.
        num_classes: number of classes of the data set.
        size: side length, or ``(width, height)``.
        rng: NumPy generator.
        mode: "L" or "RGB".

    Returns:
        ``(image, mask)``; ``mask`` is a bool array (height, width), True where the glyph's strokes
        or decoration cover at least half of a pixel.

    Raises:
        ValueError: as :func:`render_class`.
    """
    h, w = _size_hw(size)
    class_encoding(class_id, num_classes, mode)
    canvas = _canvas(h, w, mode, rng)
    short = min(h, w)
    side = int(rng.integers(max(4, int(0.55 * short)), max(5, int(0.85 * short)) + 1))
    side = min(side, short)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    cover = _draw(canvas, class_id, num_classes, mode, (top, left, side), rng)
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + side, left : left + side] = cover >= 0.5
    return _to_image(canvas, mode), mask


def save_png(img: Image.Image, path: str | Path, bits: int = 8) -> None:
    """Write ``img`` as a PNG atomically, with no timestamp chunk (same image -> same bytes).

    Args:
        img: PIL image ("L" or "RGB" for 8 bit; "L" or "I;16" for 16 bit).
        path: destination; parent folders are created.
        bits: 8, or 16 for a 16-bit grayscale PNG (an "L" image is scaled by 257 so 255 -> 65535).

    Raises:
        ValueError: unsupported ``bits`` or image mode.
    """
    if bits == 16:
        if img.mode == "L":
            arr = np.asarray(img, dtype=np.uint16) * np.uint16(257)
            img = Image.fromarray(arr)  # uint16 arrays become mode "I;16"
        elif img.mode != "I;16":
            raise ValueError(f"save_png: 16-bit output needs an L or I;16 image, got mode {img.mode} for {path}")
    elif bits == 8:
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"save_png: 8-bit output needs an L or RGB image, got mode {img.mode} for {path}")
    else:
        raise ValueError(f"save_png: bits must be 8 or 16, got {bits} for {path}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), path)


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically with the given line endings (parent folders created)."""
    atomic_write_text(text, path)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically (parent folders created)."""
    atomic_write_bytes(data, path)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV file (``\n`` line endings, csv-module quoting) atomically."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, out.getvalue())
