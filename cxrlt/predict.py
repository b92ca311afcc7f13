"""The model card's ``predict()`` as a CLI: grey image -> 512x512 -> 3 channels -> /255 -> ImageNet
normalisation -> sigmoid, printing the top-k as ``0.123 ClassName``.

Weights come from ``--weights`` or ``$CXRLT2026_WEIGHTS`` (a local file, never a hub download). Images
are read as the model card's ``cv2.imread(path, IMREAD_GRAYSCALE)`` does (colour -> luma), except that a
16-bit PNG (PadChest's format) is percentile-rescaled to 8 bits as the original training and
``inference.py`` do; the model card's snippet would keep only its high byte (quirk 19), which
``--no-rescale_16bit`` reproduces.

Beside these original flags, the interface every paper's ``predict.py`` shares (not in the original;
``common.predict``): ``--checkpoint FILE --images DIR|LIST|CSV --output FILE.csv`` writes one row per
image (one probability per class, the predicted classes at ``--threshold``, ``skipped``), with the
preprocessing read from the checkpoint, a progress bar, ``--resume`` and ``--explain N`` (Grad-CAM of
the top-3 classes). The original code's files record no preprocessing: give ``--image_size`` (512 for
the released model) and, for a backbone other than ConvNeXt-V2 Base, ``--model``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common.cli import run_main
from common.dist import resolve_device
from common.predict import add_predict_args, predict_main
from cxrlt.adapter import ADAPTER
from cxrlt.data import normalize, read_gray_like_cv2, resize_uint8
from cxrlt.inference import load_any_model
from cxrlt.model import CLASS_NAMES, resolve_weights_path

_MODEL_CARD_SIZE = 512


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CXR-LT 2026 Task 1 single-image prediction", add_help=False)
    parser.add_argument("images_positional", nargs="*", metavar="IMAGE",
                        help="image files (the model card's interface, with --weights)")
    parser.add_argument("--weights", default=None,
                        help="safetensors or checkpoint file (default: $CXRLT2026_WEIGHTS)")
    parser.add_argument("--topk", type=int, default=5, help="classes printed per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print all probabilities as JSON (default: off)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="resize side: the positional-IMAGE interface uses 512 when not given; with "
                             "--checkpoint it is used only for files that do not record their own "
                             "(default: 512 / the checkpoint's)")
    parser.add_argument("--rescale_16bit", action=argparse.BooleanOptionalAction, default=True,
                        help="16-bit images: percentile rescale as the original training / inference.py; "
                             "--no-rescale_16bit keeps the model card's cv2 high byte (default: true)")
    parser.add_argument("--model", default=None,
                        help="timm backbone (default: convnextv2_base, or the checkpoint's recorded one)")
    parser.add_argument("--device", default="cuda", help="(default: cuda, CPU when none)")
    add_predict_args(parser, images_required=False, has_device=True)
    return parser


def load_input(path: str | Path, size: int, rescale_16bit: bool = True) -> torch.Tensor:
    """1 x 3 x size x size normalised tensor as the model card's transform builds it."""
    grey = read_gray_like_cv2(path, rescale_16bit=rescale_16bit)
    arr = np.stack([grey] * 3, axis=-1)
    return normalize(resize_uint8(arr, size)).unsqueeze(0)


@torch.inference_mode()
def predict(model: torch.nn.Module, path: str | Path, *, size: int = 512, device: torch.device | str = "cpu",
            rescale_16bit: bool = True) -> dict[str, float]:
    """Class name -> sigmoid probability for one image."""
    x = load_input(path, size, rescale_16bit).to(device)
    probs = torch.sigmoid(model(x).float()).squeeze(0).cpu().tolist()
    if len(probs) != len(CLASS_NAMES):
        raise ValueError(f"the model predicts {len(probs)} classes, expected {len(CLASS_NAMES)}")
    return dict(zip(CLASS_NAMES, probs))


def main(args: argparse.Namespace):
    """The model card's IMAGE interface (prints the top-k), or the shared --checkpoint/--images table."""
    if args.checkpoint is not None or args.images is not None:
        return _main_table(args)
    if not args.images_positional:
        raise ValueError("give IMAGE files (with --weights), or --checkpoint and --images")
    return _main_model_card(args)


def _main_table(args: argparse.Namespace):
    if args.images_positional:
        raise ValueError("positional IMAGE files and --images exclude each other (use one interface)")
    if args.weights is not None:
        raise ValueError("--weights belongs to the IMAGE interface; with --images give the file as --checkpoint")
    fallback = {"backbone": args.model}
    if args.image_size is not None:
        fallback["input_size"] = [args.image_size, args.image_size]
    return predict_main(ADAPTER, args, fallback=fallback)


def _main_model_card(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    device = resolve_device(args.device)
    size = args.image_size or _MODEL_CARD_SIZE
    model = load_any_model(resolve_weights_path(args.weights, flag="--weights"),
                           args.model or "convnextv2_base").to(device)
    results = {}
    for image in args.images_positional:
        results[image] = predict(model, image, size=size, device=device, rescale_16bit=args.rescale_16bit)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for image, res in results.items():
            if len(results) > 1:
                print(f"== {image}")
            for cls, p in sorted(res.items(), key=lambda kv: -kv[1])[: args.topk]:
                print(f"{p:.3f} {cls}")
    return results


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
