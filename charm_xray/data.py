"""NIH ChestX-ray14 for CHARM-Xray: the table, the three split protocols and the fastai-like
transforms (charm_xray.md §3).

Split protocols (``--split``):

* ``charm_notebook`` (what produced the published 0.8752): phase 1 keeps the rows with at least one
  finding, splits their unique patients 80/20 with ``train_test_split(random_state=85)``, then
  fastai's ``RandomSplitter(valid_pct=0.125, seed=85)`` carves the validation part out of train_val;
  phase 2 re-splits all rows the same way; the "test" score is taken on the 12.5 % RandomSplitter
  "valid" part of the phase-2 test patients' images. Phase-2 test patients whose images were trained on
  in phase 1 are counted and reported (quirk 12).
* ``official``: ``train_val_list.txt`` / ``test_list.txt``; the validation part is a patient-disjoint
  ``valid_pct`` of the train_val patients; phase 1 keeps the rows with findings (as the notebooks);
  the whole test list is scored.
* ``test_checkpoint``: ``test_checkpoint.py``'s own protocol: the whole CSV (optionally
  ``df.sample(n, random_state=42)``), RandomSplitter(0.2, seed 42), the "valid" part scored; it may
  score training images (quirk 21).

Labels come from ``Finding Labels`` split on ``|`` with exact names (the original tests substrings,
quirk 24; for the 14 NIH names both give the same vector, and exact names reject misspellings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torchvision import transforms as T

from charm_xray import config
from common.data.datasets import MultiLabelImageDataset
from common.data.formats.chestxray14 import read_chestxray14
from common.data.lists import ImageRecord
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SPLITS = ("charm_notebook", "official", "test_checkpoint")
PHASE1_ALL_IMAGES_NOTEBOOK_ERROR = (
    "--phase1_findings_only false is not available with --split charm_notebook: that split is the notebooks' "
    "protocol, whose phase 1 keeps only the images with a finding; use --split official for a phase 1 on every "
    "image")


def load_table(data_dir: str | Path) -> pd.DataFrame:
    """One row per CSV row, in file order: ``Image_Index, path, Patient_ID, has_finding, official,
    labels`` (a tuple of 14 ints), ``source``, ``line``. Errors name the CSV line or the image."""
    records = read_chestxray14(data_dir)
    return pd.DataFrame({
        "Image_Index": [Path(r.path).name for r in records],
        "path": [r.path for r in records],
        "Patient_ID": [r.patient_id for r in records],
        "has_finding": [any(r.labels) for r in records],
        "official": [r.split for r in records],
        "labels": [r.labels for r in records],
        "source": [r.source for r in records],
        "line": [r.line for r in records],
    })


def random_splitter(n: int, valid_pct: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """fastai's ``RandomSplitter``: a torch ``randperm(n)`` after seeding, the first ``int(valid_pct * n)``
    positions are "valid". Uses a private generator, so the global RNG is untouched (fastai reseeds
    the global one)."""
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    perm = torch.randperm(n, generator=gen).numpy()
    cut = int(valid_pct * n)
    return perm[cut:], perm[:cut]


def patient_split(table: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train_test_split`` over the unique ``Patient_ID``s (order of appearance), as the original."""
    patients = table["Patient_ID"].unique()
    train_p, test_p = train_test_split(patients, test_size=test_size, random_state=seed, shuffle=True)
    return table[table["Patient_ID"].isin(set(train_p))], table[table["Patient_ID"].isin(set(test_p))]


@dataclass
class Split:
    """Train / valid / test tables of one phase plus what the protocol reports."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame | None = None


@dataclass
class SplitPlan:
    """Both phases' tables under one protocol and its report (counts, leakage, warnings)."""

    protocol: str
    phase1: Split
    phase2: Split
    report: dict[str, Any] = field(default_factory=dict)


