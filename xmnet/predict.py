"""Classify your own leaf images (and, for segmentation models, write their vein masks) with a trained
XMNet model (not in the original).

    python xmnet/predict.py --checkpoint output/resnet18/XMNet_Classification/best_model.pth \
        --images my_leaves/ --output my_leaves.csv [--explain 4]

``--checkpoint``: ``best_model.pth`` (the original's ``{"net": ...}``; its flags are recorded in the file,
or read from the run's ``args.json`` beside older ones) or a ``checkpoint_best.pth``. Input as the test
split of ``Train.py``: RGB, ImageNet normalisation, zero-padding to ``--crop_size`` and the centre window.
One row per image: a probability per class (``class_<labels.pkl value>``), the predicted class (the top
class; with ``--threshold`` only when its probability reaches it), the top-5, and for segmentation models
the path of the predicted vein mask (``<output stem>_masks/<image>.png``, 0/255 at p > 0.5).
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from common.predict import add_predict_args, predict_main
from xmnet.adapter import ADAPTER


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("XMNet prediction on your own images", add_help=False)
    add_predict_args(parser)
    return parser


def main(args: argparse.Namespace):
    return predict_main(ADAPTER, args)


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
