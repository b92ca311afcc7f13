"""DCAL training over the shared engine: the training task, builders and the run driver.

The loop itself is ``common.engine.fit``; this module supplies the DCAL step (``DCALTask``), the
model/data/optimiser/schedule builders from a validated config, and ``train_from_config`` used by
``scripts/train_fgvc.py`` and ``scripts/train_reid.py``.

Changes from the replication's trainer: the uncertainty log-variances are optimised (quirk 7);
``warmup_epochs`` is applied (linear warm-up, quirk 9); ``lr_scale_batch`` implements the recipe's
``lr_scaled = lr / 512 * batch`` (quirk 9); re-ID batches come from a P x K identity sampler
(quirk 12); the learning rate follows the schedule per optimizer update, not per epoch; re-ID model
selection uses query-vs-gallery mAP and writes a best checkpoint (quirk 15).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.data.samplers import RandomIdentitySampler
from common.dist import DistContext, init_distributed
from common.engine import FitConfig, Task, build_loader, fit, updates_per_epoch
from common.optim import build_optimizer
from common.predictions import (
    EvalRecorder,
    PredictionWriter,
    ReidPredictionWriter,
    relative_id,
    start_recording,
)
from common.pretrained import random_init_warning
from common.run import RunDir
from common.schedule import ConstantSchedule, PiecewiseSchedule, WarmupCosineSchedule
from common.splits import reid_rules
from dcal.datasets.base_dataset import ImageRecordDataset, Record
from dcal.datasets.fgvc_datasets import build_fgvc_transform, read_fgvc
from dcal.datasets.reid_datasets import build_reid_transform, read_reid
from dcal.models.backbones.timm_wrapper import create_backbone
from dcal.models.dual_attention_model import DualAttentionModel
from dcal.utils.config import ConfigError, ExperimentConfig, to_dict
from dcal.utils.losses import TripletLoss, UncertaintyWeightedLoss
from dcal.utils.metrics import fgvc_metrics, reid_metrics

logger = logging.getLogger(__name__)


class DCALTask(Task):
    """One DCAL training step: per-branch losses combined by uncertainty weighting.

    Args:
        model: the DualAttentionModel.
        uncertainty_weighting: learn the log-variances (True) or keep the fixed weights 1/2.
        ce_weight, triplet_weight, triplet_margin: re-ID per-branch loss = ce_weight * CE +
            triplet_weight * batch-hard triplet (FGVC uses CE only).

    Batches: FGVC ``(images, labels)``; re-ID training ``(images, labels, pids, camids)``; re-ID
    evaluation ``(images, is_query, pids, camids)``.
    """

    def __init__(self, model: DualAttentionModel, *, uncertainty_weighting: bool = True, ce_weight: float = 1.0,
                 triplet_weight: float = 1.0, triplet_margin: float = 0.3):
        super().__init__(model)
        names = ["sa"] + (["glca"] if model.glca is not None else []) + (["pwca"] if model.use_pwca else [])
        self.uncertainty = UncertaintyWeightedLoss(names, learnable=uncertainty_weighting)
        self.reid = model.task_type == "reid"
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.triplet = TripletLoss(triplet_margin)

    def forward(self, batch: Any) -> dict[str, Tensor]:
        images, labels = batch[0], batch[1]
        out = self.model(images)
        branches = [n for n in self.uncertainty.names if f"{n}_logits" in out]
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        ce_sum = tri_sum = 0.0
        for name in branches:
            ce = F.cross_entropy(out[f"{name}_logits"].float(), labels)
            if self.reid:
                tri = self.triplet(out[f"{name}_feat"], labels)
                losses[name] = self.ce_weight * ce + self.triplet_weight * tri
                ce_sum, tri_sum = ce_sum + ce.detach(), tri_sum + tri.detach()
            else:
                losses[name] = ce
            stats[f"{name}_loss"] = losses[name].detach()
        loss = self.uncertainty(losses)
        with torch.no_grad():
            stats["acc1"] = (out["sa_logits"].argmax(dim=1) == labels).float().mean()
            if self.reid:
                stats["ce_loss"] = ce_sum / len(branches)
                stats["triplet_loss"] = tri_sum / len(branches)
            for name, w in zip(self.uncertainty.names, self.uncertainty.log_vars, strict=True):
                stats[f"log_var_{name}"] = w.detach()
        return {"loss": loss, **stats}

    def predict(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        out = model(batch[0])
        if self.reid:
            return {"feat": out["embedding"], "is_query": batch[1], "pid": batch[2], "camid": batch[3]}
        pred = {"probs": out["embedding"], "logits_sa": out["sa_logits"], "target": batch[1]}
        if "glca_logits" in out:
            pred["logits_glca"] = out["glca_logits"]
        return pred


class HistoryCallback:
    """Writes the replication's ``training_history.json`` (train_loss, val_loss, train_acc, val_acc,
    learning_rate; re-ID adds val_mAP and val_rank1) after every epoch; resumable."""

    def __init__(self, reid: bool):
        self.reid = reid
        self.history: dict[str, list] = {k: [] for k in ("train_loss", "val_loss", "train_acc", "val_acc", "learning_rate")}
        if reid:
            self.history.update(val_mAP=[], val_rank1=[])

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        h = self.history
        h["train_loss"].append(record.get("train_loss"))
        h["train_acc"].append(record.get("train_acc1"))
        h["learning_rate"].append(record.get("train_lr"))
        if self.reid:
            h["val_mAP"].append(record.get("val_mAP"))
            h["val_rank1"].append(record.get("val_rank1"))
        else:
            h["val_loss"].append(record.get("val_loss"))
            h["val_acc"].append(record.get("val_acc1"))
        state.run.write_json("training_history.json", h)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"]


def image_size(cfg: ExperimentConfig) -> tuple[int, int]:
    return int(cfg.data.image_size[0]), int(cfg.data.image_size[1])


def build_model(cfg: ExperimentConfig, *, load_pretrained: bool = True) -> DualAttentionModel:
    """Backbone + DCAL branches from the ``model`` section (embed_dim/num_heads must match the backbone)."""
    m = cfg.model
    backbone = create_backbone(
        m.backbone_name, img_size=image_size(cfg), patch_size=m.patch_size, depth=m.num_sa_blocks,
        drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate,
        pretrained_path=m.pretrained_path if load_pretrained else None,
    )
    heads = backbone.blocks[0].attn.num_heads
    if backbone.embed_dim != m.embed_dim or heads != m.num_heads:
        raise ConfigError(f"model.embed_dim/num_heads = {m.embed_dim}/{m.num_heads} do not match backbone "
                          f"{m.backbone_name} ({backbone.embed_dim}/{heads})")
    return DualAttentionModel(backbone, m.num_classes, task_type=cfg.task_type, top_k_ratio=m.top_k_ratio,
                              use_glca=m.num_glca_blocks == 1, use_pwca=m.num_pwca_blocks > 0, neck_feat=m.neck_feat)


def norm_stats(model: DualAttentionModel) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input normalisation of the backbone's pretrained weights (timm pretrained_cfg)."""
    cfg = model.backbone.pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])


