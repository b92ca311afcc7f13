"""Data of the CXR-LT 2026 Task 1 code: PadChest (stage 2) and MIMIC-CXR-JPG (stage 1) readers, the
original image decoding (percentile rescale of 16-bit images) and the albumentations pipelines
re-implemented with NumPy / torchvision (reference cxrlt.md sections 3 and 6).

Differences from the original: images are read with PIL instead of OpenCV (same pixel values for
PNG/JPEG grey and RGB files); an unreadable or missing image raises ``DataError`` naming the file unless
``bad_image="zeros"`` (the original's silent all-zero 512x512 image) is chosen; CLAHE is a NumPy
re-implementation of OpenCV's; CoarseDropout hole size scales with the image side (24 px at 512).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import GroupShuffleSplit
from torch.utils.data import Dataset

from common.data.errors import DataError, ParseError
from common.data.lists import check_consistent_duplicates, csv_line, read_csv
from common.preprocessing import percentile_rescale  # noqa: F401 - the original's 16-bit rescale, shared with predict.py

_logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PADCHEST_META_COLUMNS = ("ImageID", "StudyDate_DICOM", "PatientID")
BAD_IMAGE_POLICIES = ("error", "zeros")
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")


# ---------------------------------------------------------------------------------------------------
# decoding


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode in ("I", "F"):
        return np.asarray(img)
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


def read_cxr(path: str | Path, *, bad_image: str = "error", size: int = 512) -> np.ndarray:
    """Read an image as the original training / ``inference.py`` does: H x W x 3 uint8 RGB.

    Grey images of any depth are percentile-rescaled when not 8-bit and replicated to 3 channels.

    Args:
        path: image file.
        bad_image: "error" raises ``DataError`` naming the file; "zeros" returns a black ``size`` x
            ``size`` image with a warning (the original's behaviour).
        size: side of the zero image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = _pil_to_array(img)
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if bad_image == "zeros":
            _logger.warning("cannot read image %s (%s); using a black image as the original does", path, exc)
            return np.zeros((size, size, 3), dtype=np.uint8)
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        raise DataError(f"image {reason}: {path}") from None
    arr = percentile_rescale(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def read_gray_like_cv2(path: str | Path, *, rescale_16bit: bool = True) -> np.ndarray:
    """The model card's ``cv2.imread(path, IMREAD_GRAYSCALE)``: 8-bit grey, colour images as ITU-R 601 luma.

    A 16-bit (or 32-bit integer) grey image is percentile-rescaled to 8 bits as the original training and
    ``inference.py`` do (``percentile_rescale``) when ``rescale_16bit``; otherwise it keeps its high byte,
    which is what OpenCV's 8-bit conversion (libpng strip-16) gives the model card's snippet.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img)
                if rescale_16bit:
                    return percentile_rescale(arr)
                return np.clip(arr.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
            return np.asarray(img.convert("L"))
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        raise DataError(f"image {reason}: {path}") from None


# ---------------------------------------------------------------------------------------------------
# augmentation


def clahe(channel: np.ndarray, clip_limit: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of one uint8 channel (OpenCV's algorithm:
    per-tile clipped histograms, excess redistributed evenly, bilinear blend of tile mappings)."""
    h, w = channel.shape
    th, tw = math.ceil(h / grid), math.ceil(w / grid)
    padded = np.pad(channel, ((0, th * grid - h), (0, tw * grid - w)), mode="reflect") \
        if (th * grid != h or tw * grid != w) else channel
    tiles = padded.reshape(grid, th, grid, tw).transpose(0, 2, 1, 3).reshape(grid, grid, th * tw)
    area = th * tw
    limit = max(1, int(clip_limit * area / 256))
    luts = np.empty((grid, grid, 256), dtype=np.float32)
    for i in range(grid):
        for j in range(grid):
            hist = np.bincount(tiles[i, j], minlength=256).astype(np.int64)
            excess = np.maximum(hist - limit, 0).sum()
            hist = np.minimum(hist, limit) + excess // 256
            luts[i, j] = np.clip(np.cumsum(hist) * (255.0 / area), 0, 255)
    fy = (np.arange(h) + 0.5) / th - 0.5
    fx = (np.arange(w) + 0.5) / tw - 0.5
    y0 = np.clip(np.floor(fy).astype(int), 0, grid - 1)
    x0 = np.clip(np.floor(fx).astype(int), 0, grid - 1)
    y1 = np.clip(y0 + 1, 0, grid - 1)
    x1 = np.clip(x0 + 1, 0, grid - 1)
    wy = np.clip(fy - y0, 0, 1)[:, None]
    wx = np.clip(fx - x0, 0, 1)[None, :]
    v = channel.astype(np.int64)
    top = luts[y0[:, None], x0[None, :], v] * (1 - wx) + luts[y0[:, None], x1[None, :], v] * wx
    bot = luts[y1[:, None], x0[None, :], v] * (1 - wx) + luts[y1[:, None], x1[None, :], v] * wx
    return np.clip(np.rint(top * (1 - wy) + bot * wy), 0, 255).astype(np.uint8)


def _rand(a: float, b: float) -> float:
    return float(torch.empty(()).uniform_(a, b))


def _coin(p: float) -> bool:
    return float(torch.rand(())) < p


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 / [0, 255] float C x H x W -> ImageNet-normalised float."""
    x = img.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def resize_uint8(arr: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x size x size uint8 tensor, bilinear (OpenCV INTER_LINEAR, no antialias)."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    return TF.resize(t, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


class EvalTransform:
    """Validation / inference: Resize (linear) + ImageNet Normalize."""

    def __init__(self, size: int = 512):
        self.size = size

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        return normalize(resize_uint8(arr, self.size))


class TrainTransform:
    """The stage-2 training pipeline (cxrlt.md 3.2), parameters as in the original.

    Resize; HorizontalFlip 0.5; ShiftScaleRotate(0.03, 0.05, 7 deg, p 0.4, border 0); CLAHE(2.0, 8x8,
    p 0.2); RandomBrightnessContrast(0.08, 0.08, p 0.2); GaussNoise(var 1-5, p 0.15); CoarseDropout(6
    holes of 24x24 at 512 px, p 0.15); Normalize. Randomness comes from torch's RNG (seeded per worker).
    """

    def __init__(self, size: int = 512, *, shift: float = 0.03, scale: float = 0.05, rotate: float = 7.0,
                 p_affine: float = 0.4, p_clahe: float = 0.2, brightness: float = 0.08, contrast: float = 0.08,
                 p_brightness: float = 0.2, p_noise: float = 0.15, p_dropout: float = 0.15):
        self.size = size
        self.shift, self.scale, self.rotate, self.p_affine = shift, scale, rotate, p_affine
        self.p_clahe = p_clahe
        self.brightness, self.contrast, self.p_brightness = brightness, contrast, p_brightness
        self.p_noise, self.p_dropout = p_noise, p_dropout
        self.hole = max(1, round(24 * size / 512))

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        img = resize_uint8(arr, self.size)
        if _coin(0.5):
            img = TF.horizontal_flip(img)
        if _coin(self.p_affine):
            s = self.size
            img = TF.affine(img, angle=_rand(-self.rotate, self.rotate),
                            translate=[_rand(-self.shift, self.shift) * s, _rand(-self.shift, self.shift) * s],
                            scale=1.0 + _rand(-self.scale, self.scale), shear=[0.0, 0.0],
                            interpolation=TF.InterpolationMode.BILINEAR, fill=0)
        if _coin(self.p_clahe):
            np_img = img.numpy()
            img = torch.from_numpy(np.stack([clahe(c) for c in np_img]))
        x = img.float()
        if _coin(self.p_brightness):
            alpha = 1.0 + _rand(-self.contrast, self.contrast)
            beta = _rand(-self.brightness, self.brightness) * 255.0
            x = (x * alpha + beta).clamp(0, 255)
        if _coin(self.p_noise):
            sigma = math.sqrt(_rand(1.0, 5.0))
            x = (x + torch.randn_like(x) * sigma).clamp(0, 255)
        if _coin(self.p_dropout):
            for _ in range(6):
                top = int(torch.randint(0, self.size - self.hole + 1, ()))
                left = int(torch.randint(0, self.size - self.hole + 1, ()))
                x[:, top:top + self.hole, left:left + self.hole] = 0
        return normalize(x)


class Stage1TrainTransform:
    """Augmentation of the older MLP-head script (used for stage 1): Resize, HorizontalFlip 0.5,
    ShiftScaleRotate(0.05, 0.05, 10 deg, p 0.5), RandomBrightnessContrast(0.1, 0.1, p 0.2), Normalize."""

    def __init__(self, size: int = 512):
        self.inner = TrainTransform(size, shift=0.05, scale=0.05, rotate=10.0, p_affine=0.5, p_clahe=0.0,
                                    brightness=0.1, contrast=0.1, p_brightness=0.2, p_noise=0.0, p_dropout=0.0)

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        return self.inner(arr)


# ---------------------------------------------------------------------------------------------------
# datasets


class CXRDataset(Dataset):
    """Images + multi-hot targets: returns (image tensor, float target vector).

    Args:
        paths: image files.
        labels: N x C float array (-1 marks an ignored uncertain label for stage 1).
        transform: array -> tensor.
        bad_image: see ``read_cxr``.
    """

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, transform, *, bad_image: str = "error",
                 size: int = 512):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} label rows")
        self.paths = [Path(p) for p in paths]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        self.transform = transform
        self.bad_image = bad_image
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr = read_cxr(self.paths[index], bad_image=self.bad_image, size=self.size)
        return self.transform(arr), self.labels[index]


@dataclass
class PadChestSplit:
    """PadChest rows after filtering, split by patient."""

    class_names: list[str]
    train_paths: list[Path]
    train_labels: np.ndarray
    val_paths: list[Path]
    val_labels: np.ndarray
    removed: int
    # ImageID / PatientID per row (the split manifest's ids and patient level)
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    train_patients: list[str] = field(default_factory=list)
    val_patients: list[str] = field(default_factory=list)

    @property
    def class_counts(self) -> np.ndarray:
        """Positives per class in the training part, clipped to >= 1 (as the original)."""
        return np.maximum((self.train_labels > 0.5).sum(axis=0), 1).astype(np.float64)


def _id_list(path: str | Path | None, what: str) -> set[str]:
    if path is None:
        return set()
    path = Path(path)
    if not path.is_file():
        # The original treats both lists as optional; a missing one is logged, not fatal.
        _logger.info("%s list %s not found; nothing removed for it", what, path)
        return set()
    frame = read_csv(path, ["ImageID"], dtype={"ImageID": str})
    return set(frame["ImageID"])


def read_padchest(labels_csv: str | Path, image_dir: str | Path, *, corrupted_csv: str | Path | None = None,
                  removal_csv: str | Path | None = None, val_split: float = 0.1,
                  seed: int = 42) -> PadChestSplit:
    """Read ``CXRLT_2026_training.csv`` as the original stage-2 script does.

    Every column other than ImageID / StudyDate_DICOM / PatientID is a class, in CSV order; label cells
    must be 0 or 1. Rows listed in the corrupted / removal CSVs (column ImageID, each optional) are
    dropped; one GroupShuffleSplit(test_size=val_split, random_state=seed) by PatientID makes train / val.

    Raises:
        ParseError: missing metadata column, no class column, or a label that is not 0/1 (file and line).
    """
    labels_csv = Path(labels_csv)
    frame = read_csv(labels_csv, ["ImageID", "PatientID"], dtype={"ImageID": str, "PatientID": str})
    class_names = [c for c in frame.columns if c not in PADCHEST_META_COLUMNS]
    if not class_names:
        raise ParseError(labels_csv, 1, "no class columns (every column other than "
                                        f"{', '.join(PADCHEST_META_COLUMNS)} is a class)")
    values = frame[class_names].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | ~values.isin([0, 1])
    if bad.to_numpy().any():
        row_pos, col_pos = np.argwhere(bad.to_numpy())[0]
        raw = frame[class_names].iloc[row_pos, col_pos]
        raise ParseError(labels_csv, csv_line(frame.index[row_pos]),
                         f"column {class_names[col_pos]!r}: label must be 0 or 1, got {raw!r}")
    drop = _id_list(corrupted_csv, "corrupted") | _id_list(removal_csv, "removal")
    keep = ~frame["ImageID"].isin(drop).to_numpy()
    removed = int((~keep).sum())
    frame, values = frame[keep].reset_index(drop=True), values[keep].reset_index(drop=True)
    if len(frame) < 2:
        raise DataError(f"{labels_csv}: {len(frame)} usable row(s) after removing {removed}; need at least 2")
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_split, random_state=seed)
    train_idx, val_idx = next(splitter.split(frame, groups=frame["PatientID"]))
    paths = [Path(image_dir) / i for i in frame["ImageID"]]
    labels = values.to_numpy(dtype=np.float32)
    ids, patients = frame["ImageID"].tolist(), frame["PatientID"].tolist()
    return PadChestSplit(class_names, [paths[i] for i in train_idx], labels[train_idx],
                         [paths[i] for i in val_idx], labels[val_idx], removed,
                         [ids[i] for i in train_idx], [ids[i] for i in val_idx],
                         [patients[i] for i in train_idx], [patients[i] for i in val_idx])


@dataclass
class MimicSplit:
    """MIMIC-CXR-JPG images of one or more official splits."""

    class_names: list[str]
    paths: list[Path]
    labels: np.ndarray
    # dicom_id / study_id / subject_id per image (the split manifest's levels)
    ids: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)

    @property
    def class_counts(self) -> np.ndarray:
        return np.maximum((self.labels > 0.5).sum(axis=0), 1).astype(np.float64)


def mimic_image_path(image_root: str | Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` under ``image_root`` (XX = first two subject digits)."""
    sid = str(int(subject_id))
    return Path(image_root) / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{int(study_id)}" / f"{dicom_id}.jpg"


def read_mimic(labels_csv: str | Path, split_csv: str | Path, image_root: str | Path, *,
               splits: Sequence[str], class_names: Sequence[str], uncertain_policy: str = "zeros") -> MimicSplit:
    """Join ``mimic-cxr-2.0.0-chexpert.csv`` (per study) with ``mimic-cxr-2.0.0-split.csv`` (per image).

    Label cells: 1 positive, 0 negative, blank = not mentioned -> 0, -1 uncertain -> ``uncertain_policy``:
    "zeros" (U-Zeros), "ones" (U-Ones) or "ignore" (kept as -1, masked out of the stage-1 loss and
    counted as negative by the metrics). Studies without a label row are dropped with a log line.

    Raises:
        ParseError: missing columns, a row with fewer/more fields than the header, a study listed twice
            with different labels, or a label value outside {1, 0, -1, blank} (file and line).
    """
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"--uncertain_policy: unknown '{uncertain_policy}' (choose from {', '.join(UNCERTAIN_POLICIES)})")
    labels_csv, split_csv = Path(labels_csv), Path(split_csv)
    lab = read_csv(labels_csv, ["subject_id", "study_id", *class_names],
                   dtype={"subject_id": int, "study_id": int, **{c: float for c in class_names}})
    # a study listed twice must not be resolved silently by whichever row ``by_study`` keeps
    check_consistent_duplicates(lab, labels_csv, ["study_id"], ["subject_id", *class_names])
    values = lab[list(class_names)].to_numpy(dtype=np.float64)
    bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ParseError(labels_csv, csv_line(lab.index[r]),
                         f"column {class_names[c]!r}: label must be 1, 0, -1 or blank, got {values[r, c]!r}")
    values = np.nan_to_num(values, nan=0.0)
    if uncertain_policy == "zeros":
        values[values < 0] = 0.0
    elif uncertain_policy == "ones":
        values[values < 0] = 1.0
    by_study = {int(s): values[i] for i, s in enumerate(lab["study_id"])}
    spl = read_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"],
                   dtype={"dicom_id": str, "study_id": int, "subject_id": int, "split": str})
    unknown = sorted(set(spl["split"]) - {"train", "validate", "test"})
    if unknown:
        raise ParseError(split_csv, None, f"column 'split': unknown value(s) {unknown} (expected train/validate/test)")
    spl = spl[spl["split"].isin(list(splits))]
    paths, rows, missing = [], [], 0
    ids, studies, subjects = [], [], []
    for dicom, study, subject in zip(spl["dicom_id"], spl["study_id"], spl["subject_id"]):
        if int(study) not in by_study:
            missing += 1
            continue
        paths.append(mimic_image_path(image_root, subject, study, dicom))
        rows.append(by_study[int(study)])
        ids.append(str(dicom))
        studies.append(str(int(study)))
        subjects.append(str(int(subject)))
    if missing:
        _logger.info("%s: %d image(s) of split(s) %s have no label row in %s; skipped",
                     split_csv, missing, list(splits), labels_csv)
    if not paths:
        raise DataError(f"{split_csv}: no labelled image in split(s) {list(splits)}")
    return MimicSplit(list(class_names), paths, np.stack(rows).astype(np.float32), ids, studies, subjects)


