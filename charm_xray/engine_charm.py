"""CHARM-Xray's two fastai phases over ``common.engine.fit`` (charm_xray.md §6, §14).

fastai semantics reproduced here:

* optimizer: Adam(beta1 0.9 -> cycled, beta2 0.99, eps 1e-5) with decoupled weight decay 0.01, none
  on BatchNorm parameters and biases (``wd_bn_bias=False``) = torch ``AdamW`` with two groups;
* ``fit_one_cycle``: :class:`common.schedule.OneCycleSchedule` (lr and beta1 per update);
* ``SaveModelCallback(valid_loss, min_delta, with_opt)``: each fit ends by reloading its best
  epoch's weights (and optimizer state); ``EarlyStoppingCallback(valid_loss, min_delta, patience)``;
* ``fine_tune(freeze_epochs, epochs, base_lr)``: freeze, one-cycle over ``freeze_epochs`` at
  ``slice(base_lr)`` with pct_start 0.99, halve base_lr, unfreeze, one-cycle over ``epochs`` at
  ``slice(base_lr / 100, base_lr)`` with pct_start 0.3 and div 5;
* one parameter group (the original Learner has no splitter): freezing changes nothing and a
  ``slice(a, b)`` means ``b`` (quirk 16). ``--freeze_backbone`` / ``--discriminative_lr`` split the
  model into body (the backbone) and head (final block, attention, classifier), as the README says.

Each fit is a "stage" with its own folder (checkpoints, CSV, ``metrics.json``); a finished stage is
marked by ``stage_done.json`` and skipped on a rerun, a killed one resumes from its last checkpoint
(``pipeline.check_reuse`` has made sure that the run folder was made with the same flags and inputs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from common.dist import DistContext
from common.engine import FitConfig, Task, fit, updates_per_epoch
from common.metrics.multilabel import _macro, f1_scores, roc_auc_per_class
from common.optim import fastai_adam
from common.run import RunDir
from common.schedule import OneCycleSchedule
from common.seed import seed_everything

_logger = logging.getLogger(__name__)
STAGE_DONE = "stage_done.json"


class CharmTask(Task):
    """One training step: logits of the CHARM model, the phase's loss."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module):
        super().__init__(model)
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch[0], batch[1]
        return {"loss": self.loss_fn(self.model(images), targets)}


