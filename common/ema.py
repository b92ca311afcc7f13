"""Exponential moving average of model weights.

Create the EMA after ``model.to(device)`` and before wrapping the model in DDP (as timm's ModelEmaV3
docstring advises), and pass the unwrapped model to ``update``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma(nn.Module):
    """EMA copy of a model: ``e <- d * e + (1 - d) * m`` after every optimizer step.

    Args:
        model: the live model (unwrapped).
        decay: EMA decay d.
        device: keep the copy on this device (e.g. "cpu" to save GPU memory); default: the model's.
        include_buffers: also average floating buffers and copy integer ones (BatchNorm statistics,
            as timm's ModelEmaV2 does). False averages parameters only and leaves the copy's buffers
            as they were when the EMA was created (the DvXray original's ``SimpleEMA`` behaviour).
        warmup: use the decay warm-up ``min(decay, (1 + n) / (10 + n))`` over update count n.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        device: str | torch.device | None = None,
        include_buffers: bool = True,
        warmup: bool = False,
    ):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.include_buffers = include_buffers
        self.warmup = warmup
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.module.to(self.device)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long), persistent=True)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = int(self.num_updates.item())
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            e.lerp_(p.detach().to(device=e.device, dtype=e.dtype), 1.0 - d)
        if self.include_buffers:
            ema_buffers = dict(self.module.named_buffers())
            for name, b in model.named_buffers():
                e = ema_buffers[name]
                src = b.detach().to(e.device)
                if e.is_floating_point():
                    e.lerp_(src.to(e.dtype), 1.0 - d)
                else:
                    e.copy_(src)
        self.num_updates += 1

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy the live weights into the EMA (e.g. at the end of a warm-up phase)."""
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.copy_(p.detach().to(e.device))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)
