"""``python -m common.synth FORMAT OUT_DIR [--n N] [--seed S]``: write a synthetic data set."""

from __future__ import annotations

import argparse
import sys

from common.synth import DEFAULT_N, FORMATS, FormatError, generate, summarize


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m common.synth", description="Write a synthetic data set in its native on-disk format."
    )
    # No argparse `choices`: a listed-but-unwritten format must give its own message, not "invalid choice".
    parser.add_argument("format", metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="destination folder (created)")
    parser.add_argument("--n", type=int, default=None, help=f"data set size as the format defines it (default: the format's DEFAULT_N, else {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same bytes (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.n is not None and args.n <= 0:
        parser.error(f"--n must be positive, got {args.n}")
    try:
        result = generate(args.format, args.out_dir, n=args.n, seed=args.seed)
    except FormatError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{args.format}: {summarize(result)} seed={args.seed} -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