# ---------------------------------------------------------------------------------------------------
# ``python -m common.data.check mimic|padchest ROOT``: the folders as the two stages read them


def describe_mimic(root: str | Path, **opts: str):
    """MIMIC-CXR-JPG as ``train_stage1.py`` reads it: the official ``train`` / ``validate`` / ``test`` splits.

    Options (the stage-1 flags): ``labels_csv``, ``split_csv`` (defaults under ``root``) and
    ``uncertain_policy`` (zeros). Levels: study (``study_id``) and patient (``subject_id``).
    """
    from common.data.description import DatasetDescription, SplitSamples, positives, take_options

    o = take_options(opts, {"labels_csv": str, "split_csv": str, "uncertain_policy": str})
    if o.get("uncertain_policy", "zeros") not in UNCERTAIN_POLICIES:
        from common.data.description import OptionError

        raise OptionError(f"uncertain_policy must be one of {', '.join(UNCERTAIN_POLICIES)}")
    from cxrlt.model import MIMIC_CLASSES

    root = Path(root)
    labels_csv = Path(o.get("labels_csv") or root / "mimic-cxr-2.0.0-chexpert.csv")
    split_csv = Path(o.get("split_csv") or root / "mimic-cxr-2.0.0-split.csv")
    splits, notes = {}, []
    for split in ("train", "validate", "test"):
        try:
            part = read_mimic(labels_csv, split_csv, root, splits=[split], class_names=MIMIC_CLASSES,
                              uncertain_policy=o.get("uncertain_policy", "zeros"))
        except DataError as exc:
            if split != "test" or "no labelled image" not in str(exc):
                raise
            notes.append(f"{exc} (the test split is not read by train_stage1.py)")
            continue
        splits[split] = SplitSamples(ids=part.ids, files=[(str(p),) for p in part.paths],
                                     labels=[positives(v) for v in part.labels],
                                     levels={"study": part.studies, "patient": part.subjects})
    return DatasetDescription("mimic", root, splits, MIMIC_CLASSES, notes=notes)


