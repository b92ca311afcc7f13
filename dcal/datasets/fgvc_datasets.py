"""FGVC datasets for DCAL: CUB-200-2011 reader and the FGVC transforms.

CUB-200-2011 layout (the official archive): ``images.txt`` (``<image_id> <relative path>``),
``image_class_labels.txt`` (``<image_id> <class_id 1..200>``), ``train_test_split.txt``
(``<image_id> <1 = train | 0 = test>``), ``classes.txt`` (``<class_id> <name>``) and
``images/<class folder>/*.jpg``. ``data_root`` may be the ``CUB_200_2011`` folder itself or its
parent (the replication required the parent).

Transforms (paper recipe, dcal.md §8): training resizes to 550 x 550 and random-crops 448 (flip and
colour jitter as in the replication); evaluation resizes to 550 and centre-crops 448, the usual FGVC
protocol (the replication resized straight to 448).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torchvision import transforms as T

from common.data.errors import DataError, ParseError
from common.data.lists import read_lines
from dcal.datasets.base_dataset import Record

logger = logging.getLogger(__name__)

CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_dataset_dir(root: str | Path, subdir: str, marker: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/subdir`` if that does; else DataError."""
    root = Path(root)
    for cand in (root, root / subdir):
        if (cand / marker).exists():
            return cand
    raise DataError(f"data.data_root: no {marker} in {root} or {root / subdir}")


def _id_table(path: Path, what: str) -> dict[int, tuple[str, int]]:
    """Parse ``<int id> <value>`` lines into {id: (value, line)}."""
    table: dict[int, tuple[str, int]] = {}
    for lineno, text in read_lines(path):
        fields = text.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdecimal():
            raise ParseError(path, lineno, f"expected '<id> <{what}>', got {text!r}")
        key = int(fields[0])
        if key in table:
            raise ParseError(path, lineno, f"duplicate id {key} (first at line {table[key][1]})")
        table[key] = (fields[1].strip(), lineno)
    return table


def read_cub200(data_root: str | Path) -> tuple[list[Record], list[Record], list[str]]:
    """Read the CUB-200-2011 train and test splits.

    Args:
        data_root: the ``CUB_200_2011`` folder or its parent.

    Returns:
        ``(train_records, test_records, class_names)``; labels are 0-based (class_id - 1).

    Raises:
        DataError / ParseError: a missing file, or a bad or inconsistent line (names file and line).
    """
    root = find_dataset_dir(data_root, "CUB_200_2011", "images.txt")
    images = _id_table(root / "images.txt", "relative path")
    labels = _id_table(root / "image_class_labels.txt", "class id")
    split = _id_table(root / "train_test_split.txt", "is_training_image")
    classes = _id_table(root / "classes.txt", "class name")
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise ParseError(root / "classes.txt", None, f"class ids must be 1..{len(class_ids)}, got {class_ids[:5]}...")
    class_names = [classes[i][0] for i in class_ids]
    train, test = [], []
    for image_id, (rel, lineno) in images.items():
        if image_id not in labels:
            raise ParseError(root / "images.txt", lineno, f"image id {image_id} has no line in image_class_labels.txt")
        if image_id not in split:
            raise ParseError(root / "images.txt", lineno, f"image id {image_id} has no line in train_test_split.txt")
        label_text, label_line = labels[image_id]
        if not label_text.isdecimal() or not 1 <= int(label_text) <= len(class_names):
            raise ParseError(root / "image_class_labels.txt", label_line,
                             f"class id {label_text!r} not in 1..{len(class_names)}")
        flag, flag_line = split[image_id]
        if flag not in ("0", "1"):
            raise ParseError(root / "train_test_split.txt", flag_line, f"expected 1 (train) or 0 (test), got {flag!r}")
        label = int(label_text) - 1
        rec = Record(path=str(root / "images" / rel), label=label, name=class_names[label],
                     source=(str(root / "images.txt"), lineno))
        (train if flag == "1" else test).append(rec)
    if not train or not test:
        raise DataError(f"{root / 'train_test_split.txt'}: the train split ({len(train)}) and test split "
                        f"({len(test)}) must both be non-empty")
    logger.info("CUB-200-2011 %s: %d train / %d test images, %d classes", root, len(train), len(test), len(class_names))
    return train, test, class_names


FGVC_READERS = {"cub200": read_cub200}


def read_fgvc(dataset_name: str, data_root: str | Path) -> tuple[list[Record], list[Record], list[str]]:
    """Dispatch to the reader of ``data.dataset_name`` (error lists the implemented names)."""
    if dataset_name not in FGVC_READERS:
        raise DataError(f"data.dataset_name '{dataset_name}': no FGVC reader in this re-implementation "
                        f"(available: {', '.join(FGVC_READERS)})")
    return FGVC_READERS[dataset_name](data_root)


def default_resize(image_size: Sequence[int]) -> list[int]:
    """The recipe's 550/448 resize ratio applied to any input size."""
    return [round(s * 550 / 448) for s in image_size]


def build_fgvc_transform(
    image_size: Sequence[int],
    *,
    train: bool,
    resize_size: Sequence[int] | None = None,
    mean: Sequence[float],
    std: Sequence[float],
) -> T.Compose:
    """FGVC train/eval transform (see the module docstring).

    Args:
        image_size: (H, W) network input.
        train: random crop + flip + colour jitter when True, centre crop otherwise.
        resize_size: (H, W) resize before cropping; None = image_size * 550 / 448.
        mean, std: normalisation of the backbone.
    """
    resize = list(resize_size) if resize_size is not None else default_resize(image_size)
    size = tuple(image_size)
    if train:
        ops = [T.Resize(tuple(resize), antialias=True), T.RandomCrop(size), T.RandomHorizontalFlip(0.5),
               T.ColorJitter(0.4, 0.4, 0.4, 0.1)]
    else:
        ops = [T.Resize(tuple(resize), antialias=True), T.CenterCrop(size)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def describe_cub200(root: str | Path, **opts: str):
    """CUB-200-2011 as ``train_fgvc.py`` reads it (``read_cub200``), for ``python -m common.data.check cub200``.

    ``root`` is ``data.data_root`` (the ``CUB_200_2011`` folder or its parent); a sample is its path in
    ``images.txt``. No options.
    """
    import os

    from common.data.description import DatasetDescription, SplitSamples, take_options

    take_options(opts, {})
    train, test, class_names = read_cub200(root)
    base = find_dataset_dir(root, "CUB_200_2011", "images.txt") / "images"

    def samples(records: list[Record]) -> SplitSamples:
        return SplitSamples(ids=[os.path.relpath(r.path, base) for r in records], files=[(r.path,) for r in records],
                            labels=[(r.label,) for r in records],
                            sources=[f"{r.source[0]}:{r.source[1]}" if r.source else None for r in records])

    return DatasetDescription("cub200", Path(root), {"train": samples(train), "test": samples(test)}, class_names)
