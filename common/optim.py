"""Parameter groups and optimizer construction."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, 1-D tensors (norm weights, GRN/LayerScale vectors) and parameters of norm layers."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p.ndim <= 1 or p_name == "bias" or isinstance(module, _NORM_TYPES) or "norm" in mod_name.split(".")[-1:]:
                names.add(full)
    return names


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_weight_decay_norm_bias: bool = False,
    lr_scales: dict[str, float] | None = None,
) -> list[dict]:
    """Split trainable parameters into optimizer groups.

    Args:
        model: module whose ``requires_grad`` parameters are grouped (frozen ones are skipped).
        weight_decay: decay for ordinary weights.
        no_weight_decay_norm_bias: put biases, norm parameters and other 1-D tensors in a group with
            weight decay 0.
        lr_scales: parameter-name prefix -> learning-rate multiplier (longest prefix wins), stored
            as ``group["lr_scale"]`` and applied by the schedules in ``common.schedule``.

    Returns:
        Groups with keys ``params``, ``weight_decay``, ``lr_scale`` and ``name``.
    """
    lr_scales = lr_scales or {}
    no_decay = _no_decay_names(model) if no_weight_decay_norm_bias else set()
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        matches = [k for k in lr_scales if name == k or name.startswith(k.rstrip(".") + ".")]
        scale = lr_scales[max(matches, key=len)] if matches else 1.0
        wd = 0.0 if name in no_decay else weight_decay
        key = (scale, wd)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd, "lr_scale": scale, "name": f"lr_scale={scale},wd={wd}"}
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | list[dict],
    lr: float,
    weight_decay: float = 0.0,
    *,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Build an optimizer by name ("adamw", "adam", "sgd")."""
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer '{name}' (choose from adamw, adam, sgd)")