def make_metric_fn(loss_fn: nn.Module, class_names: Sequence[str]):
    """fastai's validation outputs: ``loss`` (the phase's loss on the whole validation set, the
    monitored ``valid_loss``), ``acc1`` (= ``accuracy_multi`` at 0.5), ``f1_macro`` (``F1ScoreMulti``),
    ``auc`` (``RocAucMulti``) and ``per_class_auc``."""

    def metric_fn(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        logits, target = outputs["logits"], outputs["target"]
        with torch.no_grad():
            loss = float(loss_fn(logits, target))
        probs = torch.sigmoid(logits.float())
        per_class = roc_auc_per_class(logits, target)
        return {"loss": loss, "acc1": float(((probs > 0.5).float() == target.float()).float().mean()),
                "f1_macro": float(f1_scores(logits, target, 0.5)["f1_macro"]), "auc": _macro(per_class),
                "per_class_auc": [None if np.isnan(v) else float(v) for v in per_class]}

    return metric_fn


# ----------------------------------------------------------------------------------------------
# parameter groups, freezing, learning rates


def body_head_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(body = the backbone, head = the rest) for ``--freeze_backbone`` / ``--discriminative_lr``.
    Shared tensors (``base_model.*`` duplicates) are counted once."""
    body_ids = {id(p) for p in getattr(model, "backbone", nn.Module()).parameters()}
    if not body_ids:  # VGG16-LKA: the first three convolution blocks
        body_ids = {id(p) for name in ("block1", "block2", "block3") for p in getattr(model, name).parameters()}
    seen: set[int] = set()
    body, head = [], []
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad and id(p) not in body_ids:
            continue
        seen.add(id(p))
        (body if id(p) in body_ids else head).append(p)
    return body, head


def build_fastai_adam(model: nn.Module, lr: float, *, weight_decay: float = 0.01,
                      split: bool = False) -> torch.optim.Optimizer:
    """fastai's default optimizer (:func:`common.optim.fastai_adam`) over one part "all", or body and head
    (``split``, for ``--freeze_backbone`` / ``--discriminative_lr``); groups are tagged ``part``."""
    body, head = body_head_split(model)
    return fastai_adam(model, lr, weight_decay=weight_decay,
                       parts={"body": body, "head": head} if split else {"all": body + head})


def slice_lrs(lr: float | tuple[float | None, float], parts: int) -> list[float]:
    """fastai's ``slice`` over ``parts`` parameter groups: (a, b) geometric from a to b; (None, b)
    b/10 for all but the last; one group -> b."""
    if not isinstance(lr, tuple):
        return [float(lr)] * parts
    start, stop = lr
    if parts == 1:
        return [float(stop)]
    if start is None:
        return [stop / 10] * (parts - 1) + [float(stop)]
    step = (stop / start) ** (1 / (parts - 1))
    return [start * step ** i for i in range(parts)]


def set_lr_max(optimizer: torch.optim.Optimizer, lr: float | tuple[float | None, float], discriminative: bool) -> None:
    """Give each group its one-cycle peak: one value for all, or fastai's slice over body/head."""
    parts = ["body", "head"] if discriminative else None
    values = slice_lrs(lr, 2 if discriminative else 1)
    for group in optimizer.param_groups:
        if parts is None or group["part"] == "all":
            group["lr_max"] = values[-1]
        else:
            group["lr_max"] = values[parts.index(group["part"])]


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """fastai ``freeze_to(-1)`` with a body/head split: the body's parameters stop training, its
    BatchNorm layers keep training (``train_bn=True``)."""
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    body, _ = body_head_split(model)
    for p in body:
        if id(p) not in bn:
            p.requires_grad_(not frozen)


# ----------------------------------------------------------------------------------------------
# one fastai fit = one stage


@dataclass
class StageSettings:
    """What every fit of a run shares."""

    amp: str = "none"
    min_delta: float = 0.001
    patience: int | None = 5
    with_opt: bool = True
    discriminative_lr: bool = False
    class_names: Sequence[str] = ()
    progress: bool = True
    seed: int = 85
    compile: bool = False
    channels_last: bool | None = None


def _load_best(task: Task, optimizer: torch.optim.Optimizer, path: Path, with_opt: bool) -> dict:
    ckpt = load_checkpoint(path)
    task.model.load_state_dict(ckpt["model"], strict=True)
    if with_opt and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def _epochs_to_fit(stage_dir: Path, epochs: int) -> int:
    """``epochs``, or the epochs a killed stage ran when its last checkpoint says it stopped early, so
    that ``fit`` resuming it trains nothing (it does not stop again on a restored ``stopped_early``)."""
    last = stage_dir / "checkpoint_last.pth"
    if not last.is_file():
        return epochs
    ckpt = load_checkpoint(last)
    return int(ckpt["epoch"]) + 1 if ckpt.get("stopped_early") else epochs


def fit_one_cycle(stage_dir: Path, task: Task, optimizer: torch.optim.Optimizer, loader_train, loader_valid, *,
                  epochs: int, lr: float | tuple[float | None, float], settings: StageSettings, ctx: DistContext,
                  pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5, stage_seed: int = 0,
                  args: Any = None) -> dict[str, Any]:
    """fastai ``fit_one_cycle`` with ``SaveModelCallback`` + ``EarlyStoppingCallback`` on valid loss:
    train, then load the best epoch. Returns the stage's ``metrics.json`` content."""
    stage_dir = Path(stage_dir)
    done = stage_dir / STAGE_DONE
    best = stage_dir / "checkpoint_best.pth"
    if done.is_file():
        _logger.info("stage %s already finished: loading its best epoch", stage_dir.name)
        _load_best(task, optimizer, best, settings.with_opt)
        return json.loads((stage_dir / "metrics.json").read_text()) if (stage_dir / "metrics.json").is_file() else {}
    set_lr_max(optimizer, lr, settings.discriminative_lr)
    schedule = OneCycleSchedule(max(g["lr_max"] for g in optimizer.param_groups),
                                epochs * updates_per_epoch(loader_train), pct_start=pct_start, div=div,
                                div_final=div_final)
    seed_everything(settings.seed + stage_seed + ctx.rank)
    with RunDir(stage_dir, args, ctx) as run:  # the stage's log; the caller's logs get its lines too
        # a killed stage whose last checkpoint already ends the fit still goes through ``fit``: it trains
        # nothing, rebuilds a best checkpoint the kill left unwritten (a kill between the two writes of the
        # final epoch) and writes the stage's metrics.json
        config = FitConfig(epochs=_epochs_to_fit(stage_dir, epochs), output_dir=stage_dir, amp=settings.amp,
                           monitor="loss", monitor_mode="min",
                           min_delta=settings.min_delta, patience=settings.patience, resume="auto",
                           class_names=list(settings.class_names), dataset="chestxray14",
                           progress=settings.progress, compile=settings.compile, channels_last=settings.channels_last,
                           preprocessing=preprocessing_from_args(args))
        lrs = sorted({round(g["lr_max"], 12) for g in optimizer.param_groups})
        _logger.info("stage %s: fit_one_cycle(%d, lr_max %s, pct_start %.2f, div %g)", stage_dir.name, epochs, lrs,
                     pct_start, div)
        summary = fit(task, optimizer, loader_train, config=config, ctx=ctx, run=run, schedule=schedule,
                      data_loader_val=loader_valid, metric_fn=make_metric_fn(task.loss_fn, settings.class_names),
                      args=args)
    ctx.barrier()
    _load_best(task, optimizer, best, settings.with_opt)
    if ctx.is_primary:
        atomic_write_text(json.dumps({"best_epoch": summary.get("best_epoch")}) + "\n", done)
        # the finished stage is only ever reloaded from its best epoch
        (stage_dir / "checkpoint_last.pth").unlink(missing_ok=True)
    return summary


def preprocessing_from_args(args: Any) -> dict[str, Any] | None:
    """What ``predict.py`` needs to know of the inputs, stored in the checkpoints (``charm_xray.adapter``)."""
    from charm_xray.adapter import preprocessing_from_args as build

    return None if args is None else build(args)


def save_model_file(path: Path, task: Task, optimizer: torch.optim.Optimizer, args: Any, **extra: Any) -> None:
    """fastai ``learn.save`` (weights + optimizer): ``{"model", "opt", ...}`` via the atomic writer."""
    from common.run import args_to_dict

    save_checkpoint(path, {"model": task.model.state_dict(), "opt": optimizer.state_dict(),
                           "args": args_to_dict(args), "preprocessing": preprocessing_from_args(args), **extra})