def describe_padchest(root: str | Path, **opts: str):
    """PadChest (CXR-LT 2026 Task 1) as ``train_stage2.py`` reads it: the rows left after the corrupted /
    removal lists, split train / val by patient (GroupShuffleSplit, ``val_split`` 0.1, ``seed`` 42).

    Options (the stage-2 flags): ``image_base_dir``, ``labels_csv``, ``corrupted_csv``, ``removal_csv``
    (defaults under ``root``), ``val_split``, ``seed``.
    """
    from common.data.description import DatasetDescription, SplitSamples, positives, take_options

    o = take_options(opts, {"image_base_dir": str, "labels_csv": str, "corrupted_csv": str, "removal_csv": str,
                            "val_split": float, "seed": int})
    root = Path(root)
    split = read_padchest(o.get("labels_csv") or root / "CXRLT_2026_training.csv",
                          o.get("image_base_dir") or root / "images",
                          corrupted_csv=o.get("corrupted_csv") or root / "corrupted_images.csv",
                          removal_csv=o.get("removal_csv") or root / "Removal.csv",
                          val_split=o.get("val_split", 0.1), seed=o.get("seed", 42))
    splits = {
        "train": SplitSamples(ids=split.train_ids, files=[(str(p),) for p in split.train_paths],
                              labels=[positives(v) for v in split.train_labels],
                              levels={"patient": split.train_patients}),
        "val": SplitSamples(ids=split.val_ids, files=[(str(p),) for p in split.val_paths],
                            labels=[positives(v) for v in split.val_labels], levels={"patient": split.val_patients}),
    }
    notes = [f"{split.removed} row(s) dropped as listed in corrupted_images.csv / Removal.csv (not checked)"]
    return DatasetDescription("padchest", root, splits, split.class_names, notes=notes)
