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


def _cos_anneal(start: float, end: float, pos: float) -> float:
    """Cosine from ``start`` (pos 0) to ``end`` (pos 1), as fastai's ``SchedCos``."""
    return start + (1.0 + math.cos(math.pi * (1.0 - pos))) * (end - start) / 2.0


class OneCycleSchedule:
    """fastai's ``fit_one_cycle`` as a pure function of the update count (charm_xray.md §14).

    The learning rate rises by a cosine from ``lr_max / div`` to ``lr_max`` over the first
    ``pct_start`` of ``total_updates`` and falls by a cosine to ``lr_max / div_final``; the momentum
    (Adam's beta1) goes from ``moms[0]`` to ``moms[1]`` and back to ``moms[2]`` on the same cut.
    torch's ``OneCycleLR(div_factor=div, final_div_factor=div_final / div, anneal_strategy="cos",
    three_phase=False)`` is the same curve, but it is stateful and counts ``total_steps - 1`` as
    the end; this one is stateless (resume needs only the update count) and places positions as
    fastai does (``pos = update / total_updates``).
    """

    def __init__(self, lr_max: float, total_updates: int, *, pct_start: float = 0.25, div: float = 25.0,
                 div_final: float = 1e5, moms: tuple[float, float, float] = (0.95, 0.85, 0.95)):
        if total_updates <= 0:
            raise ValueError(f"total_updates must be positive, got {total_updates}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        self.lr_max = lr_max
        self.total_updates = total_updates
        self.pct_start = pct_start
        self.div = div
        self.div_final = div_final
        self.moms = moms

    def _phase(self, update: int) -> tuple[int, float]:
        pos = min(max(update / self.total_updates, 0.0), 1.0)
        if pos < self.pct_start:
            return 0, pos / self.pct_start
        return 1, (pos - self.pct_start) / (1.0 - self.pct_start)

    def value(self, update: int, lr_max: float | None = None) -> float:
        lr_max = self.lr_max if lr_max is None else lr_max
        phase, p = self._phase(update)
        if phase == 0:
            return _cos_anneal(lr_max / self.div, lr_max, p)
        return _cos_anneal(lr_max, lr_max / self.div_final, p)

    def momentum_for(self, update: int) -> float:
        phase, p = self._phase(update)
        if phase == 0:
            return _cos_anneal(self.moms[0], self.moms[1], p)
        return _cos_anneal(self.moms[1], self.moms[2], p)

    def lr_for(self, update: int, group: dict) -> float:
        # discriminative learning rates: a group may carry its own peak (fastai's slice(a, b))
        return _scaled(self.value(update, group.get("lr_max")), group)


class EpochCosineSchedule:
    """torch's ``CosineAnnealingLR(T_max=t_max, eta_min=min_lr)`` stepped once per epoch, as a pure
    function of the update count.

    The learning rate is constant within an epoch and follows the closed form
    ``lr(e) = min_lr + (base_lr - min_lr) * (1 + cos(pi * e / t_max)) / 2`` for the epoch
    ``e = update // updates_per_epoch`` (epoch 0 uses ``base_lr``). With ``t_max`` = the number of
    epochs, the last epoch runs at ``lr(t_max - 1)`` (the original recipes of xmnet, SGD + cosine).
    Unlike ``WarmupCosineSchedule`` (per update), the value only changes at epoch boundaries.
    """

    def __init__(self, base_lr: float, t_max: int, updates_per_epoch: int, min_lr: float = 0.0):
        if t_max <= 0:
            raise ValueError(f"t_max must be positive, got {t_max}")
        self.base_lr = base_lr
        self.t_max = t_max
        self.per_epoch = max(1, updates_per_epoch)
        self.min_lr = min_lr

    def value(self, update: int) -> float:
        epoch = update // self.per_epoch
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self.t_max)) / 2

    def lr_for(self, update: int, group: dict) -> float:
        return _scaled(self.value(update), group)