def query_gallery_records(query: list[Record], gallery: list[Record]) -> list[Record]:
    """One evaluation list; the ``label`` field carries is_query (1 query, 0 gallery)."""
    return ([Record(r.path, 1, r.camid, r.pid, r.name, r.source) for r in query]
            + [Record(r.path, 0, r.camid, r.pid, r.name, r.source) for r in gallery])


def evaluation_recorder(cfg: ExperimentConfig, train_ds: ImageRecordDataset, eval_ds: ImageRecordDataset,
                        class_names: list[str] | None, folder: str | Path, *, is_primary: bool = True,
                        distance_metric: str = "euclidean") -> EvalRecorder:
    """split_manifest.json and the split check (train / test, or train / query / gallery with identities and
    cameras), and the recorder writing predictions.csv (re-ID: distmat.npy + the query / gallery listing)."""
    def levels(records: list[Record]) -> dict[str, list]:
        out: dict[str, list] = {"ids": [Path(r.path).name if cfg.task_type == "reid" else
                                        relative_id(r.path, cfg.data.data_root) for r in records]}
        if cfg.task_type == "reid":
            out.update(identity=[r.pid for r in records], camera=[r.camid for r in records])
        return out

    ev = eval_ds.records
    if cfg.task_type == "fgvc":
        splits = {"train": levels(train_ds.records), "test": levels(ev)}
        writer: Any = PredictionWriter(splits["test"]["ids"], class_names=class_names, score_key="probs",
                                       activation="none")
        allowed: list[dict[str, Any]] = []
    else:
        query, gallery = [r for r in ev if r.label == 1], [r for r in ev if r.label == 0]
        splits = {"train": levels(train_ds.records), "query": levels(query), "gallery": levels(gallery)}
        writer = ReidPredictionWriter(levels(ev)["ids"], distance_metric=distance_metric)
        allowed = [*reid_rules(), {"splits": ["query", "gallery"], "levels": ["image"],
                                   "reason": "an image listed as query and gallery: dropped from its own ranking by "
                                             "the same-camera rule"}]
    return start_recording(folder, splits, writer=writer, protocol=f"{cfg.data.dataset_name} standard",
                           allowed=allowed, dataset=cfg.data.dataset_name, is_primary=is_primary)


