"""CHARM-Xray training: phase 1 (BCE), phase 2 (asymmetric loss), test ROC-AUC, optionally over the
notebooks' momentum x k x threshold grid (original: luythoangduy/CHARM-Xray ``train.py`` and
``train.ipynb``).

``python train.py`` with no arguments runs the README pipeline with the original constants
(``config.py``) on ``./data`` with the notebooks' split (what produced the published 0.8752).
Every constant is a flag; see README.md for the differences from the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python train.py` from charm_xray/ or `python charm_xray/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charm_xray import config  # noqa: E402
from charm_xray.data import PHASE1_ALL_IMAGES_NOTEBOOK_ERROR, SPLITS  # noqa: E402
from charm_xray.losses import AsymmetricLoss, ChestXrayLoss  # noqa: E402
from charm_xray.models.chest_xray_model import MODEL_NAMES, describe_model_names  # noqa: E402
from common.cli import add_amp_flag, add_channels_last_flag, add_compile_flag, run_main, str2bool  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    mc = config.ModelConfig
    parser = argparse.ArgumentParser("CHARM-Xray training", add_help=False)
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default="data",
                   help="folder with Data_Entry_2017.csv, train_val_list.txt, test_list.txt and images/ or "
                        "images_XXX/images/ (default: data, the README layout)")
    g.add_argument("--split", default="charm_notebook", choices=[s for s in SPLITS if s != "test_checkpoint"],
                   help="charm_notebook: the notebooks' patient 80/20 split (seed) and 12.5%% test subset, which "
                        "produced the published 0.8752; official: train_val_list/test_list (default: charm_notebook)")
    g.add_argument("--valid_pct", default=config.VALID_PCT, type=float,
                   help="validation fraction (RandomSplitter / official patients) (default: 0.125)")
    g.add_argument("--phase1_findings_only", default=True, type=str2bool,
                   help="phase 1 trains on images with at least one finding, as the notebooks (default: true); "
                        "false (phase 1 on every image) needs --split official: the charm_notebook split is the "
                        "notebooks' protocol, whose phase 1 has findings only")
    g.add_argument("--image_size", default=config.IMAGE_SIZE[0], type=int, help="square input side (default: 224)")
    g.add_argument("--num_workers", default=2, type=int, help="loader workers (default: 2)")
    g = parser.add_argument_group("model (config.ModelConfig)")
    g.add_argument("--model_name", default="efficientnet_b0", choices=MODEL_NAMES,
                   help=f"backbone (default: efficientnet_b0, which builds EfficientNetV2-S as the original). "
                        f"{describe_model_names()}")
    g.add_argument("--pretrained_weights", default=None,
                   help="local torchvision ImageNet weights (.pth/.safetensors) for the backbone; never downloaded. "
                        "Without it training starts from random weights")
    g.add_argument("--momentum", default=mc.MOMENTUM, type=float, help="momentum branch m (default: 0.99)")
    g.add_argument("--attention_reduction", default=mc.ATTENTION_REDUCTION, type=int, help="default: 8")
    g.add_argument("--bank_size", default=mc.BANK_SIZE, type=int, help="memory slots (default: 512)")
    g.add_argument("--rarity_threshold", default=mc.RARITY_THRESHOLD, type=float, help="default: 0.2")
    g.add_argument("--retrieval_k", default=mc.RETRIEVAL_K, type=int, help="default: 3")
    g.add_argument("--dropout_rate", default=mc.DROPOUT_RATE, type=float, help="default: 0.3")
    g.add_argument("--hidden_dim", default=mc.HIDDEN_DIM, type=int, help="default: 512")
    g.add_argument("--memory_select", default="near_mean", choices=["near_mean", "rare"],
                   help="which features enter the bank: near_mean = norm within the threshold of the batch mean, "
                        "as the original; rare = the others, as the paper's wording says (default: near_mean)")
    g.add_argument("--memory_wrap", default=False, type=str2bool,
                   help="a write wraps around the end of the bank; the original drops the rows past the end "
                        "(default: false)")
    g.add_argument("--exclusion_tol", default=0.0, type=float,
                   help="retrieval excludes slots with cosine >= 1 - tol; 0 = exactly 1.0, as the original, which "
                        "can retrieve a sample's own feature (default: 0)")
    g = parser.add_argument_group("grid (train.ipynb); any of them switches to grid mode")
    g.add_argument("--momentum_values", nargs="+", type=float, default=None, help="e.g. 0.99")
    g.add_argument("--k_values", nargs="+", type=int, default=None, help="e.g. 2 3 4 5")
    g.add_argument("--threshold_values", nargs="+", type=float, default=None, help="e.g. 0.2")
    g = parser.add_argument_group("training (fastai semantics)")
    g.add_argument("--batch_size_phase1", default=config.BATCH_SIZE["phase1"], type=int, help="default: 64")
    g.add_argument("--batch_size_phase2", default=config.BATCH_SIZE["phase2"], type=int, help="default: 128")
    g.add_argument("--batch_size_test", default=config.BATCH_SIZE["test"], type=int, help="default: 32")
    g.add_argument("--lr", default=None, type=float, help="phase-1 base lr; default: lr_find's valley suggestion")
    g.add_argument("--lr_fallback", default=config.LR_FALLBACK, type=float,
                   help="lr when lr_find gives no suggestion (default: 1e-4)")
    g.add_argument("--lr_find_iters", default=100, type=int, help="lr_find batches (default: 100)")
    g.add_argument("--lr_find_start", default=1e-7, type=float, help="default: 1e-7")
    g.add_argument("--lr_find_end", default=10.0, type=float, help="default: 10")
    g.add_argument("--freeze_epochs", default=config.FASTAI_CONFIG["phase1_epochs"], type=int,
                   help="fine_tune freeze_epochs (default: 3)")
    g.add_argument("--phase1_epochs", default=config.FASTAI_CONFIG["phase2_epochs"], type=int,
                   help="fine_tune epochs (default: 20)")
    g.add_argument("--lr_mult", default=100.0, type=float, help="fine_tune lr_mult (default: 100)")
    g.add_argument("--phase2_epochs", default=config.PHASE2_ONE_CYCLE_EPOCHS, type=int,
                   help="phase-2 fit_one_cycle epochs (default: 5)")
    g.add_argument("--phase2_lr_min", default=config.FASTAI_CONFIG["phase2_lr_range"][0], type=float,
                   help="slice start (default: 2e-5; only used with --discriminative_lr)")
    g.add_argument("--phase2_lr_max", default=config.FASTAI_CONFIG["phase2_lr_range"][1], type=float,
                   help="slice end (default: 8e-5)")
    g.add_argument("--phase2_load_optimizer", default=True, type=str2bool,
                   help="phase 2 starts from phase 1's optimizer state, as fastai's learn.load (default: true)")
    g.add_argument("--weight_decay", default=0.01, type=float, help="decoupled weight decay (default: 0.01)")
    g.add_argument("--patience", default=config.FASTAI_CONFIG["early_stopping_patience"], type=int,
                   help="early stopping on valid loss, per fit; 0 disables (default: 5)")
    g.add_argument("--min_delta", default=config.FASTAI_CONFIG["min_delta"], type=float, help="default: 0.001")
    g.add_argument("--freeze_backbone", default=False, type=str2bool,
                   help="freeze the backbone for the freeze epochs, as the README says; the original freezes "
                        "nothing (one parameter group) (default: false)")
    g.add_argument("--discriminative_lr", default=False, type=str2bool,
                   help="slice(a, b) spreads lrs over body/head, as the README implies; the original uses b for "
                        "all (default: false)")
    g = parser.add_argument_group("losses")
    g.add_argument("--phase1_loss", default="bce", choices=ChestXrayLoss.TYPES, help="default: bce")
    g.add_argument("--phase2_loss", default="asymmetric", choices=ChestXrayLoss.TYPES,
                   help="default: asymmetric (the README's first half says focal)")
    g.add_argument("--asl_variant", default="original", choices=AsymmetricLoss.VARIANTS,
                   help="original: CHARM's losses.py (no clip, mean, focusing weight with gradient); official: "
                        "Ridnik et al. (clip shift, sum, weight without gradient) (default: original)")
    g.add_argument("--gamma_neg", default=4.0, type=float, help="default: 4")
    g.add_argument("--gamma_pos", default=1.0, type=float, help="default: 1")
    g.add_argument("--clip", default=0.05, type=float, help="used by --asl_variant official only (default: 0.05)")
    g.add_argument("--focal_alpha", default=1.0, type=float, help="default: 1")
    g.add_argument("--focal_gamma", default=2.0, type=float, help="default: 2")
    g.add_argument("--focal_ignore_kwargs", default=False, type=str2bool,
                   help="use alpha 1, gamma 2 whatever is given, as the notebooks' FocalLoss (default: false)")
    g = parser.add_argument_group("run")
    g.add_argument("--output_dir", default="working", help="the original's /kaggle/working (default: working)")
    g.add_argument("--exp_name", default="experiment", help="name of a single run (default: experiment)")
    g.add_argument("--overwrite", action="store_true",
                   help="discard the old results of these settings (runs/<exp>/, models, predictions; for a grid "
                        "also table rows made with other flags) and start again; without it, a setting whose "
                        "folder was made with other flags or inputs stops the run before any work (default: off)")
    g.add_argument("--seed", default=config.SEED, type=int, help="default: 85")
    g.add_argument("--device", default=config.DEVICE, help="cuda or cpu (default: cuda when available)")
    add_amp_flag(g, default="auto", help="mixed precision (the original's to_fp16); auto: fp16/bf16 on CUDA, bf16 on "
                                         "CPUs with native bf16, else fp32")
    add_compile_flag(g)
    add_channels_last_flag(g)
    g.add_argument("--keep_stage_checkpoints", default=False, type=str2bool,
                   help="keep each fit's training checkpoints after the setting finished (default: false; "
                        "models/phase1_<exp>.pth and final_<exp>.pth are always kept)")
    g.add_argument("--plots", default=True, type=str2bool,
                   help="draw the run's pictures at the end (curves, per-class AUC, attention overlays; "
                        "python -m common.plots RUN_DIR redraws them) (default: true)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("batch_size_phase1", "batch_size_phase2", "batch_size_test", "bank_size", "image_size",
                 "lr_find_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("freeze_epochs", "phase1_epochs", "phase2_epochs", "patience", "num_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("momentum",):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    for m in args.momentum_values or []:
        if not 0.0 <= m <= 1.0:
            parser.error(f"--momentum_values must be in [0, 1], got {m}")
    for k in [args.retrieval_k, *(args.k_values or [])]:
        if k < 1:
            parser.error(f"retrieval k must be >= 1, got {k}")
    if not 0.0 < args.valid_pct < 1.0:
        parser.error(f"--valid_pct must be in (0, 1), got {args.valid_pct}")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.split == "charm_notebook" and not args.phase1_findings_only:
        parser.error(PHASE1_ALL_IMAGES_NOTEBOOK_ERROR)


def main(args: argparse.Namespace):
    from charm_xray.pipeline import main as pipeline_main

    return pipeline_main(args)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(parents=[get_args_parser()], description=__doc__.split("\n\n")[0])
    _args = _parser.parse_args()
    check_args(_parser, _args)
    run_main(main, _args)