def _counts(split: Split, name: str) -> dict[str, int]:
    out = {f"{name}_train_images": len(split.train), f"{name}_valid_images": len(split.valid),
           f"{name}_train_patients": int(split.train["Patient_ID"].nunique())}
    if split.test is not None:
        out[f"{name}_scored_test_images"] = len(split.test)
        out[f"{name}_scored_test_patients"] = int(split.test["Patient_ID"].nunique())
    return out


def charm_notebook_split(table: pd.DataFrame, *, seed: int = config.SEED, valid_pct: float = config.VALID_PCT,
                         test_size: float = config.PATIENT_TEST_SIZE) -> SplitPlan:
    """The notebooks' protocol (see the module docstring), with the phase-1/phase-2 leakage counted."""
    findings = table[table["has_finding"]]
    tv1, te1 = patient_split(findings, test_size, seed)
    tr1, va1 = random_splitter(len(tv1), valid_pct, seed)
    tv2, te2 = patient_split(table, test_size, seed)
    tr2, va2 = random_splitter(len(tv2), valid_pct, seed)
    _, test_idx = random_splitter(len(te2), valid_pct, seed)
    phase1 = Split(tv1.iloc[tr1], tv1.iloc[va1], te1)
    phase2 = Split(tv2.iloc[tr2], tv2.iloc[va2], te2.iloc[test_idx])
    trained1 = set(phase1.train["Patient_ID"])
    scored = phase2.test
    leaked = scored["Patient_ID"].isin(trained1)
    report = {
        "phase1_patients": int(findings["Patient_ID"].nunique()),
        "phase1_train_val_images": len(tv1), "phase1_test_images": len(te1),
        "phase2_patients": int(table["Patient_ID"].nunique()),
        "phase2_train_val_patients": int(tv2["Patient_ID"].nunique()),
        "phase2_test_patients": int(te2["Patient_ID"].nunique()),
        "phase2_train_val_images": len(tv2), "phase2_test_images": len(te2),
        "test_subset_images": len(scored),
        "leaked_test_patients": int(scored.loc[leaked, "Patient_ID"].nunique()),
        "leaked_test_images": int(leaked.sum()),
        **_counts(phase1, "phase1"), **_counts(phase2, "phase2"),
    }
    report["warnings"] = [
        f"charm_notebook split: scored on the 12.5 % RandomSplitter subset of the test patients' images "
        f"({len(scored)} of {len(te2)}), not the official test list; {report['leaked_test_patients']} of its "
        f"{int(scored['Patient_ID'].nunique())} patients ({report['leaked_test_images']} images) were trained on "
        "in phase 1 (patient leakage, quirk 12)"
    ]
    return SplitPlan("charm_notebook", phase1, phase2, report)


def official_split(table: pd.DataFrame, *, seed: int = config.SEED, valid_pct: float = config.VALID_PCT,
                   phase1_findings_only: bool = True) -> SplitPlan:
    """``train_val_list.txt`` / ``test_list.txt`` with a patient-disjoint validation part."""
    train_val = table[table["official"] == "train_val"]
    test = table[table["official"] == "test"]
    if train_val.empty or test.empty:
        raise ValueError(f"--split official: {len(train_val)} train_val and {len(test)} test images listed; both "
                         "lists must be non-empty")
    train, valid = patient_split(train_val, valid_pct, seed)
    phase2 = Split(train, valid, test)
    if phase1_findings_only:
        phase1 = Split(train[train["has_finding"]], valid[valid["has_finding"]], test)
    else:
        phase1 = Split(train, valid, test)
    report = {**_counts(phase1, "phase1"), **_counts(phase2, "phase2"), "test_subset_images": len(test),
              "leaked_test_patients": 0, "leaked_test_images": 0}
    overlap = set(train_val["Patient_ID"]) & set(test["Patient_ID"])
    report["train_test_shared_patients"] = len(overlap)
    report["warnings"] = [
        "official split: the published CHARM 0.8752 was measured on the notebooks' split (a 12.5 % random "
        "subset of their own patient split, with leakage); this run's AUC is not comparable to it"
    ]
    return SplitPlan("official", phase1, phase2, report)


