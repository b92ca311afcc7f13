"""MGANet / XMNet leaf-vein data sets (reference: xmnet.md §4.1-4.2).

Layout of ``<data_dir>/<dataset>/`` (the ``root`` below)::

    labels.pkl        pickled dict: key -> 1-based class label
    train/<id>.<ext>  images
    test/<id>.<ext>
    l2_mask/<id>.png  single-channel vein masks, raw pixel values

Two key styles exist: ``soybean_*`` and ``hainan_leaf`` key by the integer id (the file name before
its first dot) and name masks ``<id>.png``; ``btf`` keys by the image file name and names each mask
exactly like its image. The style is taken from the pickle's key type. Files are listed in sorted
order (the original uses ``os.listdir`` order, which is not reproducible across file systems).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.data.errors import DataError, ParseError
from common.data.safe_pickle import safe_load_pickle

LABELS_FILE = "labels.pkl"
MASK_DIR = "l2_mask"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class XMNetRecord:
    """One image of a split: its path, 0-based class label (pickle value - 1) and mask path."""

    path: str
    label: int
    mask_path: str


def load_labels_pkl(path: str | Path) -> dict[int | str, int]:
    """Load ``labels.pkl`` without executing code (:func:`common.data.safe_pickle.safe_load_pickle`):
    only plain containers of ints and strings may appear in it.

    Args:
        path: the pickle file.

    Returns:
        The dict as stored (keys int ids or str file names, values 1-based labels).

    Raises:
        DataError: missing or unreadable file, any class or callable in the pickle (UnsafePickleError,
            nothing executed), not a dict, mixed
            or unsupported key types, or a label that is not an integer >= 1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of labels, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: labels dict is empty")
    key_types = {type(k) for k in data}
    if key_types not in ({int}, {str}):
        names = sorted(t.__name__ for t in key_types)
        raise DataError(f"{path}: keys must be all int ids or all str file names, found {names}")
    for key, value in data.items():
        if type(value) is not int or value < 1:
            raise DataError(f"{path}: label of {key!r} is {value!r}; labels are 1-based integers")
    return data


def read_xmnet(root: str | Path, split: str, *, missing_masks: str = "error") -> list[XMNetRecord]:
    """List one split of a leaf-vein data set with labels and masks.

    Args:
        root: ``<data_dir>/<dataset>`` (holds ``labels.pkl``, ``train/``, ``test/``, ``l2_mask/``).
        split: "train" or "test".
        missing_masks: "error" (the trainer) stops at the first image without a mask; "keep"
            (``common.data.check``, which lists them all) keeps the record with the expected mask path.

    Returns:
        One record per file in ``root/split``, sorted by file name.

    Raises:
        ValueError: unknown split.
        DataError: a missing folder, file, label or mask (the message names it), or a bad pickle.
        ParseError: an image name whose part before the first dot is not an integer id (the
            id-keyed style requires one).
    """
    if split not in SPLITS:
        raise ValueError(f"read_xmnet: split must be one of {SPLITS}, got {split!r}")
    if missing_masks not in ("error", "keep"):
        raise ValueError(f"missing_masks must be 'error' or 'keep', got {missing_masks!r}")
    root = Path(root)
    image_dir, mask_dir = root / split, root / MASK_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"folder not found: {folder}")
    labels_path = root / LABELS_FILE
    labels = load_labels_pkl(labels_path)
    by_name = isinstance(next(iter(labels)), str)
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"no images in {image_dir}")
    records = []
    for file in files:
        if by_name:
            key: int | str = file.name
            mask = mask_dir / file.name
        else:
            stem = file.name.split(".")[0]
            if not stem.isdigit():
                raise ParseError(file, None, f"image name must start with an integer id (keys of {labels_path} are ints)")
            key = int(stem)
            mask = mask_dir / f"{key}.png"
        if key not in labels:
            raise DataError(f"{labels_path}: no label for {key!r} (image {file})")
        if missing_masks == "error" and not mask.is_file():
            raise DataError(f"mask not found: {mask} (for image {file})")
        records.append(XMNetRecord(str(file), labels[key] - 1, str(mask)))
    return records


def describe(root: str | Path, **opts: str):
    """``<data_dir>/<dataset>`` as :func:`read_xmnet` reads it, for ``python -m common.data.check xmnet``.

    Splits ``train`` / ``test``; a sample is its ``labels.pkl`` key (the integer id, or the file name
    for ``btf``) and needs its image and its mask. No options.
    """
    from common.data.description import DatasetDescription, SplitSamples, take_options

    take_options(opts, {})
    root = Path(root)
    labels = load_labels_pkl(root / LABELS_FILE)
    by_name = isinstance(next(iter(labels)), str)
    splits = {}
    for split in SPLITS:
        rows = read_xmnet(root, split, missing_masks="keep")
        ids = [Path(r.path).name if by_name else Path(r.path).name.split(".")[0] for r in rows]
        splits[split] = SplitSamples(ids=[str(int(i)) if not by_name else i for i in ids],
                                     files=[(r.path, r.mask_path) for r in rows], labels=[(r.label,) for r in rows])
    num_classes = max(labels.values())
    return DatasetDescription("xmnet", root, splits, [f"class {k + 1}" for k in range(num_classes)],
                              notes=[f"{root / LABELS_FILE}: {len(labels)} labelled keys, labels 1..{num_classes}"])
