"""Synthetic NIH ChestX-ray14 in the Kaggle layout read by :func:`common.data.formats.read_chestxray14`.

Writes, under ``out_dir``:

* ``Data_Entry_2017.csv``: the real header (ending in a comma, bracketed headers spanning two fields)
  and rows like ``00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,``;
  findings are sorted names joined by ``|`` or ``No Finding``;
* ``train_val_list.txt`` / ``test_list.txt``: a patient-level split (about 20 % of patients in test);
* ``images_001/images/...``, ``images_002/images/...``, ...: 8-bit grayscale 64 px PNGs (real: 1024 px),
  up to three folders so the multi-folder glob is exercised.

Pixels: one real digit glyph per finding (class k of ``DISEASE_LABELS`` -> render class k, L mode);
``No Finding`` images show background only. About 35 % of images are ``No Finding`` (real: 54 %, fewer
here so tiny sets stay learnable); the rest carry 1 (70 %), 2 (22 %) or 3 findings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.data.formats.chestxray14 import (
    CSV_NAME,
    DISEASE_LABELS,
    NO_FINDING,
    TEST_LIST,
    TRAIN_VAL_LIST,
)
from common.synth.render import render_multilabel, save_png, write_text

DEFAULT_N = 120
IMAGE_SIZE = 64
NO_FINDING_FRACTION = 0.35
TEST_PATIENT_FRACTION = 0.2
MAX_FOLDERS = 3
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def write(out_dir: Path, n: int, seed: int) -> dict:
    """Write ``n`` synthetic ChestX-ray14 images with the CSV and official-style split lists.

    Args:
        out_dir: data set root (created).
        n: number of images (>= 10 so both splits get patients).
        seed: NumPy seed; the output is a pure function of (n, seed).

    Returns:
        ``{"format", "root", "num_classes", "images", "patients", "counts": {"train_val", "test"},
        "test_patients", "folders"}``.
    """
    if n < 10:
        raise ValueError(f"chestxray14 synth: n must be >= 10, got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    num_classes = len(DISEASE_LABELS)

    # Patients with 1-3 follow-ups each until n images are allotted.
    visits: list[int] = []
    while sum(visits) < n:
        visits.append(min(int(rng.integers(1, 4)), n - sum(visits)))
    num_patients = len(visits)
    n_test = max(1, round(TEST_PATIENT_FRACTION * num_patients))
    test_patients = set((rng.permutation(num_patients)[:n_test] + 1).tolist())

    per_folder = math.ceil(n / min(MAX_FOLDERS, n))
    rows, lists = [], {"train_val": [], "test": []}
    i = 0
    for patient, count in enumerate(visits, start=1):
        age = int(rng.integers(1, 95))
        gender = "M" if rng.random() < 0.56 else "F"
        for follow_up in range(count):
            name = f"{patient:08d}_{follow_up:03d}.png"
            if rng.random() < NO_FINDING_FRACTION:
                active: list[int] = []
            else:
                k = int(rng.choice([1, 2, 3], p=[0.70, 0.22, 0.08]))
                active = sorted(rng.choice(num_classes, size=k, replace=False).tolist())
            findings = "|".join(sorted(DISEASE_LABELS[c] for c in active)) or NO_FINDING
            view = "PA" if rng.random() < 0.6 else "AP"
            width, height = (int(v) for v in rng.integers(1800, 3100, size=2))
            spacing = float(rng.choice([0.139, 0.143, 0.168]))
            rows.append(
                f"{name},{findings},{follow_up},{patient},{age + follow_up // 2},{gender},{view},"
                f"{width},{height},{spacing},{spacing},"
            )
            img = render_multilabel(active, num_classes, IMAGE_SIZE, rng, mode="L")
            save_png(img, out_dir / f"images_{i // per_folder + 1:03d}" / "images" / name)
            lists["test" if patient in test_patients else "train_val"].append(name)
            i += 1

    write_text(out_dir / CSV_NAME, "\n".join([HEADER, *rows]) + "\n")
    write_text(out_dir / TRAIN_VAL_LIST, "\n".join(sorted(lists["train_val"])) + "\n")
    write_text(out_dir / TEST_LIST, "\n".join(sorted(lists["test"])) + "\n")
    return {
        "format": "chestxray14",
        "root": str(out_dir),
        "num_classes": num_classes,
        "images": n,
        "patients": num_patients,
        "counts": {split: len(names) for split, names in lists.items()},
        "test_patients": n_test,
        "folders": math.ceil(n / per_folder),
    }
