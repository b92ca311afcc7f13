"""Parameter groups and optimizer construction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def _no_decay_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Biases, 1-D tensors (norm weights, GRN/LayerScale vectors) and parameters of norm layers, by name."""
    found = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p.ndim <= 1 or p_name == "bias" or isinstance(module, _NORM_TYPES) or "norm" in mod_name.split(".")[-1:]:
                found[full] = p
    return found


def _no_decay_names(model: nn.Module) -> set[str]:
    return set(_no_decay_params(model))


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


def fastai_adam(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.01,
    parts: Mapping[str, Sequence[nn.Parameter]] | None = None,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-5,
) -> torch.optim.AdamW:
    """fastai's default optimizer (``Learner(opt_func=Adam)``, ``wd_bn_bias=False``) as torch ``AdamW``:
    beta1 0.9, beta2 (fastai's ``sqr_mom``) 0.99, eps 1e-5, decoupled weight decay 0.01, none on biases and
    norm-layer parameters (for BatchNorm networks the set fastai leaves undecayed; here also other 1-D
    tensors, see :func:`param_groups`).

    Args:
        model: where the biases and norm layers are looked up.
        lr: the groups' initial learning rate (one-cycle schedules overwrite it).
        parts: name -> parameters, e.g. body and head for discriminative learning rates; default one part
            "all" with the model's trainable parameters (each shared tensor once).

    Returns:
        ``AdamW`` with a decay and a no-decay group per part (in that order), each tagged ``group["part"]``.
    """
    no_decay = {id(p) for p in _no_decay_params(model).values()}
    if parts is None:
        parts = {"all": [p for p in model.parameters() if p.requires_grad]}
    groups = []
    for part, params in parts.items():
        for decay in (True, False):
            chosen = [p for p in params if (id(p) not in no_decay) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": weight_decay if decay else 0.0, "part": part})
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
