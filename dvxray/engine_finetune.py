"""Training step, evaluation metrics, callbacks and weight loading of MCB-U (``engine_finetune.py``),
plugged into the shared loop ``common.engine.fit`` (which owns epochs, AMP, EMA updates, checkpoints,
early stopping and resume).

Per-step logged values as in the original: ``loss``, ``loss_sup`` (the same supervised loss; the
distillation term of the original is not implemented), ``acc1`` (element accuracy at 0.5) and
``grad_var`` (variance over classes of the per-class mean positive-gradient magnitude |sigmoid(z) - 1|,
over classes with a positive in the batch; diagnostic only).

Evaluation (``metric_fn``): non-interpolated AP per class (0 for a class without positives, flagged),
mAP, micro/macro F1 and element accuracy at ``--eval_threshold`` (strictly greater), from
``common.metrics.multilabel_metrics``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.checkpoint import load_weights_file
from common.engine import Task
from common.metrics import multilabel_metrics
from dvxray.datasets import TrainTransformPolicy
from dvxray.models.convnextv2 import create_model
from dvxray.models.convnextv2_dual import ConvNeXtV2Dual
from dvxray.models.modules.custom_losses.signals import SignalChannel

_logger = logging.getLogger(__name__)

CSV_COLUMNS = ("epoch", "train_loss", "val_metric", "best_metric", "epoch_time", "avg_epoch_time",
               "estimated_remaining_hours", "completion_time", "grad_var")


def _logits(out: Any) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out


@torch.no_grad()
def positive_grad_variance(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Variance over classes of mean |sigmoid(z) - 1| over each class's positives (0 if < 2 such classes)."""
    pos = targets > 0.5
    counts = pos.sum(0)
    keep = counts > 0
    if int(keep.sum()) < 2:
        return torch.zeros((), device=logits.device)
    mag = ((1.0 - torch.sigmoid(logits.float())) * pos).sum(0)
    return (mag[keep] / counts[keep]).var()


class DvXrayTask(Task):
    """Dual-view multi-label step: ``batch = (view_ol, view_sd, target)``.

    Args:
        model: ``ConvNeXtV2Dual``.
        criterion: the ``--base_loss`` criterion (its buffers, e.g. MCB-Convex ``ema_w``, are
            checkpointed with the task, as is the model's signal channel).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__(model)
        self.criterion = criterion

    # The signal channel's state (CoordAtt-U's w_mcb EMA) is saved with the task (checkpoint key
    # ``task``, entry ``_extra_state``), not in the model's state_dict, whose keys stay exactly the
    # original's; resume and eval_only.py restore it (the original lost it, quirk 5).
    def get_extra_state(self) -> dict:
        signal = getattr(self.model, "signal", None)
        return {"signal": signal.state_dict()} if signal is not None else {}

    def set_extra_state(self, state: dict) -> None:
        signal = getattr(self.model, "signal", None)
        if signal is not None and state.get("signal") is not None:
            signal.load_state_dict(state["signal"])

    def forward(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        img_a, img_b, target = batch
        target = target.float()
        logits = _logits(self.model(img_a, img_b))
        loss = self.criterion(logits, target)
        with torch.no_grad():
            acc1 = ((torch.sigmoid(logits.float()) > 0.5).float() == target).float().mean()
        return {"loss": loss, "loss_sup": loss.detach(), "acc1": acc1,
                "grad_var": positive_grad_variance(logits, target)}

    def predict(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        img_a, img_b, target = batch
        return {"logits": _logits(model(img_a, img_b)).float(), "target": target}


def make_metric_fn(threshold: float, class_names: Sequence[str] | None):
    """``metric_fn`` for ``fit``/``evaluate``: the original's evaluation dict (without the loss)."""

    def metric_fn(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        m = multilabel_metrics(outputs["logits"], outputs["target"], threshold, class_names=class_names)
        return {k: m[k] for k in ("mAP", "f1_micro", "f1_macro", "acc1", "per_class_ap", "no_positive_classes")}

    return metric_fn


def parse_attention_config(text: str | None) -> dict:
    """``--attention_config`` JSON (None or '' -> {})."""
    if text is None or text.strip() == "":
        return {}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--attention_config: invalid JSON {text!r} ({exc.msg} at char {exc.pos})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--attention_config: expected a JSON object like '{{\"N3\":\"coordatt_u\"}}', got {text!r}")
    return cfg


def build_model_from_args(args: argparse.Namespace | dict) -> tuple[ConvNeXtV2Dual, SignalChannel]:
    """The dual-view model and its signal channel from parsed flags (or a checkpoint's ``args`` dict)."""
    a = argparse.Namespace(**args) if isinstance(args, dict) else args
    # --drop_path is ignored by the original (backbone built with rate 0, quirk 2) unless corrected
    drop_path = a.drop_path if a.apply_drop_path else 0.0
    backbone = create_model(a.model, num_classes=0, drop_path_rate=drop_path)
    signal = SignalChannel(momentum=0.9)
    model = ConvNeXtV2Dual(
        backbone, a.num_classes, fuse_mode=a.fuse_mode, fuse_levels=a.fuse_levels, out_indices=a.out_indices,
        head_type=a.head_type, fpn_out_channels=a.fpn_out_channels,
        attention_config=parse_attention_config(a.attention_config), xattn_heads=a.xattn_heads,
        xattn_reduction=a.xattn_reduction, ahcr_mode=a.ahcr_mode, return_intermediate=a.return_intermediate,
        signal=signal, batch_views=a.batch_views,
    )
    return model, signal


def load_finetune_weights(model: nn.Module, path: str | Path, *, model_prefix: str = "", model_mount: str = "",
                          report_dir: str | Path = ".") -> dict[str, int]:
    """Non-strict loading of ``--finetune`` weights as in the original ``_load_finetune_weights``.

    Strips ``module.`` and ``model_prefix``, adds ``model_mount``, keeps the keys that exist in the model
    with an identical shape, logs loaded / shape-skipped / missing / unexpected counts and writes
    ``finetune_missing_keys.txt`` and ``finetune_unexpected_keys.txt`` into ``report_dir``.

    Returns:
        {"loaded", "shape_skipped", "missing", "unexpected"} counts.
    """
    raw = load_weights_file(path)
    sd = {}
    for k, v in raw.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if model_prefix and k.startswith(model_prefix):
            k = k[len(model_prefix):]
        sd[model_mount + k] = v
    own = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    loadable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    shape_skipped = sorted(k for k in sd if k in own and own[k].shape != sd[k].shape)
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in loadable)
    model.load_state_dict(loadable, strict=False)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "finetune_missing_keys.txt").write_text("".join(k + "\n" for k in missing))
    (report_dir / "finetune_unexpected_keys.txt").write_text(
        "".join(k + "\n" for k in unexpected) + "".join(f"{k} (shape mismatch)\n" for k in shape_skipped))
    counts = {"loaded": len(loadable), "shape_skipped": len(shape_skipped), "missing": len(missing),
              "unexpected": len(unexpected)}
    _logger.info("[finetune] %s: loaded %d, shape-skipped %d, missing %d, unexpected %d (lists in %s)",
                 path, counts["loaded"], counts["shape_skipped"], counts["missing"], counts["unexpected"], report_dir)
    return counts


