"""Stage 1: MIMIC-CXR 14-class pre-training with the MLP head (README "Stage 1").

The original stage-1 script is not published (quirk 6). This script follows the README (head-only
warm-up at lr 1e-3 for 3 epochs, full fine-tune with backbone lr 1e-5 / head lr 1e-4, AsymmetricLoss +
LogitAdjustment, EMA 0.9999) and, for everything the README leaves open, the published older
``train_standard_head.py`` (official ASL 4/0/0.05 with sum reduction and logits clamped to +-80, logit
adjustment tau 1 in training only, AdamW eps 1e-5, fine-tune weight decay 0.05, cosine factor with floor
0.01 and no lr warm-up, 60 fine-tune epochs, its lighter augmentation). Its best checkpoint
``best_convnext_model.pth`` is what ``train_stage2.py --pretrained_checkpoint`` expects.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common.cli import run_main
from common.dist import init_distributed
from common.engine import build_loader
from common.predictions import PredictionWriter, start_recording
from common.run import RunDir
from cxrlt.cli import (
    add_asl_args,
    add_backbone_args,
    add_loader_args,
    add_phase_args,
    add_run_args,
    asl_kwargs_from_args,
    pretrained_backbone,
)
from cxrlt.data import (
    UNCERTAIN_POLICIES,
    CXRDataset,
    EvalTransform,
    Stage1TrainTransform,
    read_mimic,
)
from cxrlt.losses import AsymmetricLoss, ClampedAsymmetricLoss, log_prior
from cxrlt.model import MIMIC_CLASSES, StandardCXR
from cxrlt.task import CXRTask, PhaseSettings, two_phase_fit

_logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CXR-LT 2026 stage 1 (MIMIC-CXR, MLP head)", add_help=False)
    g = parser.add_argument_group("data (MIMIC-CXR-JPG layout)")
    g.add_argument("--data_dir", required=True, help="MIMIC-CXR-JPG root holding files/ and the CSVs; required")
    g.add_argument("--labels_csv", default=None, help="CheXpert label CSV (default: DATA_DIR/mimic-cxr-2.0.0-chexpert.csv)")
    g.add_argument("--split_csv", default=None, help="split CSV (default: DATA_DIR/mimic-cxr-2.0.0-split.csv)")
    g.add_argument("--train_splits", nargs="+", default=["train"], help="splits to train on (default: train)")
    g.add_argument("--val_splits", nargs="+", default=["validate"], help="splits to validate on (default: validate)")
    g.add_argument("--uncertain_policy", choices=UNCERTAIN_POLICIES, default="zeros",
                   help="-1 labels: zeros (U-Zeros), ones (U-Ones) or ignore (masked from the loss); blanks are 0 "
                        "(default: zeros)")
    add_loader_args(g)
    g.add_argument("--random_seed", type=int, default=42, help="seed of torch (seed + rank) and shuffling (default: 42)")

    g = parser.add_argument_group("model")
    add_backbone_args(g, pretrained_help="timm ImageNet-22k weights (fcmae_ft_in22k_in1k) for the backbone")
    g.add_argument("--dropout", type=float, default=0.3, help="dropout of the MLP head (default: 0.3)")

    g = parser.add_argument_group("schedule")
    g.add_argument("--warmup_head_epochs", type=int, default=3, help="head-only epochs (default: 3)")
    add_phase_args(g)
    g.add_argument("--backbone_lr", type=float, default=1e-5, help="fine-tune backbone lr (default: 1e-5)")
    g.add_argument("--head_lr", type=float, default=1e-4, help="fine-tune head lr (default: 1e-4)")
    g.add_argument("--weight_decay", type=float, default=0.05, help="fine-tune weight decay, both groups (default: 0.05)")

    g = parser.add_argument_group("loss")
    g.add_argument("--loss", choices=("asl_official", "asl"), default="asl_official",
                   help="asl_official = Alibaba-MIIL ASL (sum); asl = the repo's losses.py variant (default: asl_official)")
    add_asl_args(g)
    g.add_argument("--la_tau", type=float, default=1.0, help="logit-adjustment tau, 0 disables (default: 1.0)")
    g.add_argument("--la_sign", choices=("original", "menon"), default="original",
                   help="training logits z - tau*log(prior) as the original code, or z + tau*log(prior) as "
                        "Menon et al.'s logit-adjusted loss (default: original)")

    g = parser.add_argument_group("run")
    add_run_args(g, output_dir="./outputs/checkpoints")
    return parser


def main(args: argparse.Namespace) -> dict:
    ctx = init_distributed(args.device)
    run = RunDir(args.output_dir, args, ctx)
    torch.manual_seed(args.random_seed + ctx.rank)
    root = Path(args.data_dir)
    labels_csv = args.labels_csv or root / "mimic-cxr-2.0.0-chexpert.csv"
    split_csv = args.split_csv or root / "mimic-cxr-2.0.0-split.csv"
    kw = dict(class_names=MIMIC_CLASSES, uncertain_policy=args.uncertain_policy)
    train = read_mimic(labels_csv, split_csv, root, splits=args.train_splits, **kw)
    val = read_mimic(labels_csv, split_csv, root, splits=args.val_splits, **kw)
    _logger.info("MIMIC-CXR: %d train / %d val images", len(train.paths), len(val.paths))

    weights, warnings = pretrained_backbone(args, original="timm ImageNet weights")
    model = StandardCXR(len(MIMIC_CLASSES), backbone=args.model, pretrained_backbone=weights,
                        drop_path_rate=args.drop_path, dropout=args.dropout).to(ctx.device)
    if ctx.distributed and ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    asl_kwargs = asl_kwargs_from_args(args, args.loss)
    loss = AsymmetricLoss(**asl_kwargs) if args.loss == "asl_official" else ClampedAsymmetricLoss(**asl_kwargs)
    task = CXRTask(model, loss, log_prior=log_prior(train.class_counts) if args.la_tau > 0 else None,
                   tau=args.la_tau, la_sign=args.la_sign,
                   mask_negative_targets=args.uncertain_policy == "ignore").to(ctx.device)

    train_ds = CXRDataset(train.paths, train.labels, Stage1TrainTransform(args.image_size), bad_image=args.bad_image,
                          size=args.image_size)
    val_ds = CXRDataset(val.paths, val.labels, EvalTransform(args.image_size), bad_image=args.bad_image,
                        size=args.image_size)
    loader_train = build_loader(train_ds, args.batch_size, train=True, ctx=ctx, num_workers=args.num_workers,
                                seed=args.random_seed, drop_last=True)
    loader_val = build_loader(val_ds, args.val_batch_size, train=False, ctx=ctx, num_workers=args.num_workers)
    settings = PhaseSettings(
        warmup_epochs=args.warmup_head_epochs, warmup_lr=args.warmup_head_lr,
        warmup_weight_decay=args.warmup_weight_decay, finetune_epochs=args.finetune_epochs,
        backbone_lr=args.backbone_lr, head_lr=args.head_lr, backbone_weight_decay=args.weight_decay,
        head_weight_decay=args.weight_decay, sched_warmup_epochs=0, min_lr_factor=args.min_lr_factor,
        ema_decay=args.ema_decay, clip_grad=args.max_grad_norm if args.max_grad_norm > 0 else None, amp=args.amp,
        ckpt_best="best_convnext_model.pth", resume=args.resume, warmup_best_is_bar=False,
        class_names=MIMIC_CLASSES, skip_nonfinite=args.skip_nonfinite, compile=args.compile,
        channels_last=args.channels_last, warnings=warnings,
    )
    recorder = start_recording(
        args.output_dir, {"train": {"ids": train.ids, "study": train.studies, "patient": train.subjects},
                          "val": {"ids": val.ids, "study": val.studies, "patient": val.subjects}},
        writer=PredictionWriter(val.ids, class_names=MIMIC_CLASSES,
                                groups={"study": val.studies, "patient": val.subjects}),
        protocol=f"official {'+'.join(args.train_splits)} / {'+'.join(args.val_splits)}", dataset="mimic-cxr",
        is_primary=ctx.is_primary)
    summary = two_phase_fit(task, loader_train, loader_val, settings=settings, ctx=ctx, run=run,
                            output_dir=args.output_dir, args=args, recorder=recorder)
    if args.plots and ctx.is_primary:
        from common.plots import plot_run_at_end

        plot_run_at_end(args.output_dir, "cxrlt")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    run_main(main, parser.parse_args())
