"""Attention modules applied to neck outputs via ``--attention_config`` (registry below).

* ``coordatt``: Coordinate Attention (Hou et al., CVPR 2021), functionally identical to the official
  ``CoordAtt`` (houqb/CoordAttention): pool over W and over H, shared 1x1 conv -> BN -> h_swish,
  per-axis 1x1 conv -> sigmoid, y = x * a_w * a_h.
* ``coordatt_u``: CoordAtt-U of the MCB-U paper. y = CoordAtt(x); if the signal channel holds the
  MCB-Convex weight vector ``w_mcb`` (an EMA, momentum 0.9, of the per-batch weights w):
  y <- y * max(0, 1 + alpha * std(w_mcb)) with the *unbiased* std over classes (quirk 7) and
  alpha = 0.5; output = eps * x + (1 - eps) * y with eps = 0.1. Before the first training loss call
  the channel is empty and no gain is applied (as in the original).
* ``se`` (ratio 16), ``cbam`` (SE channel gate + 7x7 spatial gate), ``eca`` (k = 3), ``nonlocal``
  (embedded Gaussian, zero-initialised output projection), ``external`` (64 memory units, residual),
  ``cbam_ge`` (CBAM output times 1 + std of the GE-BCE strength signal), ``eca_da`` (ECA output
  times 1 + 0.3 * the FALS difficulty signal). Only ``coordatt``/``coordatt_u`` internals are
  documented by the reference; the others follow their papers' standard forms.

A config value may be one name, a list of names applied one after another, or
``{"parallel": [...]}`` (outputs summed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dvxray.models.modules.custom_losses.signals import SignalChannel

_ATTENTIONS: dict[str, Callable[..., nn.Module]] = {}


def register_attention(name: str) -> Callable:
    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ATTENTIONS:
            raise ValueError(f"attention '{name}' is registered twice")
        _ATTENTIONS[name] = cls
        return cls

    return deco


def list_attentions() -> list[str]:
    return sorted(_ATTENTIONS)


class h_sigmoid(nn.Module):  # noqa: N801 - official name
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class h_swish(nn.Module):  # noqa: N801 - official name
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


@register_attention("coordatt")
class CoordinateAttention(nn.Module):
    """Coordinate attention. Args: inp, oup: channels in/out (equal here); reduction: mip = max(8, inp // r)."""

    def __init__(self, inp: int, oup: int | None = None, reduction: int = 32, signal: SignalChannel | None = None):
        super().__init__()
        oup = inp if oup is None else oup
        mip = max(8, inp // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.sigmoid(self.conv_h(y_h))
        a_w = self.sigmoid(self.conv_w(y_w.permute(0, 1, 3, 2)))
        return x * a_w * a_h


@register_attention("coordatt_u")
class CoordAtt_U(nn.Module):  # noqa: N801 - original class name
    """CoordAtt-U (see module docstring). Args: channels; alpha: gain slope; epsilon: residual floor;
    signal: the channel shared with the MCB-Convex loss (None: never modulated)."""

    def __init__(self, channels: int, alpha: float = 0.5, epsilon: float = 0.1, signal: SignalChannel | None = None):
        super().__init__()
        self.base = CoordinateAttention(channels, channels, reduction=32)
        self.alpha = alpha
        self.epsilon = epsilon
        self.signal = signal

    def gain(self) -> torch.Tensor | None:
        """1 + alpha * unbiased std of the channel's ``w_mcb``, clamped at 0; None before any push."""
        w = self.signal.get("w_mcb") if self.signal is not None else None
        if w is None:
            return None
        return torch.clamp(1.0 + self.alpha * w.std(), min=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        g = self.gain()
        if g is not None:
            y = y * g.to(device=y.device, dtype=y.dtype)
        return self.epsilon * x + (1.0 - self.epsilon) * y


@register_attention("se")
class SEAttention(nn.Module):
    def __init__(self, channels: int, ratio: int = 16, signal: SignalChannel | None = None):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


@register_attention("cbam")
class CBAM(nn.Module):
    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7, signal: SignalChannel | None = None):
        super().__init__()
        self.channel = SEAttention(channels, ratio)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel(x)
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


@register_attention("eca")
class ECA(nn.Module):
    def __init__(self, channels: int, k_size: int = 3, signal: SignalChannel | None = None):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=k_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).unsqueeze(1)).squeeze(1)
        return x * torch.sigmoid(y)[:, :, None, None]


@register_attention("nonlocal")
class NonLocal(nn.Module):
    def __init__(self, channels: int, signal: SignalChannel | None = None):
        super().__init__()
        inter = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Conv2d(inter, channels, 1)
        # zero-initialised output: the block starts as identity
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)
        k = self.phi(x).flatten(2)
        v = self.g(x).flatten(2).transpose(1, 2)
        y = torch.softmax(q @ k, dim=-1) @ v
        return x + self.out(y.transpose(1, 2).reshape(b, -1, h, w))


@register_attention("external")
class ExternalAttention(nn.Module):
    def __init__(self, channels: int, memory_units: int = 64, signal: SignalChannel | None = None):
        super().__init__()
        self.mk = nn.Linear(channels, memory_units, bias=False)
        self.mv = nn.Linear(memory_units, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        attn = torch.softmax(self.mk(t), dim=1)
        attn = attn / (attn.sum(dim=2, keepdim=True) + 1e-9)  # double normalisation
        return x + self.mv(attn).transpose(1, 2).reshape(b, c, h, w)


@register_attention("cbam_ge")
class CBAM_GE(CBAM):  # noqa: N801
    def __init__(self, channels: int, signal: SignalChannel | None = None):
        super().__init__(channels)
        self.signal = signal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        s = self.signal.get("ge_strength") if self.signal is not None else None
        if s is not None and s.numel() > 1:
            y = y * (1.0 + s.std()).to(y.dtype)
        return y


@register_attention("eca_da")
class ECA_DA(ECA):  # noqa: N801
    def __init__(self, channels: int, signal: SignalChannel | None = None):
        super().__init__(channels)
        self.signal = signal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        d = self.signal.get("difficulty") if self.signal is not None else None
        if d is not None:
            y = y * (1.0 + 0.3 * d).to(y.dtype)
        return y


class ParallelAttention(nn.Module):
    """Sum of several attention branches applied to the same input (held in ``attns``, the original's
    attribute name, so the keys are ``attn3.attns.0.*``)."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.attns = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.attns)


def build_attention(spec: Any, channels: int, signal: SignalChannel | None = None, *, where: str = "") -> nn.Module:
    """Build the attention for one neck output from a config value.

    Args:
        spec: a registry name, a list of specs (sequential), or ``{"parallel": [specs]}`` (summed).
        channels: feature channels.
        signal: loss-to-attention channel for the signal-driven modules.
        where: config key, quoted in errors.

    Raises:
        ValueError: unknown name or malformed value, naming the key.
    """
    if isinstance(spec, str):
        if spec not in _ATTENTIONS:
            raise ValueError(f"--attention_config {where}: unknown attention '{spec}' "
                             f"(choose from {', '.join(list_attentions())})")
        return _ATTENTIONS[spec](channels, signal=signal)
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"--attention_config {where}: empty list")
        return nn.Sequential(*[build_attention(s, channels, signal, where=where) for s in spec])
    if isinstance(spec, dict) and set(spec) == {"parallel"} and isinstance(spec["parallel"], list) and spec["parallel"]:
        return ParallelAttention([build_attention(s, channels, signal, where=where) for s in spec["parallel"]])
    raise ValueError(f"--attention_config {where}: expected a name, a list or {{\"parallel\": [...]}}, got {spec!r}")
