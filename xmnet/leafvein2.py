"""XMNet leaf-vein dataset (``leafvein2.py``; xmnet.md §4.2) over ``common.data.formats.read_xmnet``.

All images and masks are pre-loaded into memory. Image: ToTensor + ImageNet normalisation. Training:
horizontal flip (p 0.5) of image and mask together, zero-padding to at least ``crop`` on each side,
one random ``crop`` x ``crop`` window for both. Test: zero-padding and the centre window. The mask is a
float tensor of the raw pixel values (1 x H x W), not rescaled. Items are (image, label, mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.data.errors import DataError
from common.data.formats.xmnet import XMNetRecord, read_xmnet
from common.data.images import load_image
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD

DATASETS = ("soybean_1_1", "soybean_2_1", "btf", "hainan_leaf")


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (C, H, W) tensor symmetrically so that H, W >= size."""
    h, w = x.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class LeafVeinDataset(Dataset):
    """One split of ``<data_dir>/<dataset>``.

    Args:
        root: ``<data_dir>/<dataset>``.
        split: "train" or "test".
        train: random flip + random crop (else centre crop).
        crop: crop side (the original's 448).
        indices: keep only these records (a validation part or a ``--transfer_to`` fraction).
        seed: seed of the augmentation generator (combined with the epoch and the index, so an item's
            augmentation is reproducible and independent of worker scheduling).
    """

    def __init__(self, root: str | Path, split: str, *, train: bool, crop: int = 448,
                 indices: Sequence[int] | None = None, seed: int = 0):
        records = read_xmnet(root, split)
        if indices is not None:
            records = [records[i] for i in indices]
        self.records: list[XMNetRecord] = records
        self.train = train
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        for r in records:
            img = load_image(r.path, "RGB")
            mask = load_image(r.mask_path, "L")
            if mask.size != img.size:
                raise DataError(f"mask {r.mask_path} is {mask.size[0]}x{mask.size[1]} but image {r.path} is "
                                f"{img.size[0]}x{img.size[1]}")
            t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
            self.images.append((t - mean) / std)
            self.masks.append(torch.from_numpy(np.asarray(mask, dtype=np.float32).copy())[None])
        self.labels = [r.label for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def with_augmentation(self, train: bool) -> LeafVeinDataset:
        """The same pre-loaded images with (``train``) or without augmentation (a shallow copy)."""
        other = LeafVeinDataset.__new__(LeafVeinDataset)
        other.__dict__.update(self.__dict__)
        other.train = train
        return other

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        img, mask = pad_to(self.images[i], self.crop), pad_to(self.masks[i], self.crop)
        h, w = img.shape[-2:]
        if self.train:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + i)
            if torch.rand((), generator=g) < 0.5:
                img, mask = img.flip(-1), mask.flip(-1)
            top = int(torch.randint(0, h - self.crop + 1, (), generator=g))
            left = int(torch.randint(0, w - self.crop + 1, (), generator=g))
        else:
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
        img = img[:, top:top + self.crop, left:left + self.crop]
        mask = mask[:, top:top + self.crop, left:left + self.crop]
        return img.contiguous(), self.labels[i], mask.contiguous()


def split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified split: about ``fraction`` of each class (at least one when the class has two or
    more images) goes to the second list. Returns (kept, carved), both sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    carved: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        carved += idx[:k].tolist()
    carved_set = set(carved)
    return [i for i in range(len(labels)) if i not in carved_set], sorted(carved)


def subset_fraction(n: int, fraction: float, seed: int) -> list[int]:
    """``--transfer_to``: the first round(fraction * n) (at least 1) of a seeded permutation, sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[:max(1, int(round(fraction * n)))].tolist())
