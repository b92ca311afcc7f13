"""Flags and ``main`` shared by the four DCAL entry scripts (which differ only in the task type).

Training and evaluation themselves live in ``dcal.training`` (imported lazily so ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import os

from common.cli import add_channels_last_flag, add_compile_flag

TASK_NAMES = {"fgvc": "fine-grained visual categorisation (FGVC)", "reid": "object re-identification"}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=str, required=True, help="YAML config file (required)")
    parser.add_argument("--gpu", type=int, default=0,
                        help="CUDA device index used when the config's device is cuda (default: 0)")


def _add_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. training.num_epochs=2 data.data_root=/data (default: none)")


def train_args_parser(task_type: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(f"DCAL {TASK_NAMES[task_type]} training", add_help=False)
    _add_config_args(parser)
    parser.add_argument("--resume", type=str, default=None,
                        help="checkpoint file or folder to resume from (an error if missing), or 'auto' for "
                             "save_dir's checkpoint_last.pth when present, else a fresh start "
                             "(default: None = start fresh)")
    add_compile_flag(parser)
    add_channels_last_flag(parser)
    parser.add_argument("--no_plots", action="store_true",
                        help="skip the pictures drawn at the end (curves, per-class bars; python -m common.plots) "
                             "(default: drawn)")
    _add_opts(parser)
    return parser


def eval_args_parser(task_type: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(f"DCAL {TASK_NAMES[task_type]} evaluation", add_help=False)
    _add_config_args(parser)
    parser.add_argument("--checkpoint", type=str, required=True,
                        help="trained weights: a training checkpoint (.pth) or a state dict (required)")
    parser.add_argument("--visualize", action="store_true",
                        help="also write attention-rollout and GLCA-selection overlays as PNG (default: off)")
    parser.add_argument("--output_dir", type=str, default="./eval_results", help="output folder (default: ./eval_results)")
    if task_type == "reid":
        parser.add_argument("--distance_metric", type=str, choices=("euclidean", "cosine"), default="euclidean",
                            help="query-gallery distance (default: euclidean)")
    _add_opts(parser)
    return parser


def train_main(args: argparse.Namespace, task_type: str) -> dict:
    from dcal.training.trainer import train_from_config
    from dcal.utils.config import load_config

    cfg = load_config(args.config, args.opts)
    summary = train_from_config(cfg, task_type=task_type, gpu=args.gpu, resume=args.resume, extra_args=vars(args))
    if not getattr(args, "no_plots", False) and os.environ.get("RANK", "0") == "0":
        from common.plots import plot_run_at_end

        plot_run_at_end(cfg.save_dir, "dcal")
    return summary


def eval_main(args: argparse.Namespace, task_type: str) -> dict:
    from dcal.training.evaluator import evaluate_from_config
    from dcal.utils.config import load_config

    cfg = load_config(args.config, args.opts)
    extra = {"distance_metric": args.distance_metric} if task_type == "reid" else {}
    return evaluate_from_config(cfg, task_type=task_type, checkpoint=args.checkpoint, output_dir=args.output_dir,
                                gpu=args.gpu, visualize=args.visualize, extra_args=vars(args), **extra)
