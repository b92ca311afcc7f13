"""Use a trained DCAL model on your own images (not in the seed code).

FGVC (one row per image: a probability per class, the predicted class and the top-5)::

    python dcal/scripts/predict.py --checkpoint outputs/cub/checkpoint_best.pth --images my_birds/ \
        --output my_birds.csv [--explain 4]

Re-ID (one row per query: its ``--topk`` nearest gallery images with their distances; with identities
in the file names, Market-1501 / VeRi style ``<id>_c<camera>...``, whether each match is the same one)::

    python dcal/scripts/predict.py --checkpoint outputs/veri/checkpoint_best.pth --query q/ --gallery g/ \
        --output ranks.csv [--topk 10] [--explain 4]

The model and its preprocessing come from the checkpoint's recorded config; the inference path is SA +
GLCA (PWCA runs only in training). ``--explain N``: FGVC, the attention rollout and the GLCA top-R
patches; re-ID, the query and its top-10 gallery images framed green / red (same / different identity).
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from common.predict import add_predict_args, predict_main
from dcal.adapter import ADAPTER, REID_ADAPTER


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DCAL prediction on your own images", add_help=False)
    add_predict_args(parser, reid=True)
    return parser


def main(args: argparse.Namespace):
    if args.query or args.gallery:
        if args.images:
            raise ValueError("--images (FGVC) and --query/--gallery (re-ID) exclude each other")
        return predict_main(REID_ADAPTER, args)
    return predict_main(ADAPTER, args)


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
