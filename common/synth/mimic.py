"""Synthetic MIMIC-CXR-JPG in the layout the CXR-LT stage-1 trainer reads (``cxrlt/train_stage1.py``).

Writes under ``out_dir``:
- ``mimic-cxr-2.0.0-chexpert.csv``: ``subject_id, study_id`` + the 14 CheXpert columns, one row per
  study, cells ``1.0`` / ``0.0`` / ``-1.0`` (uncertain) / blank (not mentioned).
- ``mimic-cxr-2.0.0-split.csv``: ``dicom_id, study_id, subject_id, split`` (train / validate / test,
  split by subject).
- ``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg``: 8-bit grey JPEGs showing a digit glyph per finding.
  Uncertain findings are drawn half of the time; "No Finding" is set when nothing else is positive.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.synth.render import render_multilabel, write_bytes, write_csv

CLASS_NAMES = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
NO_FINDING = CLASS_NAMES.index("No Finding")
SIZE = 64


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.1f}"


def write(out_dir: Path, n: int = 200, seed: int = 0) -> dict:
    """Write about ``n`` synthetic MIMIC-CXR-JPG images (1-2 per study, 1-2 studies per subject).

    Args:
        out_dir: destination folder (created).
        n: number of images (>= 10).
        seed: RNG seed; the output is a pure function of (n, seed).

    Returns:
        ``{"labels_csv", "split_csv", "image_root", "num_images", "num_studies", "num_classes"}``.
    """
    if n < 10:
        raise ValueError(f"mimic: need n >= 10 images, got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    c = len(CLASS_NAMES)
    prev = 0.35 * np.arange(1, c, dtype=np.float64) ** -0.9
    rng.shuffle(prev)
    label_rows, split_rows = [], []
    images = 0
    subject = 10000000 + int(rng.integers(0, 9 * 10**6))
    study = 50000000 + int(rng.integers(0, 10**6))
    while images < n:
        subject += int(rng.integers(1, 500))
        split = str(rng.choice(["train", "validate", "test"], p=[0.7, 0.15, 0.15]))
        for _ in range(int(rng.integers(1, 3))):
            study += int(rng.integers(1, 1000))
            findings = [k for k in range(c) if k != NO_FINDING]
            values = np.full(c, np.nan)
            present = []
            for j, k in enumerate(findings):
                u = rng.random()
                if u < prev[j]:
                    values[k] = 1.0
                    present.append(k)
                elif u < prev[j] * 1.3:
                    values[k] = -1.0
                    if rng.random() < 0.5:
                        present.append(k)
                elif u < prev[j] * 1.3 + 0.05:
                    values[k] = 0.0
            if not (values == 1.0).any():
                values[NO_FINDING] = 1.0
                present = [NO_FINDING] + [k for k in present if values[k] < 0][:1]
            label_rows.append([subject, study, *[_cell(v) for v in values]])
            for _ in range(int(rng.integers(1, 3))):
                dicom = "-".join(f"{int(rng.integers(0, 16**8)):08x}" for _ in range(5))
                sid = str(subject)
                path = out_dir / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}" / f"{dicom}.jpg"
                img = render_multilabel(present, c, SIZE, rng, mode="L")
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=95)
                write_bytes(path, buf.getvalue())
                split_rows.append([dicom, study, subject, split])
                images += 1

    labels_csv = out_dir / "mimic-cxr-2.0.0-chexpert.csv"
    split_csv = out_dir / "mimic-cxr-2.0.0-split.csv"
    write_csv(labels_csv, ["subject_id", "study_id", *CLASS_NAMES], label_rows)
    write_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    return {
        "labels_csv": str(labels_csv),
        "split_csv": str(split_csv),
        "image_root": str(out_dir),
        "num_images": images,
        "num_studies": len(label_rows),
        "num_classes": c,
    }