def test_checkpoint_split(table: pd.DataFrame, *, num_samples: int = 100,
                          valid_pct: float = config.TEST_CHECKPOINT_VALID_PCT,
                          seed: int = config.TEST_CHECKPOINT_SEED) -> pd.DataFrame:
    """``test_checkpoint.py``'s evaluation set: ``df.sample(num_samples, random_state=42)`` of the whole CSV
    (all rows when -1), then the RandomSplitter(0.2, seed 42) "valid" part."""
    if num_samples is not None and num_samples != -1:
        if num_samples < 1:
            raise ValueError(f"--num_samples must be a positive count or -1 (all), got {num_samples}")
        table = table.sample(n=min(num_samples, len(table)), random_state=seed)
    _, valid = random_splitter(len(table), valid_pct, seed)
    if len(valid) == 0:
        raise ValueError(f"--num_samples {num_samples}: the 20 % evaluation part of {len(table)} rows is empty")
    return table.iloc[valid]


def make_split(table: pd.DataFrame, protocol: str, *, seed: int = config.SEED,
               valid_pct: float = config.VALID_PCT, phase1_findings_only: bool = True) -> SplitPlan:
    """The plan for ``--split`` ``charm_notebook`` or ``official``. ``phase1_findings_only=False`` (phase 1
    on every image) exists for ``official`` only: the notebooks' phase 1 has findings only."""
    if protocol == "charm_notebook":
        if not phase1_findings_only:
            raise ValueError(PHASE1_ALL_IMAGES_NOTEBOOK_ERROR)
        return charm_notebook_split(table, seed=seed, valid_pct=valid_pct)
    if protocol == "official":
        return official_split(table, seed=seed, valid_pct=valid_pct, phase1_findings_only=phase1_findings_only)
    raise ValueError(f"--split: unknown '{protocol}' (choose from charm_notebook, official)")


# ----------------------------------------------------------------------------------------------
# transforms (fastai item_tfms Resize + batch_tfms Flip, Rotate, Normalize; §3.4)


class RandomRotateReflect:
    """fastai's ``Rotate(max_deg=10, p=0.5)``: with probability ``p`` rotate by a uniform angle in
    [-max_deg, max_deg] degrees, filling from the reflected image (fastai's default
    ``pad_mode="reflection"``; torchvision's ``RandomRotation`` can only fill a constant)."""

    def __init__(self, max_deg: float = 10.0, p: float = 0.5):
        self.max_deg = max_deg
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        angle = math.radians(float(torch.empty(()).uniform_(-self.max_deg, self.max_deg)))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=img.dtype).unsqueeze(0)
        grid = F.affine_grid(theta, [1, *img.shape], align_corners=False)
        return F.grid_sample(img.unsqueeze(0), grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False).squeeze(0)


def build_transform(image_size: int | tuple[int, int], *, train: bool) -> T.Compose:
    """Resize to ``image_size`` (square NIH images: fastai's crop-resize is a plain resize), then for
    training a horizontal flip (p 0.5) and a reflect-padded rotation (<= 10 degrees, p 0.5), then
    ImageNet normalisation."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    steps: list = [T.Resize(hw, antialias=True), T.ToTensor()]
    if train:
        steps += [T.RandomHorizontalFlip(0.5), RandomRotateReflect(10.0, 0.5)]
    steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


def to_records(frame: pd.DataFrame) -> list[ImageRecord]:
    return [ImageRecord((p,), tuple(float(v) for v in labels), s, line)
            for p, labels, s, line in zip(frame["path"], frame["labels"], frame["source"], frame["line"])]


def build_dataset(frame: pd.DataFrame, image_size: int | tuple[int, int], *, train: bool) -> MultiLabelImageDataset:
    """Images as RGB (fastai's ``PILImage``), labels in ``DISEASE_LABELS`` order."""
    if frame.empty:
        raise ValueError("an empty split: the data set is too small for this protocol")
    return MultiLabelImageDataset(to_records(frame), build_transform(image_size, train=train), image_mode="RGB")
