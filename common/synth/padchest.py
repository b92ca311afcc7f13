"""Synthetic PadChest in the CXR-LT 2026 Task 1 layout (read by ``cxrlt/train_stage2.py``).

Writes under ``out_dir``:
- ``CXRLT_2026_training.csv``: ``ImageID, StudyDate_DICOM, PatientID`` then the 30 Task-1 class columns
  in the challenge order, 0/1 values. Class 0 ("Normal") is exclusive, the other 29 follow a long-tailed
  prevalence (about 30 % for the head class down to ~1 % for the tail), every class has >= 2 positives.
- ``images/<ImageID>``: 16-bit grey PNGs as PadChest ships them (digit glyphs of the active classes,
  stored in a 12-bit-like range with an offset, so the percentile rescale matters).
- ``corrupted_images.csv`` (one listed image is really a truncated file) and ``Removal.csv`` (column
  ``ImageID``), which the reader must honour.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from common.synth.render import render_multilabel, save_png, write_bytes, write_csv

CLASS_NAMES = (
    "Normal", "aortic elongation", "cardiomegaly", "pleural effusion", "Nodule", "atelectasis",
    "pleural thickening", "aortic atheromatosis", "Support Devices", "alveolar pattern", "fracture",
    "Hernia", "Emphysema", "azygos lobe", "Hydropneumothorax", "Kyphosis", "Mass", "Pneumothorax",
    "Subcutaneous Emphysema", "pneumoperitoneo", "vascular hilar enlargement",
    "vertebral degenerative changes", "hyperinflated lung", "interstitial pattern",
    "central venous catheter", "hypoexpansion", "bronchiectasis", "hemidiaphragm elevation",
    "sternotomy", "calcified densities",
)
SIZE = 64


def _prevalence(num: int) -> np.ndarray:
    # Zipf-like tail over the 29 findings: 0.30 * k^-1.1, k = 1..29.
    return 0.30 * np.arange(1, num + 1, dtype=np.float64) ** -1.1


def _label_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    c = len(CLASS_NAMES)
    labels = np.zeros((n, c), dtype=np.int64)
    prev = _prevalence(c - 1)
    for i in range(n):
        if rng.random() < 0.25:
            labels[i, 0] = 1
            continue
        active = rng.random(c - 1) < prev
        if not active.any():
            active[int(rng.choice(c - 1, p=prev / prev.sum()))] = True
        labels[i, 1:] = active
    # Every class gets at least two positives so AP is defined on small splits.
    for k in range(c):
        while labels[:, k].sum() < min(2, n):
            i = int(rng.integers(n))
            if k == 0:
                labels[i] = 0
                labels[i, 0] = 1
            else:
                labels[i, 0] = 0
                labels[i, k] = 1
    return labels


def write(out_dir: Path, n: int = 240, seed: int = 0) -> dict:
    """Write a synthetic PadChest of ``n`` images (plus one corrupted file).

    Args:
        out_dir: destination folder (created).
        n: number of valid images (>= 8).
        seed: RNG seed; the output is a pure function of (n, seed).

    Returns:
        ``{"labels_csv", "image_dir", "corrupted_csv", "removal_csv", "num_images", "num_classes",
        "removed"}``.
    """
    if n < 8:
        raise ValueError(f"padchest: need n >= 8 images, got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    labels = _label_rows(n, rng)
    image_dir = out_dir / "images"
    num_patients = max(2, int(n * 0.6))
    patients = [f"{int(rng.integers(10**9, 10**10))}{p:05d}" for p in range(num_patients)]
    rows = []
    for i in range(n):
        patient = patients[int(rng.integers(num_patients))] if i >= num_patients else patients[i]
        image_id = f"{patient}_{i:05d}-{int(rng.integers(100, 999))}.png"
        img = render_multilabel(np.flatnonzero(labels[i]).tolist(), len(CLASS_NAMES), SIZE, rng, mode="L")
        # 12-bit-like dynamic range with an offset, as 16-bit radiographs look before windowing.
        arr = np.asarray(img, dtype=np.uint16) * np.uint16(12) + np.uint16(int(rng.integers(500, 3000)))
        save_png(Image.fromarray(arr), image_dir / image_id, bits=16)
        date = f"20{int(rng.integers(10, 16))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        rows.append([image_id, date, patient, *labels[i].tolist()])
    # A truncated PNG listed in corrupted_images.csv, and two valid images listed in Removal.csv.
    bad_id = f"{patients[0]}_corrupt-000.png"
    buf = io.BytesIO()
    Image.new("L", (SIZE, SIZE)).save(buf, format="PNG")
    write_bytes(image_dir / bad_id, buf.getvalue()[:40])
    rows.append([bad_id, "20120101", patients[0], 1, *([0] * (len(CLASS_NAMES) - 1))])
    removal_ids = [rows[1][0], rows[2][0]]

    labels_csv = out_dir / "CXRLT_2026_training.csv"
    write_csv(labels_csv, ["ImageID", "StudyDate_DICOM", "PatientID", *CLASS_NAMES], rows)
    write_csv(out_dir / "corrupted_images.csv", ["ImageID"], [[bad_id]])
    write_csv(out_dir / "Removal.csv", ["ImageID"], [[r] for r in removal_ids])
    return {
        "labels_csv": str(labels_csv),
        "image_dir": str(image_dir),
        "corrupted_csv": str(out_dir / "corrupted_images.csv"),
        "removal_csv": str(out_dir / "Removal.csv"),
        "num_images": n + 1,
        "num_classes": len(CLASS_NAMES),
        "removed": 3,
    }