def build_datasets(cfg: ExperimentConfig, mean, std) -> tuple[ImageRecordDataset, ImageRecordDataset, list[str] | None]:
    """(train dataset, evaluation dataset, class names or None). FGVC evaluates on the test split;
    re-ID on query + gallery."""
    d = cfg.data
    size = image_size(cfg)
    if cfg.task_type == "fgvc":
        train, test, class_names = read_fgvc(d.dataset_name, d.data_root)
        num = len(class_names)
        tf_train = build_fgvc_transform(size, train=True, resize_size=d.resize_size, mean=mean, std=std)
        tf_eval = build_fgvc_transform(size, train=False, resize_size=d.resize_size, mean=mean, std=std)
        train_ds, eval_ds = ImageRecordDataset(train, tf_train), ImageRecordDataset(test, tf_eval)
    else:
        train, query, gallery = read_reid(d.dataset_name, d.data_root)
        num, class_names = len({r.label for r in train}), None
        train_ds = ImageRecordDataset(train, build_reid_transform(size, train=True, mean=mean, std=std), with_camera=True)
        eval_ds = ImageRecordDataset(query_gallery_records(query, gallery),
                                     build_reid_transform(size, train=False, mean=mean, std=std), with_camera=True)
    if num != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {d.data_root} has {num} training "
                          f"{'classes' if cfg.task_type == 'fgvc' else 'identities'} "
                          f"(set --opts model.num_classes={num})")
    return train_ds, eval_ds, class_names


def build_schedule(cfg: ExperimentConfig, lr: float, upe: int):
    """Per-update learning rate: cosine with linear warm-up, multistep (epochs) or constant."""
    t = cfg.training
    warm = t.warmup_epochs * upe
    if t.scheduler == "cosine":
        return WarmupCosineSchedule(lr, total_updates=t.num_epochs * upe, warmup_updates=warm, min_lr=t.min_lr)
    if t.scheduler == "multistep":
        pieces = [(0, WarmupCosineSchedule(lr, total_updates=max(warm, 1), warmup_updates=warm))]
        pieces += [(m * upe, ConstantSchedule(lr * t.gamma ** (i + 1))) for i, m in enumerate(sorted(t.milestones))]
        return PiecewiseSchedule(pieces)
    return ConstantSchedule(lr)


def resolve_device(cfg: ExperimentConfig, gpu: int) -> str:
    """``device: cuda`` + ``--gpu N`` -> ``cuda:N``; any other device string is used as given."""
    return f"cuda:{gpu}" if cfg.device == "cuda" else cfg.device


def preprocessing_from_config(cfg: ExperimentConfig, mean, std, class_names) -> dict[str, Any]:
    """What ``predict.py`` needs to know of the inputs, stored in the checkpoints (``dcal.adapter``)."""
    from dcal.adapter import preprocessing_from_config as build

    return build(cfg, mean, std, class_names)


