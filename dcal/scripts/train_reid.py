"""Train DCAL for object re-identification (seed README: `python scripts/train_reid.py --config configs/reid/veri776.yaml`).

Thin entry point: flags in `dcal.scripts.cli`, work in `dcal.training` over `common.engine`.
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from dcal.scripts.cli import train_args_parser, train_main


def get_args_parser() -> argparse.ArgumentParser:
    return train_args_parser("reid")


def main(args: argparse.Namespace) -> dict:
    return train_main(args, "reid")


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
