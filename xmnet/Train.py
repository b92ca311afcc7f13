"""XMNet training entry point (original: rmf3mc/xmnet ``Train.py``; xmnet.md §2, §7).

One script for both generations of the original: the flags of HEAD 3563a4e (``--cls_included``,
``--seg_included``, ``--xmnet``, ...) and of the ad0afa8d "MMANet" version (``--cls_ild``, ``--seg_ild``,
``--manet``, ``--fsds``, ``--att_from``, ``--local_train``) are all accepted, so both README commands run
as written. Unknown flags are an error (the original's ``parse_known_args`` silently dropped them).

This file holds only the flags (``get_args_parser``, ``parse_args``, ``check_args``); ``main(args)``
delegates to ``xmnet.engine_xmnet.main``, which holds the pipeline: training through
``common.engine.fit``, checkpoint selection, test evaluation, the XGBoost + Optuna stage, the
original's result files, predicted-mask overlays and ``metrics.json``.

Run as ``python xmnet/Train.py ...`` from anywhere, or ``python Train.py ...`` inside ``xmnet/``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import add_amp_flag, add_channels_last_flag, add_compile_flag, run_main, str2bool
from xmnet import engine_xmnet
from xmnet.backboneModels import BACKBONES, SEG_ARCHS
from xmnet.engine_xmnet import attention_of
from xmnet.leafvein2 import DATASETS

_logger = logging.getLogger(__name__)

UNKNOWN_FLAG_NOTE = ("the original Train.py parsed its flags with parse_known_args and silently ignored unknown ones "
                     "(which is how the README's segmentation flags --seg_ild/--att_from/--transfer_to were dropped "
                     "at HEAD); here they are an error")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("XMNet: attention backbone + XGBoost, U-Net / UNet3+ vein segmentation",
                                add_help=False, allow_abbrev=False)
    g = p.add_argument_group("original flags (HEAD 3563a4e and ad0afa8d)")
    g.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: 0.05; 0.02 with --model_path unless --unet, as ad0afa8d)")
    g.add_argument("--max_epoch", type=int, default=150, help="epochs, also the cosine T_max (default: 150)")
    g.add_argument("--backbone_class", choices=BACKBONES, default="densenet161", help="backbone (default: densenet161)")
    g.add_argument("--dataset", choices=DATASETS, default="soybean_2_1", help="dataset folder (default: soybean_2_1)")
    g.add_argument("--data_dir", default="./data",
                   help="data root holding <dataset>/ (default: ./data, as ad0afa8d; HEAD had an absolute path)")
    g.add_argument("--seg_size", type=int, default=448,
                   help="segmentation size; masks are resized to seg_size/2 for mask guidance (default: 448)")
    g.add_argument("--num_classes", type=int, default=200,
                   help="classifier outputs; set it for btf / hainan_leaf (default: 200)")
    g.add_argument("--dataparallel", action="store_true",
                   help="DataParallel over all visible GPUs; a no-op with a note when fewer than 2 (default: off)")
    g.add_argument("--cls_included", "--cls_ild", dest="cls_included", action="store_true",
                   help="add the classification (CE) loss (default: off)")
    g.add_argument("--seg_included", "--seg_ild", dest="seg_included", action="store_true",
                   help="add the segmentation (BCE) loss and the decoder (default: off)")
    g.add_argument("--freeze_all", action="store_true",
                   help="freeze the whole classification network: features, attention, classifier (default: off)")
    g.add_argument("--xmnet", action="store_true", help="XMNet attention: learned 1x1 conv over [mean, max] (default: off)")
    g.add_argument("--mmanet", "--manet", dest="mmanet", action="store_true",
                   help="MMANet attention: sigmoid of the channel mean (--manet: HEAD's name for it) (default: off)")
    g.add_argument("--maskguided", action="store_true", help="add 0.1 * MSE(attention, mask) (default: off)")
    g.add_argument("--unet", action="store_true", help="U-Net decoder; otherwise UNet3+ (default: off)")
    g.add_argument("--fsds", action="store_true",
                   help="full-scale deep supervision: 0.95 L1 + 0.1/4 L2 + 0.1/8 L3 + 0.1/16 L4 + 0.1/32 L5 (default: off)")
    g.add_argument("--att_from", type=int, default=3,
                   help="first encoder level (1-5) whose skip is augmented (--seg_arch); 6 = none (default: 3)")
    add_amp_flag(g, default="none", bare="fp16",
                 help="autocast; bare --amp = fp16 + GradScaler as the original (bf16 on CPU)")
    add_compile_flag(g)
    add_channels_last_flag(g)
    g.add_argument("--model_path", default=None,
                   help="checkpoint to start from (its 'net' or 'model' entry); sets batch 8 (default: none)")
    g.add_argument("--local_train", type=int, default=0,
                   help="accepted for compatibility: selected hard-coded output roots in ad0afa8d; outputs go "
                        "under --output_dir here (default: 0)")
    g.add_argument("--transfer_to", type=float, default=None,
                   help="not a flag of either original version: fraction in (0, 1] of the training images used "
                        "(a seeded subset), e.g. 0.250 for a transfer step on a quarter of the data (default: all)")

    g = p.add_argument_group("run options (not in the original)")
    g.add_argument("--batch_size", type=int, default=None, help="batch size (default: 8 with --model_path, else 32)")
    g.add_argument("--device", default="cuda", help="device; cuda without a GPU falls back to CPU with a warning (default: cuda)")
    g.add_argument("--seed", type=int, default=1, help="seed (default: 1, as the original)")
    g.add_argument("--resume", default="", help="checkpoint file, run folder or 'auto' to resume training (default: '')")
    g.add_argument("--output_dir", default=None,
                   help="output folder (default: ./output/<backbone>/<name>); results/ and checkpoint/ as the "
                        "original are created inside it")
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader workers (default: 4)")
    g.add_argument("--crop_size", type=int, default=448, help="pad-and-crop side (default: 448, the original's)")
    g.add_argument("--pretrained_weights", default=None,
                   help="local torchvision ImageNet state dict of --backbone_class (never downloaded); without it "
                        "the backbone starts from random weights with a warning (default: none)")
    g.add_argument("--select_on", choices=("train_ce", "val"), default="train_ce",
                   help="checkpoint selection: lowest training CE (segmentation-only: highest training IoU), as the "
                        "original, or best accuracy/IoU on a validation part carved from train (default: train_ce)")
    g.add_argument("--val_fraction", type=float, default=0.1,
                   help="part of train used as validation with --select_on val (default: 0.1)")
    g.add_argument("--seg_target", choices=("raw", "binary"), default="raw",
                   help="BCE target: the raw mask pixel values as the original (raw), or mask > 0 (binary), valid "
                        "for 0/1 and 0/255 PNGs alike (default: raw)")
    g.add_argument("--seg_arch", choices=SEG_ARCHS, default="head",
                   help="segmentation branch: head = HEAD 3563a4e (skips 0.5 x + 0.5 A x from --att_from, A from a "
                        "1x1 conv per level; decoders as wide as the encoder; side outputs = channel means); "
                        "ad0afa8d = the MMANet version (skips [x, sigmoid([mean, max]), deformable conv]); compact = "
                        "this project's earlier variant (ad0afa8d skips, fixed widths 16-256, 3x3 side heads) "
                        "(default: head)")
    g.add_argument("--save_masks", type=int, default=-1,
                   help="test images whose predicted mask is saved as a PNG overlay; -1 = all (default: -1)")
    g.add_argument("--plots", default=True, type=str2bool,
                   help="draw the run's pictures at the end: curves, attention / vein-mask overlays of a few test "
                        "leaves (python -m common.plots OUTPUT_DIR redraws them) (default: true)")

    g = p.add_argument_group("XGBoost + Optuna stage")
    g.add_argument("--xgb_stage", action=argparse.BooleanOptionalAction, default=None,
                   help="run the XGBoost stage after training (default: on when --cls_included)")
    g.add_argument("--n_trials", type=int, default=150, help="Optuna trials in total (default: 150)")
    g.add_argument("--xgb_eval_on", choices=("test", "val"), default="test",
                   help="test = the original: XGBoost fits on all training features, the test features drive early "
                        "stopping, the objective is the training log-loss (optimistic); val = early stopping and "
                        "objective on a --xgb_val_fraction part of the training features, fit on the rest "
                        "(default: test)")
    g.add_argument("--xgb_val_fraction", type=float, default=0.2,
                   help="part of the training features used for early stopping with --xgb_eval_on val (default: 0.2)")
    g.add_argument("--xgb_n_estimators", type=int, default=100, help="boosting rounds before early stopping (default: 100)")
    g.add_argument("--xgb_reextract_train", action=argparse.BooleanOptionalAction, default=True,
                   help="re-extract the training features through the augmenting loader (flip + random crop) in "
                        "every trial, as the original; --no-xgb_reextract_train: once, without augmentation "
                        "(default: on)")
    g.add_argument("--xgb_batch_size", type=int, default=16, help="feature-extraction batch (default: 16, the original's)")
    g.add_argument("--optuna_storage", default=None,
                   help="Optuna RDB URL shared by several processes/machines (default: sqlite in --output_dir)")
    g.add_argument("--optuna_study_name", default=None, help="study name (default: xmnet_xgboost_<name>)")
    g.add_argument("--optuna_n_jobs", type=int, default=1, help="parallel trials in this process (default: 1)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an old Optuna study of this run (and its summary and booster) and search again; "
                        "without it, a study whose finished trials were made with other flags or inputs stops the "
                        "run before any training (default: off)")
    g.add_argument("--xgb_nthread", type=int, default=None, help="XGBoost threads (default: XGBoost's)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; unknown flags are an error that explains the original."""
    # no prefix matching: an abbreviated or mistyped flag is an unknown flag, not a silent match
    parser = argparse.ArgumentParser(parents=[get_args_parser()], allow_abbrev=False)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} ({UNKNOWN_FLAG_NOTE})")
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.xmnet and args.mmanet:
        parser.error("--xmnet and --mmanet/--manet are exclusive (one attention type)")
    if not (args.cls_included or args.seg_included):
        parser.error("nothing to train: give --cls_included/--cls_ild and/or --seg_included/--seg_ild")
    if args.maskguided and attention_of(args) == "none":
        parser.error("--maskguided needs an attention map: add --xmnet or --mmanet")
    if args.freeze_all and not args.seg_included:
        parser.error("--freeze_all without --seg_included leaves nothing to train")
    if not 1 <= args.att_from <= 6:
        parser.error(f"--att_from must be 1..6 (6 = no augmentation), got {args.att_from}")
    if args.transfer_to is not None and not (0.0 < args.transfer_to <= 1.0) or (
            args.transfer_to is not None and math.isnan(args.transfer_to)):
        parser.error(f"--transfer_to must be a fraction in (0, 1] of the training images, got {args.transfer_to}")
    for name in ("max_epoch", "num_classes", "seg_size", "crop_size", "xgb_n_estimators", "xgb_batch_size",
                 "optuna_n_jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.n_trials < 0:
        parser.error(f"--n_trials must be >= 0, got {args.n_trials}")
    for name in ("val_fraction", "xgb_val_fraction"):
        if not 0.0 < getattr(args, name) < 1.0:
            parser.error(f"--{name} must be in (0, 1), got {getattr(args, name)}")
    if args.local_train:
        _logger.warning("--local_train %d is accepted for compatibility but has no effect: outputs go under "
                        "--output_dir", args.local_train)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline (``xmnet.engine_xmnet.main``) on parsed, checked flags; returns the metrics summary."""
    return engine_xmnet.main(args)


if __name__ == "__main__":
    run_main(main, parse_args())
