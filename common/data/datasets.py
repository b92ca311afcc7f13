"""Map-style datasets over :class:`ImageRecord` lists: single-image multi-label and dual-view pairs.

Both are plain picklable objects (records are frozen dataclasses, transforms are passed in), so they
work with ``num_workers > 0`` under fork and spawn alike. Image errors name the image and the list
file and line the record came from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from common.data.images import load_image
from common.data.lists import ImageRecord

__all__ = ["DualViewPairDataset", "ImageRecord", "MultiLabelImageDataset"]

Transform = Callable[[Image.Image], Any]


def _where(record: ImageRecord) -> str:
    return f"{record.source}:{record.line}" if record.where is not None else "record"


def _check_records(records: Sequence[ImageRecord], num_paths: int, cls: str) -> None:
    if len(records) == 0:
        raise ValueError(f"{cls}: no records")
    num_labels = len(records[0].labels)
    for record in records:
        if len(record.paths) != num_paths:
            raise ValueError(
                f"{cls}: {_where(record)} has {len(record.paths)} image path(s), expected {num_paths}"
            )
        if len(record.labels) != num_labels:
            raise ValueError(
                f"{cls}: {_where(record)} has {len(record.labels)} labels, the first record has {num_labels}"
            )


class _RecordDataset(Dataset):
    _num_paths = 1

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        image_mode: str = "RGB",
        root: str | Path | None = None,
        return_index: bool = False,
    ):
        _check_records(records, self._num_paths, type(self).__name__)
        self.records = list(records)
        self.image_mode = image_mode
        self.root = None if root is None else Path(root)
        self.return_index = return_index
        # An N x C array lets samplers (repeat-factor, class-aware) read labels without images.
        self.targets = np.asarray([r.labels for r in self.records], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: ImageRecord, k: int) -> Image.Image:
        path = Path(record.paths[k])
        if self.root is not None and not path.is_absolute():
            path = self.root / path
        return load_image(path, self.image_mode, source=record.where)

    def _target(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.targets[index].copy())


class MultiLabelImageDataset(_RecordDataset):
    """Single-image multi-label dataset.

    Args:
        records: one-path records, e.g. from :func:`common.data.lists.read_image_label_list`.
        transform: applied to the PIL image; None means ``to_tensor`` (float in [0, 1], C x H x W).
        image_mode: PIL mode images are converted to ("RGB" or "L").
        root: joined onto relative record paths at load time.
        return_index: also return the dataset index as a third item.

    Items are ``(image, target)`` or ``(image, target, index)``; ``target`` is a float32 tensor of
    the record's labels. ``targets`` holds all labels as an N x C float32 array.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform | None = None,
        *,
        image_mode: str = "RGB",
        root: str | Path | None = None,
        return_index: bool = False,
    ):
        super().__init__(records, image_mode=image_mode, root=root, return_index=return_index)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple:
        record = self.records[index]
        image = self._load(record, 0)
        image = TF.to_tensor(image) if self.transform is None else self.transform(image)
        target = self._target(index)
        return (image, target, index) if self.return_index else (image, target)


class DualViewPairDataset(_RecordDataset):
    """Two-view dataset (DvXray OL/SD pairs) where both views get identical random augmentation.

    As in the original DvXray ``DualViewTxtDataset`` (``dvxray.md`` §9): per sample one seed is drawn
    from torch's global generator, and Python ``random``, torch's CPU RNG and NumPy's global RNG are
    reseeded with it before transforming view A and again before view B. Unlike the original, the
    reseeding happens inside ``torch.random.fork_rng`` and a saved/restored ``random``/NumPy state,
    so the only effect on the global streams is that single seed draw.

    Args:
        records: two-path records ``(view A, view B)``.
        transform: applied to each PIL view; None means ``to_tensor``.
        image_mode: PIL mode images are converted to.
        root: joined onto relative record paths at load time.
        return_index: also return the dataset index as a fourth item.
        choose_transform: optional picklable ``record -> transform`` used instead of ``transform``
            (for label-conditional augmentation); give either this or ``transform``, not both.

    Items are ``(view_a, view_b, target)`` or ``(view_a, view_b, target, index)``.
    """

    _num_paths = 2

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform | None,
        *,
        image_mode: str = "RGB",
        root: str | Path | None = None,
        return_index: bool = False,
        choose_transform: Callable[[ImageRecord], Transform] | None = None,
    ):
        if transform is not None and choose_transform is not None:
            raise ValueError("DualViewPairDataset: pass transform or choose_transform, not both")
        super().__init__(records, image_mode=image_mode, root=root, return_index=return_index)
        self.transform = transform
        self.choose_transform = choose_transform

    @staticmethod
    def _apply_seeded(transform: Transform, image: Image.Image, seed: int) -> Any:
        py_state = random.getstate()
        np_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)
                return transform(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getitem__(self, index: int) -> tuple:
        record = self.records[index]
        view_a = self._load(record, 0)
        view_b = self._load(record, 1)
        transform = self.choose_transform(record) if self.choose_transform is not None else self.transform
        if transform is None:
            out_a, out_b = TF.to_tensor(view_a), TF.to_tensor(view_b)
        else:
            # Drawn from the global torch stream, which DataLoader seeds per worker and per epoch.
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            out_a = self._apply_seeded(transform, view_a, seed)
            out_b = self._apply_seeded(transform, view_b, seed)
        target = self._target(index)
        return (out_a, out_b, target, index) if self.return_index else (out_a, out_b, target)
