"""One seeding helper for the trainers that seed every global random number generator."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    NumPy takes the seed modulo 2**32 (its range), so rank-offset or negative seeds work too; for seeds in
    [0, 2**32) this is ``np.random.seed(seed)``.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
