"""Evaluate a trained DCAL FGVC model; writes `fgvc_results.json` and `metrics.json` to --output_dir.

Thin entry point over `dcal.training.evaluator.evaluate_from_config`.
"""

from __future__ import annotations

import argparse

from common.cli import run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DCAL FGVC evaluation", add_help=False)
    parser.add_argument("--config", type=str, required=True, help="YAML config file (required)")
    parser.add_argument("--checkpoint", type=str, required=True,
                        help="trained weights: a training checkpoint (.pth) or a state dict (required)")
    parser.add_argument("--gpu", type=int, default=0,
                        help="CUDA device index used when the config's device is cuda (default: 0)")
    parser.add_argument("--visualize", action="store_true",
                        help="also write attention-rollout and GLCA-selection overlays as PNG (default: off)")
    parser.add_argument("--output_dir", type=str, default="./eval_results", help="output folder (default: ./eval_results)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.data_root=/data (default: none)")
    return parser


def main(args: argparse.Namespace) -> dict:
    # deferred: keeps `--help` free of the torch/timm import
    from dcal.training.evaluator import evaluate_from_config
    from dcal.utils.config import load_config

    cfg = load_config(args.config, args.opts)
    return evaluate_from_config(cfg, task_type="fgvc", checkpoint=args.checkpoint, output_dir=args.output_dir,
                                gpu=args.gpu, visualize=args.visualize, extra_args=vars(args))


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
