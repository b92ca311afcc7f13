"""Flags shared by the two stage trainers (same names and defaults in both; the stage scripts add
their own data, head, schedule and loss flags)."""

from __future__ import annotations

import argparse

from common.cli import add_amp_flag, add_channels_last_flag, add_compile_flag, str2bool
from cxrlt.data import BAD_IMAGE_POLICIES

_Group = argparse._ArgumentGroup


def add_loader_args(g: _Group) -> None:
    g.add_argument("--image_size", type=int, default=512, help="square input side (default: 512)")
    g.add_argument("--batch_size", type=int, default=64, help="training batch per process (default: 64)")
    g.add_argument("--val_batch_size", type=int, default=32, help="validation batch per process (default: 32)")
    g.add_argument("--num_workers", type=int, default=4, help="loader workers (default: 4)")
    g.add_argument("--bad_image", choices=BAD_IMAGE_POLICIES, default="error",
                   help="unreadable image: 'error' names the file; 'zeros' = original silent black image (default: error)")


def add_backbone_args(g: _Group, *, pretrained_help: str) -> None:
    g.add_argument("--model", default="convnextv2_base", help="timm backbone (default: convnextv2_base)")
    g.add_argument("--pretrained", type=str2bool, default=True,
                   help=f"{pretrained_help}, read from --pretrained_path (default: true)")
    g.add_argument("--pretrained_path", default=None,
                   help="local timm weights file (model.safetensors of the backbone's timm hub repository) for "
                        "--pretrained true; never downloaded. Without it the backbone starts from random weights "
                        "with a warning that names the file to download (default: none)")
    g.add_argument("--drop_path", type=float, default=0.2, help="backbone stochastic depth (default: 0.2)")


def add_phase_args(g: _Group) -> None:
    """Settings of the head warm-up and the full fine-tune that both stages share."""
    g.add_argument("--warmup_head_lr", type=float, default=1e-3, help="warm-up lr, constant (default: 1e-3)")
    g.add_argument("--warmup_weight_decay", type=float, default=0.01, help="warm-up AdamW weight decay (default: 0.01)")
    g.add_argument("--finetune_epochs", type=int, default=60, help="full fine-tune epochs (default: 60)")
    g.add_argument("--min_lr_factor", type=float, default=0.01, help="floor of the cosine factor (default: 0.01)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping, <= 0 disables (default: 1.0)")
    g.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay (timm ModelEmaV2) (default: 0.9999)")
    add_amp_flag(g, default="fp16", help="autocast dtype; fp16 becomes bf16 on CPU")
    add_compile_flag(g)
    add_channels_last_flag(g)
    g.add_argument("--skip_nonfinite", type=str2bool, default=False,
                   help="skip (and count, train_nonfinite_skipped) batches whose loss is NaN/Inf, as the original "
                        "loop does; false stops with an error naming the step (default: false)")


def add_asl_args(g: _Group) -> None:
    g.add_argument("--gamma_neg", type=float, default=4.0, help="ASL gamma- (default: 4)")
    g.add_argument("--gamma_pos", type=float, default=None,
                   help="ASL gamma+ (default: the loss's own: 1 for asl as the original losses.py, 0 for "
                        "asl_official as train_standard_head.py)")
    g.add_argument("--asl_clip", type=float, default=0.05, help="ASL clip (default: 0.05)")
    g.add_argument("--asl_neg_weighting", choices=("original", "conventional"), default="original",
                   help="--loss asl only: negatives weighted by (1 - p_clamped)^gamma_neg as the original losses.py "
                        "(emphasises easy negatives), or the conventional ASL p_clamped^gamma_neg (default: original)")


def asl_kwargs_from_args(args: argparse.Namespace, loss: str) -> dict:
    """Keyword arguments of the ``--loss`` ASL class from the flags of ``add_asl_args``."""
    kw = dict(gamma_neg=args.gamma_neg, clip=args.asl_clip)
    if args.gamma_pos is not None:
        kw["gamma_pos"] = args.gamma_pos
    if loss == "asl":
        kw["neg_weighting"] = args.asl_neg_weighting
    return kw


def add_run_args(g: _Group, *, output_dir: str) -> None:
    g.add_argument("--output_dir", default=output_dir, help=f"checkpoints, logs, metrics.json (default: {output_dir})")
    g.add_argument("--resume", default="",
                   help="'' = fresh, 'auto' = continue the run in --output_dir, or a phase-2 checkpoint_last.pth (default: '')")
    g.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda)")
    g.add_argument("--plots", default=True, type=str2bool,
                   help="draw the run's pictures at the end (curves, per-class AP; python -m common.plots) (default: true)")


def pretrained_backbone(args: argparse.Namespace, *, original: str) -> tuple[str | None, list[str]]:
    """The backbone weights file for ``--pretrained`` / ``--pretrained_path`` and the run's warnings.

    The original lets timm download ``original`` weights; offline nothing is downloaded: with
    ``--pretrained true`` and no ``--pretrained_path`` the backbone starts from random weights, said in a
    warning that names the file to download (also recorded in metrics.json).
    """
    from common.pretrained import random_init_warning
    from cxrlt.model import timm_weights_hint

    if not args.pretrained:
        if args.pretrained_path:
            raise ValueError("--pretrained_path is given but --pretrained is false: drop one of them")
        return None, []
    if args.pretrained_path:
        return args.pretrained_path, []
    return None, [random_init_warning("--pretrained_path", args.model, original, hint=timm_weights_hint(args.model))]
