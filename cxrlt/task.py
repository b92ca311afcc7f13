"""Training step, metrics, schedule and the two-phase (head warm-up -> full fine-tune) driver shared by
``train_stage1.py`` and ``train_stage2.py``, on top of ``common.engine.fit``.

Phase 1 (reference cxrlt.md 5.5): backbone frozen, AdamW over ``bn`` + head at a constant lr, live model
evaluated. Phase 2: everything trainable, fresh AdamW with a backbone group and a head group, EMA created
from the warmed-up model, EMA evaluated and used to pick ``ckpt_best``. Each phase is one ``fit`` call
in the same output folder (``warmup_checkpoint_last.pth`` / ``log_warmup.csv`` for phase 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.dist import DistContext
from common.ema import ModelEma
from common.engine import FitConfig, Task, fit, updates_per_epoch
from common.metrics import f1_scores, multilabel_metrics
from common.run import RunDir
from common.schedule import ConstantSchedule
from cxrlt.losses import LA_SIGNS, logit_adjust

_logger = logging.getLogger(__name__)

WARMUP_CKPT = "warmup_checkpoint_last.pth"
LAST_CKPT = "checkpoint_last.pth"


class CXRTask(Task):
    """Multi-label step: logits (float32) -> loss; optional training-only logit adjustment.

    Args:
        model: the network.
        loss: callable ``(logits, targets, mask=None) -> scalar``.
        log_prior: per-class log prior; when given, training logits become z - tau * log_prior
            (validation uses raw logits, as ``train_standard_head.py``).
        tau: logit-adjustment temperature.
        la_sign: "original" (z - tau * log_prior, the original code) or "menon" (z + tau * log_prior,
            Menon et al.'s logit-adjusted loss); see ``cxrlt.losses.logit_adjust``.
        mask_negative_targets: targets < 0 (uncertain labels under ``--uncertain_policy ignore``) are
            masked out of the loss.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, *, log_prior: torch.Tensor | None = None,
                 tau: float = 1.0, mask_negative_targets: bool = False, la_sign: str = "original"):
        super().__init__(model)
        if la_sign not in LA_SIGNS:
            raise ValueError(f"--la_sign: unknown sign '{la_sign}' (choose from {', '.join(LA_SIGNS)})")
        self.loss = loss
        self.tau = tau
        self.la_sign = la_sign
        self.mask_negative_targets = mask_negative_targets
        self.backbone_eval = False
        if log_prior is not None:
            self.register_buffer("log_prior", log_prior.float(), persistent=False)
        else:
            self.log_prior = None

    def train(self, mode: bool = True) -> CXRTask:
        super().train(mode)
        if mode and self.backbone_eval:
            # Corrected warm-up (--warmup_backbone_eval): the frozen backbone runs without stochastic depth.
            self.model.backbone.eval()
        return self

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.mask_negative_targets:
            mask = (target >= 0).float()
            target = target.clamp(min=0)
        return self.loss(logits.float(), target.float(), mask=mask)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        images, target = batch
        logits = self.model(images).float()
        if self.log_prior is not None:
            logits = logit_adjust(logits, self.log_prior, self.tau, self.la_sign)
        return {"loss": self.compute_loss(logits, target)}

    def predict(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, target = batch
        return {"logits": model(images).float(), "target": target}


def make_metric_fn(task: CXRTask, class_names: Sequence[str]) -> Callable[[dict[str, torch.Tensor]], dict]:
    """Metrics on the gathered validation outputs: macro mAP (the challenge metric; classes without
    positives count 0 as in the original), macro AUROC, macro/micro F1 at 0.5, per-class AP / AUROC / F1,
    and the validation loss (the training loss on raw logits)."""

    def metric_fn(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        logits, target = outputs["logits"].float(), outputs["target"].float()
        binary = target.clamp(min=0)
        metrics = multilabel_metrics(logits, binary, class_names=class_names)
        metrics["per_class_f1"] = f1_scores(logits, binary)["per_class_f1"]
        device = next(iter(task.loss.buffers()), logits).device
        with torch.no_grad():
            metrics["loss"] = float(task.compute_loss(logits.to(device), target.to(device)))
        return metrics

    return metric_fn


class EpochLambdaSchedule:
    """The original's per-epoch LambdaLR as a function of the update count (stateless, resume-safe).

    factor(e) = (e + 1) / warmup_epochs for e < warmup_epochs, else
    max(min_factor, 0.5 * (1 + cos(pi * (e - warmup_epochs) / (total_epochs - warmup_epochs)))),
    with e = update // updates_per_epoch; lr = base_lr * factor * group["lr_scale"].
    """

    def __init__(self, base_lr: float, updates_per_epoch: int, *, total_epochs: int, warmup_epochs: int = 5,
                 min_factor: float = 0.01):
        if updates_per_epoch < 1:
            raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
        self.base_lr = base_lr
        self.updates_per_epoch = updates_per_epoch
        self.total_epochs = total_epochs
        self.warmup_epochs = warmup_epochs
        self.min_factor = min_factor

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        span = max(1, self.total_epochs - self.warmup_epochs)
        return max(self.min_factor, 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / span)))

    def lr_for(self, update: int, group: dict) -> float:
        if "fixed_lr" in group:
            return group["fixed_lr"]
        return self.base_lr * self.factor(update // self.updates_per_epoch) * group.get("lr_scale", 1.0)


class GlobalEpochColumn:
    """Adds ``global_epoch`` (1-based over both phases, as the original logs it) to each CSV row."""

    def __init__(self, offset: int):
        self.offset = offset

    def on_epoch_end(self, state: Any, record: dict) -> None:
        record["global_epoch"] = self.offset + record["epoch"] + 1


class WarmupBestBar:
    """Quirk 12: phase-2 ``ckpt_best`` is written only once the EMA beats the warm-up's best live mAP."""

    def __init__(self, bar: float | None):
        self.bar = bar

    def on_fit_start(self, state: Any) -> None:
        if self.bar is not None and state.best_metric is None:
            state.best_metric = self.bar


@dataclass
class PhaseSettings:
    """What differs between the two stages."""

    warmup_epochs: int
    warmup_lr: float
    warmup_weight_decay: float
    finetune_epochs: int
    backbone_lr: float
    head_lr: float
    backbone_weight_decay: float
    head_weight_decay: float
    sched_warmup_epochs: int
    min_lr_factor: float
    ema_decay: float
    clip_grad: float | None
    amp: str
    ckpt_best: str
    resume: str
    warmup_best_is_bar: bool = True
    warmup_backbone_eval: bool = False
    skip_warmup: bool = False
    adam_eps: float = 1e-5
    class_names: Sequence[str] = field(default_factory=tuple)
    skip_nonfinite: bool = False
    compile: bool = False
    channels_last: bool | None = None
    warnings: Sequence[str] = ()  # for both phases' metrics.json (protocol.warnings)


def _set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    for name, p in model.named_parameters():
        if "backbone" in name:
            p.requires_grad_(trainable)


def preprocessing_from_args(args: Any, class_names: Any) -> dict | None:
    """What ``predict.py`` needs to know of the inputs, stored in the checkpoints (``cxrlt.adapter``)."""
    from cxrlt.adapter import preprocessing_from_args as build

    return None if args is None else build(args, class_names)


def two_phase_fit(task: CXRTask, loader_train, loader_val, *, settings: PhaseSettings, ctx: DistContext,
                  run: RunDir, output_dir: str | Path, args: Any, recorder: Any = None) -> dict:
    """Run the head warm-up then the full fine-tune; returns phase 2's ``metrics.json`` content.

    ``settings.resume``: "" (fresh), "auto" (continue whichever phase the folder's checkpoints reached)
    or a phase-2 ``checkpoint_last.pth`` file / folder. ``recorder`` (``common.predictions.EvalRecorder``)
    saves phase 2's reported predictions.
    """
    out = Path(output_dir)
    model = task.model
    metric_fn = make_metric_fn(task, settings.class_names)
    resume = settings.resume or ""
    phase2_resume: str | None = None
    run_warmup = settings.warmup_epochs > 0 and not settings.skip_warmup
    if resume == "auto" and (out / LAST_CKPT).is_file():
        phase2_resume, run_warmup = "auto", False
    elif resume not in ("", "auto"):
        phase2_resume, run_warmup = resume, False

    bar = None
    if run_warmup:
        _set_backbone_trainable(model, False)
        task.backbone_eval = settings.warmup_backbone_eval
        head_params = [p for p in task.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(head_params, lr=settings.warmup_lr, weight_decay=settings.warmup_weight_decay,
                                eps=settings.adam_eps)
        cfg = FitConfig(epochs=settings.warmup_epochs, output_dir=out, amp=settings.amp, clip_grad=settings.clip_grad,
                        monitor="mAP", ckpt_last=WARMUP_CKPT, ckpt_best=None,
                        resume="auto" if resume == "auto" else None, csv_name="log_warmup.csv",
                        class_names=settings.class_names, find_unused_parameters=True,
                        skip_nonfinite=settings.skip_nonfinite, compile=settings.compile,
                    channels_last=settings.channels_last, warnings=settings.warnings,
                    preprocessing=preprocessing_from_args(args, settings.class_names))
        _logger.info("phase 1: head warm-up for %d epoch(s), lr %g, backbone frozen", settings.warmup_epochs,
                     settings.warmup_lr)
        summary = fit(task, opt, loader_train, config=cfg, ctx=ctx, run=run,
                      schedule=ConstantSchedule(settings.warmup_lr), data_loader_val=loader_val,
                      metric_fn=metric_fn, callbacks=[GlobalEpochColumn(0)], args=args)
        bar = summary["best"].get("mAP")
        task.backbone_eval = False
        _set_backbone_trainable(model, True)

    # Phase 2: EMA of the warmed-up model (created after .to(device), before DDP wrapping in fit).
    ema = ModelEma(model, decay=settings.ema_decay)
    backbone = [p for n, p in task.named_parameters() if "backbone" in n and p.requires_grad]
    rest = [p for n, p in task.named_parameters() if "backbone" not in n and p.requires_grad]
    groups = [
        {"params": backbone, "weight_decay": settings.backbone_weight_decay,
         "lr_scale": settings.backbone_lr / settings.head_lr, "name": "backbone"},
        {"params": rest, "weight_decay": settings.head_weight_decay, "lr_scale": 1.0, "name": "head"},
    ]
    opt = torch.optim.AdamW(groups, lr=settings.head_lr, eps=settings.adam_eps)
    schedule = EpochLambdaSchedule(settings.head_lr, updates_per_epoch(loader_train),
                                   total_epochs=settings.finetune_epochs,
                                   warmup_epochs=settings.sched_warmup_epochs, min_factor=settings.min_lr_factor)
    callbacks: list[Any] = [GlobalEpochColumn(settings.warmup_epochs)]
    if settings.warmup_best_is_bar:
        callbacks.append(WarmupBestBar(bar))
    cfg = FitConfig(epochs=settings.finetune_epochs, output_dir=out, amp=settings.amp, clip_grad=settings.clip_grad,
                    monitor="mAP", eval_ema=True, select_on_ema=True, ckpt_last=LAST_CKPT,
                    ckpt_best=settings.ckpt_best, resume=phase2_resume, csv_name="log.csv",
                    class_names=settings.class_names, skip_nonfinite=settings.skip_nonfinite, compile=settings.compile,
                    channels_last=settings.channels_last, warnings=settings.warnings, recorder=recorder,
                    preprocessing=preprocessing_from_args(args, settings.class_names))
    _logger.info("phase 2: full fine-tune for %d epoch(s), backbone lr %g, head lr %g, EMA %g",
                 settings.finetune_epochs, settings.backbone_lr, settings.head_lr, settings.ema_decay)
    return fit(task, opt, loader_train, config=cfg, ctx=ctx, run=run, schedule=schedule,
               data_loader_val=loader_val, metric_fn=metric_fn, ema=ema, callbacks=callbacks, args=args)
