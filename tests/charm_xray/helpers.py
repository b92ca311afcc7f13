"""Shared pieces of the charm_xray tests."""

from __future__ import annotations

import argparse

from charm_xray.train import check_args, get_args_parser


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """``train.py``'s arguments as its ``main`` gets them (parsed, then checked)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args