class TrainingLogCallback:
    """Writes the original ``training_log.csv`` columns (one row per epoch).

    Args:
        epochs: planned epochs (for the remaining-time estimate).
        monitor_key: the record key of the monitored validation metric (``val_mAP`` or ``val_mAP_ema``).
    """

    def __init__(self, epochs: int, monitor_key: str):
        self.epochs = epochs
        self.monitor_key = monitor_key
        self.total_time = 0.0
        self.timed_epochs = 0

    def csv_row(self, state: Any, record: dict[str, Any]) -> dict[str, Any]:
        self.total_time += float(record.get("epoch_time", 0.0))
        self.timed_epochs += 1
        avg = self.total_time / self.timed_epochs
        remaining = avg * max(0, self.epochs - record["epoch"] - 1)
        return {
            "epoch": record["epoch"],
            "train_loss": record.get("train_loss"),
            "val_metric": record.get(self.monitor_key),
            "best_metric": state.best_metric,
            "epoch_time": record.get("epoch_time"),
            "avg_epoch_time": avg,
            "estimated_remaining_hours": remaining / 3600.0,
            "completion_time": (datetime.now() + timedelta(seconds=remaining)).strftime("%m-%d %H:%M"),
            "grad_var": record.get("train_grad_var"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"total_time": self.total_time, "timed_epochs": self.timed_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_time = float(state["total_time"])
        self.timed_epochs = int(state["timed_epochs"])


class AugmentationCallback:
    """Feeds the epoch to the transform policy (``conditional_1``) and, for ``conditional_2``, makes the
    3 classes with the lowest validation AP the hard set after each validation.

    Args:
        policy: the training transform policy.
        ap_key: the per-class AP metric (``per_class_ap`` or ``per_class_ap_ema``); the epoch record
            holds it as ``val_<ap_key>``.
    """

    def __init__(self, policy: TrainTransformPolicy, ap_key: str):
        self.policy = policy
        self.ap_key = ap_key if ap_key.startswith("val_") else f"val_{ap_key}"

    def on_epoch_start(self, state: Any) -> None:
        self.policy.set_epoch(state.epoch)

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        if self.policy.aug_mode == "conditional_2" and self.ap_key in record:
            ap = torch.tensor(record[self.ap_key])
            lowest = torch.argsort(ap, stable=True)[:3].tolist()
            self.policy.set_hard_classes([self.policy.class_names[i] for i in lowest])

    def state_dict(self) -> dict[str, Any]:
        return {"hard": sorted(self.policy.hard)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.hard = set(int(i) for i in state["hard"])


def count_params(model: nn.Module) -> tuple[float, float]:
    """(total, trainable) parameters in millions."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total / 1e6, trainable / 1e6
