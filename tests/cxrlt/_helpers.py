"""Small data writers shared by the cxrlt tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from common.synth.render import render_multilabel, save_png

PREVALENCE = (0.5, 0.3, 0.2, 0.12, 0.08, 0.05)


def write_longtail_padchest(root: Path, n: int, size: int = 32, seed: int = 0,
                            prevalence=PREVALENCE) -> list[str]:
    """PadChest-layout CSV (ImageID, StudyDate_DICOM, PatientID + classes) with 16-bit digit images."""
    rng = np.random.default_rng(seed)
    names = [f"class_{k}" for k in range(len(prevalence))]
    rows = []
    for i in range(n):
        active = [k for k, p in enumerate(prevalence) if rng.random() < p]
        img = render_multilabel(active, len(prevalence), size, rng, mode="L")
        arr = np.asarray(img, dtype=np.uint16) * np.uint16(16) + np.uint16(1000)
        image_id = f"img_{i:05d}.png"
        save_png(Image.fromarray(arr), root / "images" / image_id, bits=16)
        label = [1 if k in active else 0 for k in range(len(prevalence))]
        rows.append([image_id, "20150101", f"pat{i // 2:05d}", *label])
    with open(root / "CXRLT_2026_training.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "StudyDate_DICOM", "PatientID", *names])
        w.writerows(rows)
    return names
