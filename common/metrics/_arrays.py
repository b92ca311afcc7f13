"""Conversion of torch tensors / numpy arrays to validated float64 / int64 numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequence


def to_numpy(x: ArrayLike, *, name: str, dtype: type = np.float64) -> np.ndarray:
    """Return ``x`` as a numpy array of ``dtype``; tensors are detached and moved to CPU first."""
    if isinstance(x, torch.Tensor):
        # bf16/fp16 have no numpy equivalent, so widen on the torch side before converting.
        torch_dtype = {np.float64: torch.float64, np.float32: torch.float32, np.int64: torch.int64}[dtype]
        return x.detach().to(device="cpu", dtype=torch_dtype).numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot convert to a {np.dtype(dtype).name} array ({err})") from None


def binary_targets(targets: ArrayLike) -> np.ndarray:
    """Validate an (N, C) {0, 1} target matrix (1-D = one class) and return it as int64."""
    if isinstance(targets, np.ndarray) and (targets.dtype == np.bool_ or np.issubdtype(targets.dtype, np.integer)):
        t = targets  # integer labels need no float round trip (a copy of the whole matrix)
    else:
        t = to_numpy(targets, name="targets")
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"targets must be (N, C), got shape {tuple(t.shape)}")
    if t.dtype == np.bool_:
        return t.astype(np.int64)
    if np.issubdtype(t.dtype, np.integer) and t.size:
        # one threaded min/max pass instead of two comparisons and an OR over the whole matrix
        lo, hi = torch.aminmax(torch.from_numpy(np.ascontiguousarray(t)))
        if lo >= 0 and hi <= 1:
            return t.astype(np.int64, copy=False)
    binary = (t == 0) | (t == 1)
    if not binary.all():
        bad = np.unique(t[~binary])[:5]
        raise ValueError(f"targets must be 0/1, found values {bad.tolist()}")
    return t.astype(np.int64, copy=False)


def non_finite_error(s: np.ndarray) -> ValueError:
    return ValueError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite values")


def scores_and_targets(scores: ArrayLike, targets: ArrayLike, *, check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate a multi-label (N, C) score matrix and its {0, 1} target matrix (1-D = one class).

    ``check_finite=False`` leaves the NaN/Inf check to a caller that sees it for free (the rank
    metrics read it off the ends of their sorted columns)."""
    s = to_numpy(scores, name="scores")
    t = binary_targets(targets)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} must both be (N, C)")
    if s.shape[0] == 0:
        raise ValueError("scores and targets are empty (N = 0)")
    if check_finite and not np.isfinite(s).all():
        raise non_finite_error(s)
    return s, t
