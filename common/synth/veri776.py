"""Synthetic VeRi-776 in the public release layout (``dcal.md`` §6.2).

Writes, directly under ``out_dir`` (DCAL's ``data.data_root``):
* ``image_train/``, ``image_query/``, ``image_test/`` with names ``<vehicleID 4d>_c<camera 3d>_<frame 8d>_0.jpg``
  (e.g. ``0001_c001_00016450_0.jpg``): RGB 64 px JPEGs, identity-encoded real digit glyphs;
* ``name_train.txt``, ``name_query.txt``, ``name_test.txt`` (one file name per line);
* ``train_label.xml`` and ``test_label.xml`` encoded in gb2312 and declaring it, with a Chinese comment
  (so a reader that ignores the declared encoding fails) and ``Item`` elements carrying the real
  attributes ``imageName``, ``vehicleID`` (``0001``), ``cameraID`` (``c001``), ``colorID``, ``typeID``.

Identities are split half train / half test, as in VeRi (disjoint). Each test identity has one query
image; as in the real release the query images are also part of ``image_test`` (the gallery), where
the same-identity-same-camera rule removes them, and every test identity has gallery images from
other cameras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.synth.cub200 import jpeg_bytes
from common.synth.render import render_class, write_bytes, write_text

IMAGE_SIZE = 64
NUM_CAMERAS = 20
IMAGES_PER_ID = 6


def _xml(items: list[tuple[str, int, int, int, int]]) -> bytes:
    lines = ['<?xml version="1.0" encoding="gb2312"?>', "<!-- 车辆重识别数据集 VeRi-776 标注 -->",
             '<TrainingImages Version="1.0">', f'<Items number="{len(items)}">']
    for name, vid, cam, color, vtype in items:
        lines.append(f'<Item imageName="{name}" vehicleID="{vid:04d}" cameraID="c{cam:03d}" '
                     f'colorID="{color}" typeID="{vtype}" />')
    lines += ["</Items>", "</TrainingImages>", ""]
    return "\r\n".join(lines).encode("gb2312")


def write(out_dir: Path, n: int, seed: int) -> dict:
    """Write about ``n`` images (``n // 6`` identities, at least 8).

    Args:
        out_dir: dataset root (created).
        n: approximate number of images.
        seed: NumPy seed; the output is a pure function of (n, seed).

    Returns:
        ``{"format", "root", "num_train_ids", "counts": {"train", "query", "test"}}``.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    num_ids = max(8, n // IMAGES_PER_ID)
    num_train = num_ids // 2
    names: dict[str, list[str]] = {"train": [], "query": [], "test": []}
    train_items, test_items = [], []
    frame = 16450
    for idx in range(num_ids):
        vid = idx + 1
        color, vtype = int(rng.integers(1, 11)), int(rng.integers(1, 10))
        cams = rng.choice(np.arange(1, NUM_CAMERAS + 1), size=3, replace=False)
        for k in range(IMAGES_PER_ID):
            cam = int(cams[k % 3])
            frame += int(rng.integers(1, 500))
            name = f"{vid:04d}_c{cam:03d}_{frame:08d}_0.jpg"
            data = jpeg_bytes(render_class(idx, num_ids, IMAGE_SIZE, rng, mode="RGB"))
            item = (name, vid, cam, color, vtype)
            if idx < num_train:
                write_bytes(out_dir / "image_train" / name, data)
                names["train"].append(name)
                train_items.append(item)
                continue
            write_bytes(out_dir / "image_test" / name, data)
            names["test"].append(name)
            test_items.append(item)
            if k == 0:  # the query is one of the identity's test images, also kept in image_test
                write_bytes(out_dir / "image_query" / name, data)
                names["query"].append(name)
    for split, file in (("train", "name_train.txt"), ("query", "name_query.txt"), ("test", "name_test.txt")):
        write_text(out_dir / file, "\n".join(names[split]) + "\n")
    write_bytes(out_dir / "train_label.xml", _xml(train_items))
    write_bytes(out_dir / "test_label.xml", _xml(test_items))
    return {"format": "veri776", "root": str(out_dir), "num_train_ids": num_train,
            "counts": {k: len(v) for k, v in names.items()}}
