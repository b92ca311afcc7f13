"""XMNet pipeline behind ``xmnet/Train.py`` (original: rmf3mc/xmnet ``Train.py``; xmnet.md §2, §7).

``main(args)`` takes the parsed, checked flags of ``Train.py`` and runs: classification and/or
segmentation training through ``common.engine.fit`` (SGD momentum 0.9, weight decay 5e-4, cosine over
``--max_epoch`` stepped per epoch: ``common.schedule.EpochCosineSchedule``), selection of the checkpoint
by the lowest training CE (the original) or on a validation part (``--select_on val``), the test
evaluation, then the XGBoost + Optuna stage on the attention-modulated pooled features (rank 0 only),
the original's result files, predicted-mask overlays and ``metrics.json``, then (``--plots``) the run's
pictures through ``common.plots``.

Here: ``XMNetTask`` (the training step and its per-epoch sums), ``EpochHooks``, ``make_metric_fn``,
``load_model_path``, ``extract_features``, ``main``, ``xgboost_stage``, ``save_predicted_masks``,
``finish_outputs`` and the flag-resolution helpers (``attention_of``, ``resolved_lr``,
``resolved_batch_size``, ``run_name``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, save_checkpoint
from common.dist import DistContext, init_distributed
from common.engine import FitConfig, Task, build_loader, collect_outputs, fit, updates_per_epoch
from common.fingerprint import Fingerprint, listing_sha256, make_fingerprint
from common.predictions import (
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    PredictionWriter,
    loader_order,
    relative_id,
    start_recording,
)
from common.pretrained import random_init_warning
from common.run import RunDir, args_to_dict
from common.schedule import EpochCosineSchedule
from common.seed import seed_everything
from xmnet.adapter import preprocessing_from_args
from xmnet.backboneModels import XMNetModel, load_pretrained, upgrade_legacy_keys
from xmnet.leafvein2 import LeafVeinDataset, split_indices, subset_fraction
from xmnet.unet3 import segmentation_loss
from xmnet.utils import (
    MASK_GUIDANCE_WEIGHT,
    append_all_results,
    get_folder_path,
    iou_dice,
    mask_guided_mse,
    save_overlay,
    seg_target,
    timestamp_name,
    write_model_accuracies,
)
from xmnet.xgb_stage import FeatureSet, check_study, run_study

_logger = logging.getLogger(__name__)


def attention_of(args: argparse.Namespace) -> str:
    return "xmnet" if args.xmnet else "mmanet" if args.mmanet else "none"



def resolved_lr(args: argparse.Namespace) -> float:
    if args.lr is not None:
        return args.lr
    return 0.02 if args.model_path and not args.unet else 0.05


def resolved_batch_size(args: argparse.Namespace) -> int:
    if args.batch_size is not None:
        return args.batch_size
    return 8 if args.model_path else 32


# Flags left out of the Optuna study's fingerprint: they do not change the features or the search, or they stand
# for something recorded otherwise.
STUDY_FINGERPRINT_EXCLUDED = (
    "output_dir", "optuna_storage", "optuna_study_name",  # where the study lives
    "overwrite", "resume",  # what to do with old artefacts (a resumed training ends as an uninterrupted one)
    # how fast: devices, loader processes, DataParallel, compilation, memory layout, parallel trials, threads
    "device", "num_workers", "dataparallel", "compile", "channels_last", "optuna_n_jobs", "xgb_nthread",
    "plots", "save_masks", "local_train",  # pictures, mask overlays, a flag without effect
    "xgb_stage",  # whether the stage runs: a study is only reused when it does
    "n_trials",  # the study is extended to --n_trials finished trials in total (its trials stay valid)
    "data_dir", "model_path", "pretrained_weights",  # paths: the files' SHA-256 are recorded instead
)


def study_fingerprint(args: argparse.Namespace, root: Path) -> Fingerprint:
    """What the XGBoost study's trials are made from: the training and XGBoost flags (lr and batch size as
    resolved), labels.pkl, the image folders' file lists, --model_path and --pretrained_weights."""
    digests = {f"--data_dir {args.dataset}/{folder}/ (file list)": listing_sha256(root / folder)
               for folder in ("train", "test", "l2_mask")}
    return make_fingerprint(args, exclude=STUDY_FINGERPRINT_EXCLUDED,
                            values={"lr": resolved_lr(args), "batch_size": resolved_batch_size(args)},
                            inputs={f"--data_dir {args.dataset}/labels.pkl": root / "labels.pkl",
                                    "--model_path": args.model_path, "--pretrained_weights": args.pretrained_weights},
                            digests=digests)


