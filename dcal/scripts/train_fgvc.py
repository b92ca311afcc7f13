"""Train DCAL for fine-grained visual categorisation (FGVC) (seed README: `python scripts/train_fgvc.py --config configs/fgvc/cub200.yaml`).

Thin entry point: the config is read and validated by `dcal.utils.config`, training runs in
`dcal.training.trainer.train_from_config` over `common.engine.fit`.
"""

from __future__ import annotations

import argparse

from common.cli import run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DCAL fine-grained visual categorisation (FGVC) training", add_help=False)
    parser.add_argument("--config", type=str, required=True, help="YAML config file (required)")
    parser.add_argument("--gpu", type=int, default=0,
                        help="CUDA device index used when the config's device is cuda (default: 0)")
    parser.add_argument("--resume", type=str, default=None,
                        help="checkpoint file or folder to resume from, or 'auto' for save_dir's "
                             "checkpoint_last.pth (default: None = start fresh)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. training.num_epochs=2 data.data_root=/data (default: none)")
    return parser


def main(args: argparse.Namespace) -> dict:
    # deferred: keeps `--help` free of the torch/timm import
    from dcal.training.trainer import train_from_config
    from dcal.utils.config import load_config

    cfg = load_config(args.config, args.opts)
    return train_from_config(cfg, task_type="fgvc", gpu=args.gpu, resume=args.resume, extra_args=vars(args))


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
