"""Synthetic CUB-200-2011 in the official archive layout (``dcal.md`` §6.1).

Writes, directly under ``out_dir`` (use it as DCAL's ``data.data_root``):
* ``images/<NNN.Species>/<Species>_<NNNN>_<id>.jpg``: RGB JPEGs (64 px) of real scikit-learn digit
  glyphs, class-encoded by ``common.synth.render`` (consecutive species differ in digit and tint);
* ``images.txt`` (``<image_id> <relative path>``), ``image_class_labels.txt`` (``<image_id>
  <class_id 1..C>``), ``train_test_split.txt`` (``<image_id> <1 train | 0 test>``, about half of
  each class in each split, as in CUB), ``classes.txt`` (``<class_id> <NNN.Species>``) and
  ``bounding_boxes.txt`` (``<image_id> <x> <y> <width> <height>``, here the whole image).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.synth.render import render_class, write_bytes, write_text

# The first ten CUB-200-2011 species names (the real classes.txt order).
SPECIES = ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
           "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird",
           "Red_winged_Blackbird")
IMAGE_SIZE = 64
# Species c is drawn as render class 11 * c (digit c % 10 and tint c // 10 + ... both change from one
# species to the next), so small demo sets separate by colour and shape and stay learnable in a few
# epochs; with more than 36 species the plain encoding c is used (render's RGB limit is 400 classes).
_STRIDE = 11


def jpeg_bytes(img, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _render_id(c: int, num_classes: int) -> tuple[int, int]:
    if _STRIDE * num_classes <= 400:
        return _STRIDE * c, _STRIDE * num_classes
    return c, num_classes


def write(out_dir: Path, n: int, seed: int, *, num_classes: int = 10) -> dict:
    """Write ``n`` images over ``num_classes`` species with CUB's list files.

    Args:
        out_dir: dataset root (created).
        n: number of images (>= 2 per class so both splits hold every class).
        seed: NumPy seed; the output is a pure function of (n, seed, num_classes).
        num_classes: number of species (up to 200; names beyond the first ten are synthetic).

    Returns:
        ``{"format", "root", "num_classes", "counts": {"train", "test"}}``.
    """
    if not 1 <= num_classes <= 200:
        raise ValueError(f"cub200 synth: num_classes must be in 1..200, got {num_classes}")
    if n < 2 * num_classes:
        raise ValueError(f"cub200 synth: n must be >= 2 * num_classes ({2 * num_classes}), got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    names = [f"{c + 1:03d}.{SPECIES[c] if c < len(SPECIES) else f'Species_{c + 1:03d}'}" for c in range(num_classes)]
    images, labels, split, boxes = [], [], [], []
    counts = {"train": 0, "test": 0}
    per_class = [0] * num_classes
    for image_id in range(1, n + 1):
        c = (image_id - 1) % num_classes
        k = per_class[c]
        per_class[c] += 1
        species = names[c].split(".", 1)[1]
        rel = f"{names[c]}/{species}_{k + 1:04d}_{image_id}.jpg"
        img = render_class(*_render_id(c, num_classes), IMAGE_SIZE, rng, mode="RGB")
        write_bytes(out_dir / "images" / rel, jpeg_bytes(img))
        is_train = 1 if k % 2 == 0 else 0
        counts["train" if is_train else "test"] += 1
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {c + 1}")
        split.append(f"{image_id} {is_train}")
        boxes.append(f"{image_id} 0.0 0.0 {float(IMAGE_SIZE)} {float(IMAGE_SIZE)}")
    write_text(out_dir / "images.txt", "\n".join(images) + "\n")
    write_text(out_dir / "image_class_labels.txt", "\n".join(labels) + "\n")
    write_text(out_dir / "train_test_split.txt", "\n".join(split) + "\n")
    write_text(out_dir / "bounding_boxes.txt", "\n".join(boxes) + "\n")
    write_text(out_dir / "classes.txt", "".join(f"{i + 1} {name}\n" for i, name in enumerate(names)))
    return {"format": "cub200", "root": str(out_dir), "num_classes": num_classes, "counts": counts}
