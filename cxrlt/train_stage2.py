"""Stage 2: PadChest 30-class fine-tune with BatchNorm2d + CSRA head (the original ``train_csra_head.py``).

The original is configured by module constants and has no command line; every constant is a flag here
with the original value as default (paths excepted: data paths are required, outputs go to
``--output_dir``). Launch with ``torchrun --nproc_per_node=4 cxrlt/train_stage2.py --data_dir ...``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common.cli import run_main, str2bool
from common.data.samplers import RepeatFactorSampler
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
from cxrlt.data import CXRDataset, EvalTransform, TrainTransform, read_padchest
from cxrlt.losses import LOSSES, build_loss
from cxrlt.model import HEAD_TYPES, ConvNeXtV2CXR, load_pretrained_and_surgery, load_resume_weights
from cxrlt.task import CXRTask, PhaseSettings, two_phase_fit

_logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CXR-LT 2026 stage 2 (PadChest, CSRA head)", add_help=False)
    g = parser.add_argument_group("data (original constants DATA_DIR, IMAGE_BASE_DIR, LABELS_CSV, CORRUPTED_CSV, REMOVAL_CSV)")
    g.add_argument("--data_dir", required=True, help="PadChest folder (original: /mnt/data/PadChest); required")
    g.add_argument("--image_base_dir", default=None, help="image folder (default: DATA_DIR/images)")
    g.add_argument("--labels_csv", default=None, help="label CSV (default: DATA_DIR/CXRLT_2026_training.csv)")
    g.add_argument("--corrupted_csv", default=None,
                   help="ImageID list to drop, optional file (default: DATA_DIR/corrupted_images.csv)")
    g.add_argument("--removal_csv", default=None, help="ImageID list to drop, optional file (default: DATA_DIR/Removal.csv)")
    g.add_argument("--val_split", type=float, default=0.1, help="patient-grouped validation share (default: 0.1)")
    g.add_argument("--random_seed", type=int, default=42,
                   help="seed of the split, the sampler (seed + epoch) and torch (seed + rank) (default: 42)")
    add_loader_args(g)

    g = parser.add_argument_group("model")
    add_backbone_args(g, pretrained_help="timm ImageNet weights for the backbone before the stage-1 load")
    g.add_argument("--head", choices=HEAD_TYPES, default="csra_dbcas",
                   help="csra_dbcas = the seed's head; csra = official CSRA/MHA (default: csra_dbcas)")
    g.add_argument("--lam", type=float, default=0.1, help="CSRA lambda (default: 0.1)")
    g.add_argument("--num_heads", type=int, default=1, help="official-CSRA heads, with --head csra (default: 1)")
    g.add_argument("--pretrained_checkpoint", default="outputs/checkpoints/best_convnext_model.pth",
                   help="stage-1 checkpoint whose backbone is loaded; 'none' skips it "
                        "(default: outputs/checkpoints/best_convnext_model.pth)")
    g.add_argument("--keep_backbone_head_norm", type=str2bool, default=False,
                   help="also take backbone.head.norm from stage 1 (original drops it: quirk 10) (default: false)")
    g.add_argument("--resume_checkpoint", default=None,
                   help="original RESUME_CHECKPOINT: weights to start from instead of the surgery (default: none)")

    g = parser.add_argument_group("schedule")
    g.add_argument("--warmup_head_epochs", type=int, default=10, help="head-only epochs (default: 10)")
    add_phase_args(g)
    g.add_argument("--warmup_backbone_eval", type=str2bool, default=False,
                   help="frozen backbone in eval mode during warm-up (original keeps drop-path active: quirk 11) (default: false)")
    g.add_argument("--backbone_lr", type=float, default=1.5e-5, help="fine-tune backbone lr (default: 1.5e-5)")
    g.add_argument("--head_lr", type=float, default=1.5e-4, help="fine-tune bn + head lr (default: 1.5e-4)")
    g.add_argument("--backbone_weight_decay", type=float, default=0.01, help="(default: 0.01)")
    g.add_argument("--head_weight_decay", type=float, default=0.05, help="(default: 0.05)")
    g.add_argument("--lr_warmup_epochs", type=int, default=5,
                   help="linear lr warm-up epochs of the fine-tune, then cosine (default: 5)")
    g.add_argument("--warmup_best_is_bar", type=str2bool, default=True,
                   help="phase-2 EMA must beat the warm-up's best mAP before the first best checkpoint (quirk 12) (default: true)")

    g = parser.add_argument_group("sampling and loss")
    g.add_argument("--sampler", choices=("cas", "random"), default="cas",
                   help="cas = repeat-factor sampling of the original; random = plain shuffling (default: cas)")
    g.add_argument("--cas_threshold", type=float, default=0.01, help="repeat-factor threshold T (default: 0.01)")
    g.add_argument("--cas_max_repeat", type=float, default=10.0, help="repeat-factor upper clip (default: 10)")
    g.add_argument("--cas_frequency", choices=("occurrence", "image"), default="occurrence",
                   help="class frequency: share of label occurrences (original, quirk 16) or of images (default: occurrence)")
    g.add_argument("--cas_rounding", choices=("round", "stochastic"), default="round",
                   help="copies per image: round(r) (original, quirk 15) or stochastic (default: round)")
    g.add_argument("--loss", choices=LOSSES, default="db",
                   help="db = the code's distribution-balanced loss; asl = the repo's losses.py ASL (the README's "
                        "claim); asl_official = Alibaba-MIIL ASL (default: db)")
    g.add_argument("--db_beta", type=float, default=0.9999, help="(default: 0.9999)")
    g.add_argument("--rebalance_alpha", type=float, default=0.5, help="(default: 0.5)")
    g.add_argument("--neg_scale", type=float, default=1.0, help="(default: 1.0)")
    g.add_argument("--neg_margin", type=float, default=0.0, help="(default: 0.0)")
    g.add_argument("--margin_scale", type=float, default=1.0, help="(default: 1.0)")
    g.add_argument("--max_margin", type=float, default=0.2, help="(default: 0.2)")
    g.add_argument("--margin_direction", choices=("head", "tail"), default="head",
                   help="which classes get the large margin: head = original (quirk 5) (default: head)")
    add_asl_args(g)

    g = parser.add_argument_group("run")
    add_run_args(g, output_dir="./outputs/checkpoints_padchest_db_cas")
    return parser


def build_model(args: argparse.Namespace, num_classes: int) -> tuple[ConvNeXtV2CXR, bool, list[str]]:
    """The CSRA model initialised as the original; returns (model, skip_warmup, warnings for metrics.json)."""
    from_stage1 = bool(args.pretrained_checkpoint) and args.pretrained_checkpoint.lower() != "none"
    if args.resume_checkpoint or from_stage1:  # the backbone's ImageNet weights are overwritten anyway
        weights, warnings = (args.pretrained_path if args.pretrained else None), []
    else:
        weights, warnings = pretrained_backbone(args, original="timm ImageNet weights")
    model = ConvNeXtV2CXR(num_classes, backbone=args.model, pretrained_backbone=weights,
                          drop_path_rate=args.drop_path, head=args.head, lam=args.lam, num_heads=args.num_heads)
    if args.resume_checkpoint:
        return model, load_resume_weights(model, args.resume_checkpoint), warnings
    if from_stage1:
        path = Path(args.pretrained_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained_checkpoint: file not found: {path} (pass 'none' to start from ImageNet)")
        load_pretrained_and_surgery(model, path, keep_backbone_head_norm=args.keep_backbone_head_norm)
    return model, False, warnings


def main(args: argparse.Namespace) -> dict:
    ctx = init_distributed(args.device)
    run = RunDir(args.output_dir, args, ctx)
    torch.manual_seed(args.random_seed + ctx.rank)
    data_dir = Path(args.data_dir)
    split = read_padchest(
        args.labels_csv or data_dir / "CXRLT_2026_training.csv", args.image_base_dir or data_dir / "images",
        corrupted_csv=args.corrupted_csv or data_dir / "corrupted_images.csv",
        removal_csv=args.removal_csv or data_dir / "Removal.csv", val_split=args.val_split, seed=args.random_seed,
    )
    _logger.info("PadChest: %d train / %d val images, %d classes, %d removed", len(split.train_paths),
                 len(split.val_paths), len(split.class_names), split.removed)
    model, skip_warmup, warnings = build_model(args, len(split.class_names))
    model.to(ctx.device)
    if ctx.distributed and ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss = build_loss(args.loss, split.class_counts,
                      db_kwargs=dict(beta=args.db_beta, rebalance_alpha=args.rebalance_alpha, neg_scale=args.neg_scale,
                                     neg_margin=args.neg_margin, margin_scale=args.margin_scale,
                                     max_margin=args.max_margin, margin_direction=args.margin_direction),
                      asl_kwargs=asl_kwargs_from_args(args, args.loss))
    task = CXRTask(model, loss).to(ctx.device)

    train_ds = CXRDataset(split.train_paths, split.train_labels, TrainTransform(args.image_size),
                          bad_image=args.bad_image, size=args.image_size)
    val_ds = CXRDataset(split.val_paths, split.val_labels, EvalTransform(args.image_size), bad_image=args.bad_image,
                        size=args.image_size)
    sampler = None
    if args.sampler == "cas":
        sampler = RepeatFactorSampler(split.train_labels, threshold=args.cas_threshold, max_repeat=args.cas_max_repeat,
                                      seed=args.random_seed, num_replicas=ctx.world_size, rank=ctx.rank,
                                      frequency=args.cas_frequency, rounding=args.cas_rounding)
    loader_train = build_loader(train_ds, args.batch_size, train=True, ctx=ctx, num_workers=args.num_workers,
                                seed=args.random_seed, sampler=sampler, drop_last=True)
    loader_val = build_loader(val_ds, args.val_batch_size, train=False, ctx=ctx, num_workers=args.num_workers)

    settings = PhaseSettings(
        warmup_epochs=args.warmup_head_epochs, warmup_lr=args.warmup_head_lr,
        warmup_weight_decay=args.warmup_weight_decay, finetune_epochs=args.finetune_epochs,
        backbone_lr=args.backbone_lr, head_lr=args.head_lr, backbone_weight_decay=args.backbone_weight_decay,
        head_weight_decay=args.head_weight_decay, sched_warmup_epochs=args.lr_warmup_epochs,
        min_lr_factor=args.min_lr_factor, ema_decay=args.ema_decay,
        clip_grad=args.max_grad_norm if args.max_grad_norm > 0 else None, amp=args.amp,
        ckpt_best="best_padchest_db_cas.pth", resume=args.resume, warmup_best_is_bar=args.warmup_best_is_bar,
        warmup_backbone_eval=args.warmup_backbone_eval, skip_warmup=skip_warmup, class_names=split.class_names,
        skip_nonfinite=args.skip_nonfinite, compile=args.compile, channels_last=args.channels_last,
        warnings=warnings,
    )
    recorder = start_recording(
        args.output_dir, {"train": {"ids": split.train_ids, "patient": split.train_patients},
                          "val": {"ids": split.val_ids, "patient": split.val_patients}},
        writer=PredictionWriter(split.val_ids, class_names=split.class_names, groups={"patient": split.val_patients}),
        protocol="GroupShuffleSplit by PatientID", dataset="padchest", is_primary=ctx.is_primary)
    summary = two_phase_fit(task, loader_train, loader_val, settings=settings, ctx=ctx, run=run,
                            output_dir=args.output_dir, args=args, recorder=recorder)
    if args.plots and ctx.is_primary:
        from common.plots import plot_run_at_end

        plot_run_at_end(args.output_dir, "cxrlt")
    return summary


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0.0 < args.val_split < 1.0:
        parser.error(f"--val_split must be in (0, 1), got {args.val_split}")
    if args.head != "csra" and args.num_heads != 1:
        parser.error("--num_heads applies only to --head csra")
    if args.resume_checkpoint and args.resume:
        parser.error("--resume_checkpoint (weights only) and --resume (continue a run) exclude each other")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parser.parse_args()
    check_args(parser, args)
    run_main(main, args)
