"""Learning-rate range test with fastai's semantics (``Learner.lr_find``; charm_xray.md §14).

``lr_find`` trains on up to ``num_it`` batches with the learning rate growing exponentially from
``start_lr`` to ``end_lr``, records fastai's smoothed loss (a debiased exponential moving average with
beta 0.98), stops once that loss exceeds 4x its best, and restores the model (buffers included) and
the optimizer afterwards. ``suggest`` applies fastai's suggestion functions to the recorded curve.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.engine import _autocast, to_device

_logger = logging.getLogger(__name__)


def lr_find(task: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, device: torch.device,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True,
            amp_dtype: torch.dtype | None = None, beta: float = 0.98) -> tuple[list[float], list[float]]:
    """Run the range test; returns (learning rates, smoothed losses), one pair per batch trained.

    Args:
        task: module whose ``forward(batch)`` returns ``{"loss": ...}`` (a ``common.engine.Task``).
        optimizer: over ``task``'s parameters; its state and learning rates are restored afterwards.
        loader: training batches (cycled over epochs when shorter than ``num_it``).
        device: where batches go.
        start_lr, end_lr, num_it, stop_div: as fastai (lr_i = start * (end / start) ** (i / num_it)).
        amp_dtype: autocast dtype or None.
        beta: smoothing of the recorded loss.
    """
    saved_model = copy.deepcopy(task.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    was_training = task.training
    task.train()
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    it = 0
    try:
        while it < num_it:
            batches = 0
            for batch in loader:
                lr = start_lr * (end_lr / start_lr) ** (it / num_it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = to_device(batch, device)
                with _autocast(device, amp_dtype):
                    loss = task(batch)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                it += 1
                batches += 1
                value = float(loss.detach())
                avg = beta * avg + (1.0 - beta) * value
                smooth = avg / (1.0 - beta ** it)
                lrs.append(lr)
                losses.append(smooth)
                if stop_div and (smooth > 4 * best or not math.isfinite(smooth)):
                    return lrs, losses
                best = min(best, smooth)
                if it >= num_it:
                    break
            if batches == 0:
                raise ValueError("lr_find: the training loader yielded no batch")
        return lrs, losses
    finally:
        task.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        optimizer.zero_grad(set_to_none=True)
        task.train(was_training)


def valley(lrs: Sequence[float], losses: Sequence[float]) -> int:
    """fastai's ``valley``: the index a third plus a sixth of the way into the longest decreasing
    subsequence of the losses (the O(n^2) scan over pairs)."""
    n = len(losses)
    if n == 0:
        raise ValueError("valley: no recorded losses")
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``minimum``: the learning rate at the lowest loss, divided by 10."""
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``steep``: the learning rate where the loss falls fastest per log-lr step."""
    grads = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return lrs[min(range(len(grads)), key=grads.__getitem__)]


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": lambda lrs, losses: lrs[valley(lrs, losses)],
    "minimum": minimum,
    "steep": steep,
}


def suggest(lrs: Sequence[float], losses: Sequence[float], num_it: int = 100, method: str = "valley") -> float:
    """fastai's suggestion on ``lrs[num_it // 10 : -5]`` (cut at the first NaN loss).

    Raises:
        ValueError: too few points are left (fewer than 2 after the cut).
    """
    if method not in SUGGESTIONS:
        raise ValueError(f"unknown lr_find suggestion '{method}' (choose from {', '.join(SUGGESTIONS)})")
    lrs, losses = list(lrs[num_it // 10:-5]), list(losses[num_it // 10:-5])
    for i, v in enumerate(losses):
        if math.isnan(v):
            lrs, losses = lrs[:i], losses[:i]
            break
    if len(losses) < 2:
        raise ValueError(f"lr_find: only {len(losses)} usable point(s) after dropping the first {num_it // 10} "
                         "and the last 5; train on more batches")
    return float(SUGGESTIONS[method](lrs, losses))


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], path: str | Path, *,
                 suggestion: float | None = None, title: str = "lr_find") -> Path:
    """Loss against learning rate (log scale) as a PNG, with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    from common.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, label="smoothed training loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"valley {suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
