"""Evaluate a trained DCAL re-ID model; writes `reid_results.json` and `metrics.json` to --output_dir.

Thin entry point: flags in `dcal.scripts.cli`, work in `dcal.training` over `common.engine`.
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from dcal.scripts.cli import eval_args_parser, eval_main


def get_args_parser() -> argparse.ArgumentParser:
    return eval_args_parser("reid")


def main(args: argparse.Namespace) -> dict:
    return eval_main(args, "reid")


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
