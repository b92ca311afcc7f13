"""Learning-rate schedules as pure functions of the optimizer-update count.

The engine calls ``schedule.lr_for(update, group)`` before every optimizer step and writes the result
into the group. Nothing is stateful, so a resumed run only needs the saved update count.
Each schedule multiplies its value by ``group["lr_scale"]`` (default 1), set by
``common.optim.param_groups``; a group holding ``fixed_lr`` is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol


class LRSchedule(Protocol):
    def lr_for(self, update: int, group: dict) -> float: ...


def _scaled(value: float, group: dict) -> float:
    if "fixed_lr" in group:
        return group["fixed_lr"]
    return value * group.get("lr_scale", 1.0)


class ConstantSchedule:
    """The same learning rate at every update."""

    def __init__(self, lr: float):
        self.lr = lr

    def value(self, update: int) -> float:
        return self.lr

    def lr_for(self, update: int, group: dict) -> float:
        return _scaled(self.lr, group)


class WarmupCosineSchedule:
    """Linear warm-up from ``warmup_start_lr`` to ``base_lr`` over ``warmup_updates``, then half-cosine
    decay to ``min_lr`` at ``total_updates`` (held there afterwards). ``total_updates`` counts the
    warm-up too (as in the ConvNeXt-V2 / DeiT recipes, stepped per iteration).
    """

    def __init__(self, base_lr: float, total_updates: int, warmup_updates: int = 0, min_lr: float = 0.0,
                 warmup_start_lr: float = 0.0):
        if total_updates <= 0:
            raise ValueError(f"total_updates must be positive, got {total_updates}")
        self.base_lr = base_lr
        self.total_updates = total_updates
        self.warmup_updates = max(0, min(warmup_updates, total_updates))
        self.min_lr = min_lr
        self.warmup_start_lr = warmup_start_lr

    def value(self, update: int) -> float:
        if update < self.warmup_updates:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * update / self.warmup_updates
        span = self.total_updates - self.warmup_updates
        if span <= 0:
            return self.base_lr
        t = min(1.0, (update - self.warmup_updates) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def lr_for(self, update: int, group: dict) -> float:
        return _scaled(self.value(update), group)


class PiecewiseSchedule:
    """Switch between schedules at given update counts: ``[(0, warmup_sched), (k, main_sched)]``.

    Each piece sees the update count relative to its own start.
    """

    def __init__(self, pieces: Sequence[tuple[int, LRSchedule]]):
        if not pieces or pieces[0][0] != 0:
            raise ValueError("PiecewiseSchedule needs a first piece starting at update 0")
        starts = [s for s, _ in pieces]
        if starts != sorted(starts):
            raise ValueError(f"piece starts must increase, got {starts}")
        self.pieces = list(pieces)

    def lr_for(self, update: int, group: dict) -> float:
        start, sched = max((p for p in self.pieces if p[0] <= update), key=lambda p: p[0])
        return sched.lr_for(update - start, group)
