"""Single-label classification metrics: top-k accuracy and per-class accuracy.

Used by xmnet (top-1 test accuracy) and dcal (FGVC top-1 / top-5 and per-class accuracy). Values
are fractions in [0, 1], not percentages (timm's ``accuracy`` returns percent).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.metrics._arrays import ArrayLike, to_numpy


def _logits_and_labels(logits: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.detach().float().cpu() if isinstance(logits, torch.Tensor) else torch.from_numpy(
        to_numpy(logits, name="logits")
    )
    y = torch.from_numpy(to_numpy(targets, name="targets", dtype=np.int64))
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be (N, C) and targets (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("logits and targets are empty (N = 0)")
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"targets must lie in [0, {x.shape[1] - 1}], found [{int(y.min())}, {int(y.max())}]")
    return x, y


def topk_accuracy(logits: ArrayLike, targets: ArrayLike, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of samples whose target is among the k highest logits, for each k.

    Args:
        logits: (N, C) class scores (logits or probabilities), torch or numpy.
        targets: (N,) integer class indices in [0, C).
        topk: the k values to report. A k >= C is exactly 1.0 (every class is in the top C), so it
            is computed with k = C rather than rejected.

    Returns:
        ``{"acc1": float, "acc5": float, ...}`` with one ``acc<k>`` key per requested k, in [0, 1].
        Ties between logits are broken by ``torch.topk``.
    """
    x, y = _logits_and_labels(logits, targets)
    if not topk or any(int(k) < 1 for k in topk):
        raise ValueError(f"topk must be positive integers, got {tuple(topk)}")
    maxk = min(max(int(k) for k in topk), x.shape[1])
    pred = x.topk(maxk, dim=1).indices
    hit = pred.eq(y[:, None])
    return {f"acc{int(k)}": float(hit[:, : min(int(k), maxk)].any(dim=1).double().mean()) for k in topk}


def per_class_accuracy(logits: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Top-1 accuracy of each class (recall of the argmax prediction per target class).

    Args:
        logits: (N, C) class scores, torch or numpy.
        targets: (N,) integer class indices in [0, C).

    Returns:
        float64 array (C,); NaN for classes that have no sample in ``targets``.
    """
    x, y = _logits_and_labels(logits, targets)
    num_classes = x.shape[1]
    correct = (x.argmax(dim=1) == y).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=num_classes).double()
    acc = torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(hits, float("nan")))
    return acc.numpy()