def train_from_config(cfg: ExperimentConfig, *, task_type: str, gpu: int = 0, resume: str | None = None,
                      extra_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train DCAL as described by ``cfg``; outputs go to ``cfg.save_dir``.

    Args:
        cfg: validated configuration.
        task_type: what the calling script trains ("fgvc" or "reid"); must equal ``cfg.task_type``.
        gpu: CUDA device index used when ``cfg.device`` is "cuda".
        resume: checkpoint file/folder, "auto", or None.
        extra_args: command-line values stored with the resolved config in ``args.json``; its
            ``compile`` (``--compile``) turns torch.compile on.

    Returns:
        The content of ``metrics.json`` (see ``common.engine.fit``).
    """
    if cfg.task_type != task_type:
        raise ConfigError(f"task_type is '{cfg.task_type}' but this script trains '{task_type}'")
    t, d = cfg.training, cfg.data
    if cfg.model.num_pwca_blocks > 0 and d.batch_size < 2:
        raise ConfigError(f"data.batch_size {d.batch_size} is too small for PWCA, which pairs each training image "
                          "with another image of its batch (use >= 2, or model.num_pwca_blocks=0)")
    for key, default in (("log_interval", 100), ("save_interval", 10)):
        if getattr(t, key) != default:
            logger.warning("training.%s is accepted for compatibility but ignored: the engine logs every epoch "
                           "and keeps checkpoint_last.pth / checkpoint_best.pth", key)
    torch.manual_seed(cfg.seed)
    ctx: DistContext = init_distributed(resolve_device(cfg, gpu), flag="config key device (with --gpu)")
    run = RunDir(cfg.save_dir, {**(extra_args or {}), "config": to_dict(cfg)}, ctx, flag="config key save_dir")
    model = build_model(cfg)
    warnings = [] if cfg.model.pretrained_path else [
        random_init_warning("model.pretrained_path", cfg.model.backbone_name, "timm ImageNet weights")]
    mean, std = norm_stats(model)
    train_ds, eval_ds, class_names = build_datasets(cfg, mean, std)
    task = DCALTask(model, uncertainty_weighting=t.uncertainty_weighting, ce_weight=t.ce_weight,
                    triplet_weight=t.triplet_weight, triplet_margin=t.triplet_margin).to(ctx.device)
    if cfg.task_type == "reid" and t.sampler == "pk":
        sampler = RandomIdentitySampler(train_ds.labels, d.batch_size, t.num_instances, seed=cfg.seed,
                                        num_replicas=ctx.world_size, rank=ctx.rank)
        loader_train = build_loader(train_ds, d.batch_size, train=True, ctx=ctx, num_workers=d.num_workers,
                                    batch_sampler=sampler)
    else:
        loader_train = build_loader(train_ds, d.batch_size, train=True, ctx=ctx, num_workers=d.num_workers, seed=cfg.seed)
    loader_eval = build_loader(eval_ds, d.batch_size, train=False, ctx=ctx, num_workers=d.num_workers)

    lr = t.learning_rate
    if t.lr_scale_batch:
        lr = lr * d.batch_size * ctx.world_size * t.accum_steps / t.lr_scale_batch
        logger.info("learning rate %.3g = %.3g x batch %d / %d", lr, t.learning_rate,
                    d.batch_size * ctx.world_size * t.accum_steps, t.lr_scale_batch)
    model_params = [p for p in task.model.parameters() if p.requires_grad]
    groups = [{"params": model_params, "weight_decay": t.weight_decay}]
    if task.uncertainty.log_vars.requires_grad:
        # no weight decay: it would pull every log-variance to 0, i.e. back to fixed weights
        groups.append({"params": [task.uncertainty.log_vars], "weight_decay": 0.0})
    optimizer = build_optimizer(t.optimizer, groups, lr=lr, weight_decay=t.weight_decay, momentum=t.momentum)
    upe = updates_per_epoch(loader_train, t.accum_steps)
    schedule = build_schedule(cfg, lr, upe)
    config = FitConfig(
        epochs=t.num_epochs, output_dir=cfg.save_dir, amp=t.amp, clip_grad=t.clip_grad, accum_steps=t.accum_steps,
        monitor="acc1" if cfg.task_type == "fgvc" else "mAP", monitor_mode="max", resume=resume,
        class_names=class_names, dataset=cfg.data.dataset_name, find_unused_parameters=False,
        compile=bool((extra_args or {}).get("compile", False)), channels_last=(extra_args or {}).get("channels_last"),
        warnings=warnings,
        preprocessing=preprocessing_from_config(cfg, mean, std, class_names),
    )
    recorder = evaluation_recorder(cfg, train_ds, eval_ds, class_names, cfg.save_dir, is_primary=ctx.is_primary)
    config.recorder = recorder
    metric_fn = fgvc_metrics if cfg.task_type == "fgvc" else reid_metrics
    return fit(task, optimizer, loader_train, config=config, ctx=ctx, run=run, schedule=schedule,
               data_loader_val=loader_eval, metric_fn=metric_fn, callbacks=[HistoryCallback(cfg.task_type == "reid")],
               args={**(extra_args or {}), "config": to_dict(cfg)})
