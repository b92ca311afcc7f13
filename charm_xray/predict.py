"""Predict the 14 ChestX-ray14 findings with a trained CHARM-Xray model on your own images (not in the
original).

    python charm_xray/predict.py --checkpoint working/models/final_experiment.pth --images my_xrays/ \
        --output my_xrays.csv [--threshold 0.5|val] [--explain 4]

Any checkpoint ``test_checkpoint.py`` accepts: ours (``models/final_<exp>.pth``, a stage's
``checkpoint_best.pth``), a fastai ``learn.save`` file or a plain / notebook state dict. The
preprocessing (input size, RGB, ImageNet normalisation) is the one recorded with the checkpoint;
``--image_size`` is needed only for the original code's files, which do not record it. The model runs
in eval mode: the memory bank is read, never written, and the momentum branch is not updated.
"""

from __future__ import annotations

import argparse

from charm_xray.adapter import ADAPTER
from common.cli import run_main
from common.predict import add_predict_args, predict_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CHARM-Xray prediction on your own images", add_help=False)
    g = add_predict_args(parser)
    g.add_argument("--image_size", type=int, default=None,
                   help="input side for checkpoints that do not record it (the original code's state dicts); "
                        "ignored when the checkpoint records its own (default: none)")
    return parser


def main(args: argparse.Namespace):
    size = args.image_size
    return predict_main(ADAPTER, args, fallback={"input_size": [size, size]} if size else None)


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
