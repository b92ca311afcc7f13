"""DvXray split lists, dual-view datasets and the ``--aug_mode`` training transforms (MCB-U ``datasets.py``).

List format (``annotations/DvXray_{train,val,test}.txt``), one pair per line:
``<OL view path> <SD view path> <num_classes comma-separated 0/1>`` (space-separated labels are also
accepted). Relative image paths are resolved against the working directory, as in the original, or
against ``--data_root`` when given. Errors name the list file and line (bad lines) or the image and
the line that listed it (missing/corrupt images). Every listed image is checked for existence when the
dataset is built, so a missing file stops the run before training with a one-line error.

Both views of a pair get identical random augmentation parameters (``common.data.DualViewPairDataset``
reseeds the RNGs with one per-sample seed before each view). Validation is resize-only.

Training transforms (``dvxray.md`` §9):
  none           Resize
  standard       RRC(0.8-1, ratio 3/4-4/3) -> HFlip -> ColorJitter(0.1, 0.1, 0.1, 0.05)
  conditional    pairs containing a hard class {Scissors, Lighter, Razor_blade, Knife}:
                 RRC(0.6-1) -> HFlip -> Rotation(15) -> ColorJitter(0.2, 0.2, 0.2); others: standard
  conditional_1  RRC(max(0.6, 0.6 + 0.1 * epoch / epochs)-1) -> HFlip -> ColorJitter(0.15, 0.15, 0.15, 0.08)
  conditional_2  as conditional, but after each validation the 3 lowest-AP classes become the hard set
  conditional_3  as conditional with hard set {Lighter, Razor_blade}
  conditional_4  normal RRC(0.8-1) + HFlip + CJ(0.1, 0.1, 0.1, 0.05); strong RRC(0.7-1) + HFlip + Rot(10)
                 + CJ(0.15, 0.15, 0.15)
  rand_aug       RRC(0.8-1) + HFlip + RandAugment(n, m)
  trivial_aug    RRC(0.8-1) + HFlip + TrivialAugmentWide
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchvision import transforms as T

from common.data.datasets import DualViewPairDataset
from common.data.errors import DataError
from common.data.lists import ImageRecord, read_image_label_list, read_name_list
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform

AUG_MODES = ("none", "standard", "conditional", "conditional_1", "conditional_2", "conditional_3",
             "conditional_4", "rand_aug", "trivial_aug")
HARD_CLASSES = ("Scissors", "Lighter", "Razor_blade", "Knife")
HARD_CLASSES_3 = ("Lighter", "Razor_blade")


def read_classes(path: str | Path, num_classes: int) -> list[str]:
    """Class names, one per line; their count must equal ``--num_classes``."""
    names = read_name_list(path)
    if len(names) != num_classes:
        raise DataError(f"{path}: {len(names)} class names, but --num_classes is {num_classes}")
    return names


def read_dvxray_list(path: str | Path, num_classes: int, root: str | Path | None = None) -> list[ImageRecord]:
    """Parse a DvXray split file into (OL, SD, labels) records (line-numbered ``ParseError`` on bad lines)."""
    return read_image_label_list(path, num_paths=2, num_classes=num_classes, root=root or None)


def _finish(ops: list) -> T.Compose:
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _rrc(size: int, lo: float) -> T.RandomResizedCrop:
    return T.RandomResizedCrop(size, scale=(lo, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)


class TrainTransformPolicy:
    """Picklable ``record -> transform`` chooser for ``--aug_mode`` (the dataset's ``choose_transform``).

    Args:
        aug_mode: one of AUG_MODES.
        input_size: output side.
        class_names: label-order names (the conditional modes define their hard set by name).
        epochs: total epochs (progressive ``conditional_1``).
        rand_aug_n, rand_aug_m: RandAugment settings.
    """

    def __init__(self, aug_mode: str, input_size: int, class_names: Sequence[str], *, epochs: int = 1,
                 rand_aug_n: int = 2, rand_aug_m: int = 9, classes_file: str = "classes file"):
        if aug_mode not in AUG_MODES:
            raise ValueError(f"--aug_mode: unknown mode '{aug_mode}' (choose from {', '.join(AUG_MODES)})")
        self.aug_mode = aug_mode
        self.size = input_size
        self.class_names = list(class_names)
        self.classes_file = classes_file
        self.epochs = max(1, epochs)
        self.epoch = 0
        s = input_size
        standard = [_rrc(s, 0.8), T.RandomHorizontalFlip(), T.ColorJitter(0.1, 0.1, 0.1, 0.05)]
        self.normal: T.Compose
        self.strong: T.Compose | None = None
        if aug_mode == "none":
            self.normal = _finish([T.Resize((s, s), antialias=True)])
        elif aug_mode == "rand_aug":
            self.normal = _finish([_rrc(s, 0.8), T.RandomHorizontalFlip(), T.RandAugment(rand_aug_n, rand_aug_m)])
        elif aug_mode == "trivial_aug":
            self.normal = _finish([_rrc(s, 0.8), T.RandomHorizontalFlip(), T.TrivialAugmentWide()])
        elif aug_mode == "conditional_4":
            self.normal = _finish(standard)
            self.strong = _finish([_rrc(s, 0.7), T.RandomHorizontalFlip(), T.RandomRotation(10),
                                   T.ColorJitter(0.15, 0.15, 0.15)])
        else:
            self.normal = _finish(standard)
            self.strong = _finish([_rrc(s, 0.6), T.RandomHorizontalFlip(), T.RandomRotation(15),
                                   T.ColorJitter(0.2, 0.2, 0.2)])
        self.hard: set[int] = set()
        if aug_mode in ("conditional", "conditional_2", "conditional_4"):
            self.set_hard_classes(HARD_CLASSES)
        elif aug_mode == "conditional_3":
            self.set_hard_classes(HARD_CLASSES_3)

    def set_hard_classes(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.class_names]
        if missing:
            raise DataError(f"{self.classes_file}: --aug_mode {self.aug_mode} needs classes {missing}, "
                            f"which are not in the class list")
        self.hard = {self.class_names.index(n) for n in names}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, record: ImageRecord) -> T.Compose:
        if self.aug_mode == "conditional_1":
            lo = max(0.6, 0.6 + 0.1 * self.epoch / self.epochs)
            return _finish([_rrc(self.size, lo), T.RandomHorizontalFlip(), T.ColorJitter(0.15, 0.15, 0.15, 0.08)])
        if self.strong is not None and any(record.labels[c] > 0 for c in self.hard):
            return self.strong
        return self.normal


def check_images_exist(records: Sequence[ImageRecord]) -> None:
    """Fail before training, with a one-line error naming the first missing image and its list line.

    Without this a missing file surfaces inside a DataLoader worker, whose re-raised error carries the
    worker traceback in its message, possibly hours into training (the original did not check either).
    A stat per file (32,000 for the full DvXray lists) is cheap next to one epoch.
    """
    for record in records:
        for path in record.paths:
            if not Path(path).is_file():
                where = f" (listed at {record.source}:{record.line})" if record.where else ""
                raise DataError(f"image not found: {path}{where}")


def build_dataset(list_file: str | Path, *, num_classes: int, train: bool, input_size: int,
                  policy: TrainTransformPolicy | None = None, data_root: str | Path | None = None
                  ) -> DualViewPairDataset:
    """Dual-view dataset over a split file: training uses ``policy``, evaluation resize-only."""
    records = read_dvxray_list(list_file, num_classes, data_root)
    check_images_exist(records)
    if train:
        if policy is None:
            raise ValueError("build_dataset: a training dataset needs a TrainTransformPolicy")
        return DualViewPairDataset(records, None, choose_transform=policy)
    return DualViewPairDataset(records, build_eval_transform(input_size))


def describe_data(root: str | Path, **opts: str):
    """The DvXray folder as ``main_finetune.py`` / ``eval_only.py`` read it, for ``python -m common.data.check dvxray``.

    ``root`` is the folder the original commands run in (``annotations/`` and ``data/``). Options, as
    the trainer's flags: ``train_list``, ``val_list``, ``test_list`` (relative to ``root``; defaults
    ``annotations/DvXray_{train,val,test}.txt``, the test list is optional), ``classes_file``,
    ``num_classes`` (15) and ``data_root`` (what relative image paths are joined to; default ``root``).
    A sample is its OL path as listed.
    """
    import os

    from common.data.description import DatasetDescription, SplitSamples, positives, take_options

    o = {"train_list": "annotations/DvXray_train.txt", "val_list": "annotations/DvXray_val.txt",
         "test_list": "annotations/DvXray_test.txt", "classes_file": "annotations/classes.txt", "num_classes": 15,
         **take_options(opts, {"train_list": str, "val_list": str, "test_list": str, "classes_file": str,
                               "num_classes": int, "data_root": str})}
    root = Path(root)
    data_root = root / o.get("data_root", "")
    class_names = read_classes(root / o["classes_file"], o["num_classes"])
    splits, notes = {}, []
    for split in ("train", "val", "test"):
        path = root / o[f"{split}_list"]
        if split == "test" and not path.is_file():
            notes.append(f"{path}: not found; the test split is not checked (main_finetune.py reads train and val only)")
            continue
        records = read_dvxray_list(path, o["num_classes"], data_root)
        splits[split] = SplitSamples(
            ids=[os.path.normpath(os.path.relpath(r.paths[0], data_root)) for r in records],
            files=[r.paths for r in records], labels=[positives(r.labels) for r in records],
            sources=[f"{r.source}:{r.line}" for r in records])
    return DatasetDescription("dvxray", root, splits, class_names, notes=notes)
