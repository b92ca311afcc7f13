"""Synthetic Market-1501 in the release layout (``bounding_box_train/``, ``query/``, ``bounding_box_test/``).

File names follow ``<pid 4d>_c<cam>s<seq>_<frame 6d>_<box 2d>.jpg`` (e.g. ``0002_c1s1_000451_03.jpg``);
images are RGB JPEGs of 32 x 64 (width x height, the person aspect), identity-encoded digit glyphs.
Train and test identities are disjoint; each test identity has one query per camera it is seen in
(two cameras) and gallery images in both cameras. ``bounding_box_test/`` also holds junk images
(pid ``-1``, to be ignored) and distractors (pid ``0000``, to be kept in the gallery), as the real
release does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.synth.cub200 import jpeg_bytes
from common.synth.render import render_class, write_bytes

SIZE = (32, 64)  # (width, height)
IMAGES_PER_ID = 6
NUM_CAMERAS = 6


def write(out_dir: Path, n: int, seed: int) -> dict:
    """Write about ``n`` images (``n // 6`` identities, at least 8) plus junk and distractors.

    Returns:
        ``{"format", "root", "num_train_ids", "counts": {"train", "query", "gallery", "junk", "distractors"}}``.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    num_ids = max(8, n // IMAGES_PER_ID)
    num_train = num_ids // 2
    counts = dict.fromkeys(("train", "query", "gallery", "junk", "distractors"), 0)
    frame = 451
    # identity index 0 is reserved for distractors' glyph class; real ids start at 2 as in Market
    for idx in range(num_ids):
        pid = 2 * idx + 2
        cams = rng.choice(np.arange(1, NUM_CAMERAS + 1), size=2, replace=False)
        for k in range(IMAGES_PER_ID):
            cam = int(cams[k % 2])
            frame += int(rng.integers(1, 300))
            name = f"{pid:04d}_c{cam}s1_{frame:06d}_{k % 8 + 1:02d}.jpg"
            data = jpeg_bytes(render_class(idx, num_ids + 1, SIZE, rng, mode="RGB"))
            if idx < num_train:
                folder, key = "bounding_box_train", "train"
            elif k < 2:
                folder, key = "query", "query"
            else:
                folder, key = "bounding_box_test", "gallery"
            write_bytes(out_dir / folder / name, data)
            counts[key] += 1
    for j in range(max(2, num_ids // 4)):
        frame += 7
        noise = render_class(num_ids, num_ids + 1, SIZE, rng, mode="RGB")
        write_bytes(out_dir / "bounding_box_test" / f"-1_c{j % NUM_CAMERAS + 1}s1_{frame:06d}_01.jpg", jpeg_bytes(noise))
        counts["junk"] += 1
        write_bytes(out_dir / "bounding_box_test" / f"0000_c{j % NUM_CAMERAS + 1}s1_{frame:06d}_02.jpg",
                    jpeg_bytes(noise))
        counts["distractors"] += 1
    return {"format": "market1501", "root": str(out_dir), "num_train_ids": num_train, "counts": counts}
