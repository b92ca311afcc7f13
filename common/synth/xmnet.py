"""Synthetic leaf-vein data set in the MGANet / XMNet layout (xmnet.md §4.1), read by
:func:`common.data.formats.read_xmnet`.

Writes, under ``out_dir`` (= ``<data_dir>/<dataset>``):

* ``train/<id>.png`` and ``test/<id>.png``: RGB 64 px images (real: leaf scans padded/cropped to 448),
  ids 1..n, a per-class 2:1 train:test split like ``soybean_2_1``;
* ``l2_mask/<id>.png``: single-channel ("L") masks with raw values 0 (background) and 1 (glyph
  strokes, standing in for veins). The reference leaves the real value range open (quirk 15); 0/1
  suits both the max-normalised guidance loss and a BCE target. With ``btf=True`` keys are file
  names and masks are named like the images, as in MGANet's ``btf``;
* ``labels.pkl``: ``{id: 1-based label}`` of plain ints, pickle protocol 4.

The image extension is not fixed by the reference; PNG keeps pixels exact.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.formats.xmnet import LABELS_FILE, MASK_DIR
from common.synth.render import render_class_with_mask, save_png, write_bytes

DEFAULT_N = 60
IMAGE_SIZE = 64
TEST_EVERY = 3  # every third image of a class goes to test: train:test = 2:1


def write(out_dir: Path, n: int, seed: int, *, num_classes: int = 5, btf: bool = False) -> dict:
    """Write ``n`` images over ``num_classes`` classes with masks and ``labels.pkl``.

    Args:
        out_dir: data set root (created).
        n: number of images (>= 3 * num_classes so every class is in both splits).
        seed: NumPy seed; the output is a pure function of (n, seed, num_classes, btf).
        num_classes: number of classes (up to 400, the RGB limit of the renderer).
        btf: key ``labels.pkl`` by file name and name masks like images (MGANet's ``btf``).

    Returns:
        ``{"format", "root", "num_classes", "counts": {"train", "test"}}``.
    """
    if num_classes < 1:
        raise ValueError(f"xmnet synth: num_classes must be >= 1, got {num_classes}")
    if n < 3 * num_classes:
        raise ValueError(f"xmnet synth: n must be >= 3 * num_classes ({3 * num_classes}), got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    labels: dict[int | str, int] = {}
    counts = {"train": 0, "test": 0}
    seen_per_class = [0] * num_classes
    for image_id in range(1, n + 1):
        c = (image_id - 1) % num_classes
        split = "test" if seen_per_class[c] % TEST_EVERY == TEST_EVERY - 1 else "train"
        seen_per_class[c] += 1
        img, mask = render_class_with_mask(c, num_classes, IMAGE_SIZE, rng, mode="RGB")
        name = f"{image_id}.png"
        save_png(img, out_dir / split / name)
        save_png(Image.fromarray(mask.astype(np.uint8), mode="L"), out_dir / MASK_DIR / name)
        labels[name if btf else image_id] = c + 1
        counts[split] += 1
    write_bytes(out_dir / LABELS_FILE, pickle.dumps(labels, protocol=4))
    return {"format": "xmnet", "root": str(out_dir), "num_classes": num_classes, "counts": counts}