def study_name_of(args: argparse.Namespace) -> str:
    return args.optuna_study_name or f"xmnet_xgboost_{run_name(args)}"


def run_name(args: argparse.Namespace) -> str:
    return get_folder_path(attention=attention_of(args), maskguided=args.maskguided, cls_included=args.cls_included,
                           seg_included=args.seg_included, unet=args.unet)


class XMNetTask(Task):
    """Training step: total = 1[seg] L_seg + 1[cls] CE + 1[maskguided] 0.1 MSE (xmnet.md §7).

    The training CE (and IoU) of the epoch are accumulated on the device so that the selection metric
    of the original (lowest training CE / highest training IoU) can be reported by the metric function.
    """

    def __init__(self, model: XMNetModel, *, cls_included: bool, seg_included: bool, maskguided: bool, fsds: bool,
                 seg_size: int, seg_target_mode: str, freeze_features_bn: bool, dataparallel: bool = False):
        super().__init__(model)
        self.cls_included, self.seg_included, self.maskguided = cls_included, seg_included, maskguided
        self.fsds, self.seg_size, self.seg_target_mode = fsds, seg_size, seg_target_mode
        self.freeze_features_bn = freeze_features_bn
        self._dp = None
        if dataparallel:
            # held outside the module tree so checkpoint keys keep no 'module.' prefix
            object.__setattr__(self, "_dp", nn.DataParallel(model))
        self.reset_epoch_sums()

    def reset_epoch_sums(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {"ce": 0.0, "iou": 0.0, "n": 0.0}

    def train(self, mode: bool = True) -> XMNetTask:
        super().train(mode)
        if mode and self.freeze_features_bn:
            self.model.eval_frozen_features()
        return self

    def _net(self, x: torch.Tensor) -> dict:
        return self._dp(x) if self._dp is not None else self.model(x)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        img, label, mask = batch
        out = self._net(img)
        logits = out["out"]
        ce = F.cross_entropy(logits.float(), label)
        loss = logits.new_zeros((), dtype=torch.float32)
        result: dict[str, torch.Tensor] = {"ce": ce.detach()}
        n = img.shape[0]
        if self.cls_included:
            loss = loss + ce
            result["acc1"] = (logits.argmax(1) == label).float().mean()
        if self.maskguided:
            mse = mask_guided_mse(out["att"], mask, self.seg_size)
            loss = loss + MASK_GUIDANCE_WEIGHT * mse
            result["mse"] = mse.detach()
        if self.seg_included:
            target = seg_target(mask, self.seg_target_mode)
            seg = [s.float() for s in out["seg"]]
            sl = segmentation_loss(seg, target, fsds=self.fsds)
            loss = loss + sl
            iou, _ = iou_dice(seg[0].detach(), target)
            result["seg_loss"] = sl.detach()
            result["iou"] = iou.mean().float()
            self._sums["iou"] = self._sums["iou"] + iou.sum()
        self._sums["ce"] = self._sums["ce"] + ce.detach().double() * n
        self._sums["n"] = self._sums["n"] + n
        result["loss"] = loss
        return result

    def epoch_train_means(self, ctx: DistContext) -> dict[str, float]:
        t = torch.tensor([float(self._sums["ce"]), float(self._sums["iou"]), float(self._sums["n"])],
                         dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
        if ctx.distributed:
            torch.distributed.all_reduce(t)
        n = max(t[2].item(), 1.0)
        return {"ce": t[0].item() / n, "iou": t[1].item() / n}

    def predict(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        img, label, mask = batch
        out = model(img)
        pred = {"logits": out["out"].float(), "target": label}
        if self.seg_included:
            iou, dice = iou_dice(out["seg"][0], seg_target(mask, self.seg_target_mode))
            pred["iou"], pred["dice"] = iou.float(), dice.float()
        return pred


class EpochHooks:
    """Callback: sets the datasets' augmentation epoch and resets the task's per-epoch sums."""

    def __init__(self, task: XMNetTask, datasets: list[LeafVeinDataset]):
        self.task, self.datasets = task, datasets

    def on_epoch_start(self, state: Any) -> None:
        self.task.reset_epoch_sums()
        for d in self.datasets:
            d.set_epoch(state.epoch)


def make_metric_fn(task: XMNetTask, ctx: DistContext, *, with_train_sel: bool = True):
    def metric_fn(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if task.cls_included or not task.seg_included:
            m["acc1"] = (outputs["logits"].argmax(1) == outputs["target"]).float().mean().item()
        if "iou" in outputs:
            m["iou"], m["dice"] = outputs["iou"].mean().item(), outputs["dice"].mean().item()
        if with_train_sel:
            means = task.epoch_train_means(ctx)
            m["sel_train_ce"] = means["ce"]
            if task.seg_included:
                m["sel_train_iou"] = means["iou"]
        return m

    return metric_fn


# the segmentation branch's keys: absent from a classification checkpoint (``Encoders.*`` only repeat
# ``features.features.*``, the same tensors)
SEG_KEY_PREFIXES = ("Encoders.", "atten_layers.", "offset_layers.", "center.", "decoder_layers.", "seg_head.")


def load_model_path(model: XMNetModel, path: str) -> None:
    """``--model_path``: load a checkpoint's 'net' (the original's) or 'model' entry with the original's
    key names (this project's earlier names are translated); the segmentation branch may be absent (a
    classification checkpoint), every other key must match."""
    ckpt = load_checkpoint(path)
    sd = ckpt.get("net", ckpt.get("model", ckpt))
    if not isinstance(sd, dict):
        raise CheckpointError(f"--model_path {path}: no state dict under 'net' or 'model'")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    sd = upgrade_legacy_keys(sd, model)
    load_state_dict_strict(model, sd, f"--model_path {path} (check --backbone_class, --num_classes, --seg_arch, "
                           "--unet and --att_from)", allow_missing=SEG_KEY_PREFIXES)
    _logger.info("--model_path %s: loaded %d tensors", path, len(sd))


def _features_and_labels(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    img, label, _ = batch
    return {"x": model(img)["features"], "y": label}


def extract_features(model: XMNetModel, dataset: LeafVeinDataset, *, batch_size: int, ctx: DistContext,
                     num_workers: int = 0) -> FeatureSet:
    """Pooled attention-modulated features (width from the backbone) and labels of a dataset, the model
    in eval mode as the original's (its last test epoch left it there); this process only (rank 0)."""
    loader = build_loader(dataset, batch_size, train=False, ctx=DistContext(device=ctx.device), num_workers=num_workers)
    out = collect_outputs(model, loader, predict_fn=_features_and_labels, ctx=DistContext(device=ctx.device))
    return FeatureSet(out["x"].numpy(), out["y"].numpy().astype(np.int64))


def main(args: argparse.Namespace) -> dict[str, Any]:
    ctx = init_distributed(args.device)
    # Python's random state is saved in every checkpoint too: seeded, two runs with one seed write identical
    # checkpoints
    seed_everything(args.seed)
    name = run_name(args)
    out_dir = Path(args.output_dir or Path("output") / args.backbone_class / name)
    run = RunDir(out_dir, args, ctx)
    lr, batch_size = resolved_lr(args), resolved_batch_size(args)
    _logger.info("run %s: lr %g, batch %d, output %s", name, lr, batch_size, out_dir)
    root = Path(args.data_dir) / args.dataset
    if not root.is_dir():
        raise FileNotFoundError(f"--data_dir {args.data_dir}: dataset folder not found: {root} (expected labels.pkl, "
                                "train/, test/, l2_mask/ inside)")
    run_xgb = (args.xgb_stage if args.xgb_stage is not None else args.cls_included) and args.n_trials > 0
    study_fp = study_fingerprint(args, root) if run_xgb else None
    if study_fp is not None:  # before any training: an old study is only reused when made the same way
        check_study(args.optuna_storage, out_dir, study_name_of(args), study_fp,
                    overwrite=args.overwrite and ctx.is_primary)
        ctx.barrier()

    # ---- data: train (optionally a --transfer_to fraction; a carved validation part), test
    full_train = LeafVeinDataset(root, "train", train=True, crop=args.crop_size, seed=args.seed)
    test_set = LeafVeinDataset(root, "test", train=False, crop=args.crop_size)
    labels = full_train.labels + test_set.labels
    if max(labels) >= args.num_classes:
        raise ValueError(f"{root / 'labels.pkl'}: label {max(labels) + 1} (1-based) exceeds --num_classes "
                         f"{args.num_classes}")
    train_idx = list(range(len(full_train)))
    if args.transfer_to is not None:
        train_idx = subset_fraction(len(train_idx), args.transfer_to, args.seed)
        _logger.info("--transfer_to %g: training on %d of %d images", args.transfer_to, len(train_idx), len(full_train))
    val_set = None
    if args.select_on == "val":
        keep, carved = split_indices([full_train.labels[i] for i in train_idx], args.val_fraction, args.seed)
        if not carved:
            raise ValueError(f"--select_on val: --val_fraction {args.val_fraction} leaves no validation image")
        val_set = LeafVeinDataset(root, "train", train=False, crop=args.crop_size,
                                  indices=[train_idx[i] for i in carved])
        train_idx = [train_idx[i] for i in keep]
    train_set = full_train if len(train_idx) == len(full_train) else LeafVeinDataset(
        root, "train", train=True, crop=args.crop_size, indices=train_idx, seed=args.seed)
    loader_train = build_loader(train_set, batch_size, train=True, ctx=ctx, num_workers=args.num_workers,
                                seed=args.seed, drop_last=len(train_set) >= batch_size * ctx.world_size * 2)
    eval_set = val_set if val_set is not None else test_set
    loader_eval = build_loader(eval_set, batch_size, train=False, ctx=ctx, num_workers=args.num_workers)
    # split_manifest.json + the split check now; predictions_val.csv (fit, with --select_on val) and
    # predictions.csv (the test step below)
    def ids(dataset: LeafVeinDataset) -> list[str]:
        return [relative_id(r.path, root) for r in dataset.records]

    def writer(dataset: LeafVeinDataset) -> PredictionWriter:
        return PredictionWriter(ids(dataset), score_key="logits", activation="softmax", extra_keys=("iou", "dice"))

    splits = {"train": {"ids": ids(train_set if len(train_idx) == len(full_train) else
                                   LeafVeinDataset(root, "train", train=False, crop=args.crop_size,
                                                   indices=train_idx))}}
    if val_set is not None:
        splits["val"] = {"ids": ids(val_set)}
    splits["test"] = {"ids": ids(test_set)}
    recorder = start_recording(out_dir, splits, writer=writer(eval_set), name=VAL_PREDICTIONS_FILE,
                               protocol="official train / test" + (" + val carved from train" if val_set else ""),
                               dataset=args.dataset, is_primary=ctx.is_primary)

    # ---- model
    model = XMNetModel(args.backbone_class, args.num_classes, attention=attention_of(args),
                       segmentation=args.seg_included, unet=args.unet, att_from=args.att_from, fsds=args.fsds,
                       seg_arch=args.seg_arch)
    warnings: list[str] = []
    if args.pretrained_weights:
        n = load_pretrained(model.features.features, args.backbone_class, args.pretrained_weights)
        _logger.info("--pretrained_weights %s: %d tensors loaded", args.pretrained_weights, n)
    elif not args.model_path:
        warnings.append(random_init_warning("--pretrained_weights", args.backbone_class,
                                            "torchvision ImageNet weights"))
    if args.model_path:
        load_model_path(model, args.model_path)
    frozen = model.apply_freezing(freeze_all=args.freeze_all)
    _logger.info("frozen children of features: %s%s", ", ".join(frozen) or "none",
                 " + attention and classifier" if args.freeze_all else "")
    dp = args.dataparallel and ctx.device.type == "cuda" and torch.cuda.device_count() > 1 and not ctx.distributed
    if args.dataparallel and not dp:
        _logger.info("--dataparallel: fewer than 2 visible GPUs (or torchrun): no DataParallel wrapping")
    task = XMNetTask(model.to(ctx.device), cls_included=args.cls_included, seg_included=args.seg_included,
                     maskguided=args.maskguided, fsds=args.fsds, seg_size=args.seg_size,
                     seg_target_mode=args.seg_target, freeze_features_bn=args.freeze_all and not args.cls_included,
                     dataparallel=dp)
    params = [p for p in task.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = EpochCosineSchedule(lr, args.max_epoch, updates_per_epoch(loader_train))

    if args.select_on == "val":
        monitor, mode = ("acc1", "max") if args.cls_included else ("iou", "max")
    else:
        monitor, mode = ("sel_train_ce", "min") if args.cls_included else ("sel_train_iou", "max")
    config = FitConfig(epochs=args.max_epoch, output_dir=out_dir, amp=args.amp, monitor=monitor, monitor_mode=mode,
                       resume=args.resume or None, csv_name="log.csv", dataset=args.dataset,
                       compile=getattr(args, "compile", False), channels_last=getattr(args, "channels_last", None),
                       warnings=warnings, recorder=recorder if val_set is not None else None,
                       preprocessing=preprocessing_from_args(args))
    summary = fit(task, optimizer, loader_train, config=config, ctx=ctx, run=run, schedule=schedule,
                  data_loader_val=loader_eval, metric_fn=make_metric_fn(task, ctx),
                  callbacks=[EpochHooks(task, [full_train, train_set])], args=args)

    # ---- the selected checkpoint on the test split
    best_ckpt = out_dir / "checkpoint_best.pth"
    if best_ckpt.is_file():
        model.load_state_dict(load_checkpoint(best_ckpt)["model"], strict=True)
    loader_test = build_loader(test_set, batch_size, train=False, ctx=ctx, num_workers=args.num_workers)
    outputs = collect_outputs(model, loader_test, predict_fn=task.predict, ctx=ctx)
    test = make_metric_fn(task, ctx, with_train_sel=False)(outputs)
    test_order = loader_order(loader_test, ctx)
    if ctx.is_primary:
        recorder.save(out_dir, outputs, test_order, epoch=summary.get("best_epoch"), name=PREDICTIONS_FILE,
                      writer=writer(test_set))
    summary = {**summary, **recorder.metrics_entries()}
    _logger.info("test (selected checkpoint, epoch %s): %s", summary.get("best_epoch"),
                 " ".join(f"{k}={v:.4f}" for k, v in test.items()))

    # the last collective: the other ranks are done and return here, so rank 0's XGBoost study (hours for
    # 150 trials) and result files are not bounded by the process-group timeout of a waiting barrier
    ctx.barrier()
    if not ctx.is_primary:
        return summary

    xgb_summary = None
    if run_xgb:
        xgb_summary = xgboost_stage(args, model, train_set, test_set, root, ctx, out_dir, name, study_fp)
    if args.seg_included and args.save_masks != 0:
        save_predicted_masks(model, test_set, out_dir / "predicted_masks", args.save_masks, ctx)
    summary = finish_outputs(args, run, summary, test, xgb_summary, model, name, out_dir)
    if args.plots:  # after metrics.json and best_model.pth, which the pictures are drawn from
        from common.plots import plot_run_at_end

        plot_run_at_end(out_dir, "xmnet")  # a failure is one warning line, never a failed run
    return summary


def xgboost_stage(args: argparse.Namespace, model: XMNetModel, train_set: LeafVeinDataset,
                  test_set: LeafVeinDataset, root: Path, ctx: DistContext, out_dir: Path, name: str,
                  fingerprint: Fingerprint | None = None) -> dict:
    """The XGBoost + Optuna stage on the pooled features. Default (the original, xmnet.md §7.2): fit on all
    training features, re-extracted through the augmenting loader in every trial, early stopping on the
    test features, objective = training log-loss. ``--xgb_eval_on val`` carves a validation part of the
    training features for early stopping and the objective (fit on the rest); ``--no-xgb_reextract_train``
    extracts the training features once, without augmentation."""
    kw = {"batch_size": args.xgb_batch_size, "ctx": ctx, "num_workers": args.num_workers}
    test_feats = extract_features(model, test_set, **kw)
    labels = np.asarray(train_set.labels, dtype=np.int64)
    if args.xgb_eval_on == "val":
        keep, carved = split_indices(labels.tolist(), args.xgb_val_fraction, args.seed)
        if not carved:
            raise ValueError(f"--xgb_val_fraction {args.xgb_val_fraction}: no validation features (too few images)")
    else:  # the original: every training feature is fitted
        keep, carved = list(range(len(labels))), []
    num_class = int(max(labels.max(), test_feats.y.max())) + 1
    val_feats = None
    train_source: Any
    if carved or not args.xgb_reextract_train:
        # the non-augmented view of the network's training images
        train_feats = extract_features(model, train_set.with_augmentation(False), **kw)
        val_feats = FeatureSet(train_feats.x[carved], train_feats.y[carved]) if carved else None
        train_source = FeatureSet(train_feats.x[keep], train_feats.y[keep])
    if args.xgb_reextract_train:
        def train_source(draw: int) -> FeatureSet:  # the original: augmented training features in every trial
            # the augmentation epoch follows the study's progress, not this process: a resumed study
            # draws what an uninterrupted one would
            train_set.set_epoch(10_000 + draw)
            f = extract_features(model, train_set, **kw)
            return FeatureSet(f.x[keep], f.y[keep])
    return run_study(train_source, test_feats, num_class=num_class, output_dir=out_dir, eval_on=args.xgb_eval_on,
                     val=val_feats, n_trials=args.n_trials, n_estimators=args.xgb_n_estimators,
                     storage=args.optuna_storage, study_name=study_name_of(args),
                     n_jobs=args.optuna_n_jobs, seed=args.seed, nthread=args.xgb_nthread, fingerprint=fingerprint)


@torch.inference_mode()
def save_predicted_masks(model: XMNetModel, dataset: LeafVeinDataset, folder: Path, limit: int,
                         ctx: DistContext) -> int:
    """PNG overlays of the predicted test masks, named like the test images."""
    model.eval()
    n = len(dataset) if limit < 0 else min(limit, len(dataset))
    for i in range(n):
        img, _, _ = dataset[i]
        logits = model(img[None].to(ctx.device))["seg"][0][0]
        save_overlay(img, logits, folder / (Path(dataset.records[i].path).stem + ".png"))
    return n


def finish_outputs(args: argparse.Namespace, run: RunDir, summary: dict, test: dict, xgb: dict | None,
                   model: XMNetModel, name: str, out_dir: Path) -> dict:
    """The original's files (checkpoint/<name>_<ts>.pth, results/<backbone>/<name>/<ts>/model_accuracies.txt,
    results/<backbone>/all_results_file.txt) and metrics.json (``best`` = the selected checkpoint on test)."""
    stamp = timestamp_name(datetime.now())
    ckpt_name = f"{name}-Segmentation-{stamp}.pth" if args.seg_included and not args.cls_included else f"{name}_{stamp}.pth"
    ckpt_path = out_dir / "checkpoint" / ckpt_name
    # "net" and the scores as the original; "args" / "preprocessing" for predict.py (other readers ignore them)
    save_checkpoint(ckpt_path, {"net": model.state_dict(), "test_iou": test.get("iou"), "Test_acc": test.get("acc1"),
                                "epoch": summary.get("best_epoch"), "args": args_to_dict(args),
                                "preprocessing": preprocessing_from_args(args)})
    shutil.copyfile(ckpt_path, out_dir / "best_model.pth")
    best_eval = dict(summary.get("best") or {})
    best = {**test}
    if xgb is not None:
        best["xgb_best_accuracy"] = xgb["best_accuracy"]
        best["xgb_overall_best"] = xgb["overall_best"]
    summary = {**summary, "best": best, "best_eval": best_eval,
               "eval_split": "val (carved from train)" if args.select_on == "val" else "test",
               "selected_on": args.select_on, "checkpoint": str(ckpt_path)}
    if xgb is not None:
        summary["xgboost"] = {k: xgb[k] for k in ("eval_on", "n_trials", "best_trial", "best_accuracy", "overall_best",
                                                  "refit_test_accuracy", "booster", "storage", "note")}
    run.write_json("metrics.json", summary)
    final = {"Best_test_acc_BOT": _pct(test.get("acc1")), "Test_IoU": _pct(test.get("iou")),
             "Test_Dice": _pct(test.get("dice")), "selected_epoch": summary.get("best_epoch")}
    if xgb is not None:
        final.update({"XGBoost best_accuracy": _pct(xgb["best_accuracy"]), "XGBoost overall_best": _pct(xgb["overall_best"])})
    final = {k: v for k, v in final.items() if v is not None}
    results = out_dir / "results" / args.backbone_class
    write_model_accuracies(results / name / stamp / "model_accuracies.txt", vars(args), summary_history(run), final)
    append_all_results(results / "all_results_file.txt",
                       f"{stamp} {name} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in final.items()))
    return summary


def _pct(v: Any) -> float | None:
    return None if v is None else 100.0 * float(v)


def summary_history(run: RunDir) -> list[dict[str, Any]]:
    rows = run.csv("log.csv").read_rows()
    out = []
    for r in rows:
        out.append({k: (float(v) if v not in ("", None) and k != "epoch" else int(v) if k == "epoch" else None)
                    for k, v in r.items()})
    return out
