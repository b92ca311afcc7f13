"""Synthetic DvXray in the native on-disk layout (``dvxray.md`` §8).

Writes, under ``out_dir``:
* ``data/DvXray_Positive_Samples/P#####_{OL,SD}.png`` and ``data/DvXray_Negative_Samples/N#####_{OL,SD}.png``
  (RGB, 64 px): the OL and SD views of one pair show the same classes (real scikit-learn digit
  glyphs, class-encoded by ``common.synth.render``) in independent layouts, like two X-ray views of
  one bag; negatives show background only;
* ``annotations/DvXray_{train,val,test,all}.txt``: ``<OL path> <SD path> <15 comma-separated 0/1>``
  with ``./data/...`` paths relative to ``out_dir`` (run the original commands from inside it),
  LF endings and a trailing newline; an 80/10/10 split as MCB-U's own;
* ``annotations/classes.txt``: the 15 DvXray classes in label order.

About 30 % of the pairs are negative (the real set has 69 %; fewer here so tiny sets stay learnable),
positives carry 1 class (85 %) or 2 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.synth.render import render_multilabel, save_png, write_text

CLASSES = ("Gun", "Knife", "Wrench", "Pliers", "Scissors", "Lighter", "Battery", "Bat", "Razor_blade",
           "Saw_blade", "Fireworks", "Hammer", "Screwdriver", "Dart", "Pressure_vessel")
IMAGE_SIZE = 64
NEGATIVE_FRACTION = 0.3


def write(out_dir: Path, n: int, seed: int) -> dict:
    """Write ``n`` synthetic OL/SD pairs with split lists and ``classes.txt``.

    Args:
        out_dir: dataset root (created).
        n: number of pairs (>= 10 so every split gets at least one line).
        seed: NumPy seed; the output is a pure function of (n, seed).

    Returns:
        ``{"format", "root", "num_classes", "classes_file", "lists": {split: path}, "counts": {split: lines},
        "positives": int, "negatives": int}``.
    """
    if n < 10:
        raise ValueError(f"dvxray synth: n must be >= 10 (80/10/10 split), got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASSES)
    lines: list[str] = []
    n_pos = n_neg = 0
    for _ in range(n):
        if rng.random() < NEGATIVE_FRACTION:
            active: list[int] = []
            folder, sample_id = "DvXray_Negative_Samples", f"N{n_neg:05d}"
            n_neg += 1
        else:
            k = 1 if rng.random() < 0.85 else 2
            active = sorted(rng.choice(num_classes, size=k, replace=False).tolist())
            folder, sample_id = "DvXray_Positive_Samples", f"P{n_pos:05d}"
            n_pos += 1
        rel = {view: f"./data/{folder}/{sample_id}_{view}.png" for view in ("OL", "SD")}
        for view in ("OL", "SD"):
            save_png(render_multilabel(active, num_classes, IMAGE_SIZE, rng, mode="RGB"), out_dir / rel[view])
        vector = ",".join("1" if c in active else "0" for c in range(num_classes))
        lines.append(f"{rel['OL']} {rel['SD']} {vector}")

    order = rng.permutation(n)
    n_train, n_val = int(round(0.8 * n)), int(round(0.1 * n))
    splits = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:],
              "all": np.arange(n)}
    ann = out_dir / "annotations"
    lists = {}
    for split, idx in splits.items():
        path = ann / f"DvXray_{split}.txt"
        write_text(path, "".join(lines[i] + "\n" for i in sorted(idx.tolist())))
        lists[split] = str(path)
    write_text(ann / "classes.txt", "".join(c + "\n" for c in CLASSES))
    return {"format": "dvxray", "root": str(out_dir), "num_classes": num_classes,
            "classes_file": str(ann / "classes.txt"), "lists": lists,
            "counts": {s: len(i) for s, i in splits.items()}, "positives": n_pos, "negatives": n_neg}
