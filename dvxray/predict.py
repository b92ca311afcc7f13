"""Predict with a trained DvXray model on your own OL / SD image pairs (not in the original).

    python dvxray/predict.py --checkpoint outputs/CoordAttU_MCBConvex/checkpoint_best.pth \
        --images my_bags/ --output my_bags.csv [--threshold 0.5|val] [--explain 4]

``--images``: a folder (pairs by the DvXray naming ``<ID>_OL.<ext>`` + ``<ID>_SD.<ext>``), a list with
two paths per line (the ``annotations/DvXray_*.txt`` lists work as they are) or a CSV whose first two
columns are the OL and SD paths. One row per pair: both file names, one probability per class in
``classes.txt`` order, the predicted classes and ``skipped``. The preprocessing comes from the
checkpoint; the model is rebuilt from its stored args, with the EMA weights when present.
"""

from __future__ import annotations

import argparse

from common.cli import run_main
from common.predict import add_predict_args, predict_main
from dvxray.adapter import ADAPTER


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DvXray prediction on your own image pairs", add_help=False)
    add_predict_args(parser, views=ADAPTER.views)
    return parser


def main(args: argparse.Namespace):
    return predict_main(ADAPTER, args)


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
