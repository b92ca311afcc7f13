"""Batch inference CLI of the original ``inference.py``: checkpoint ensemble with weights, TTA sets and
merge modes, normal gating, clipping, CSV ``ImageID`` + one probability column per class.

Example (original README)::

    python cxrlt/inference.py --checkpoints best_padchest_db_cas.pth --test_csv test.csv \
        --image_dir images --output submission.csv --use_tta --tta_config flip_scale
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.checkpoint import load_checkpoint, load_state_dict_strict, load_weights_file
from common.cli import run_main
from common.data.errors import DataError
from common.data.lists import read_csv
from common.dist import resolve_device
from common.run import setup_logging
from cxrlt.data import BAD_IMAGE_POLICIES, IMAGENET_MEAN, IMAGENET_STD, read_cxr, resize_uint8
from cxrlt.model import CLASS_NAMES, ConvNeXtV2CXR, StandardCXR, extract_state_dict
from cxrlt.tta import MERGE_MODES, TTA_CONFIGS, TTA_STYLES, merge, tta_views

_logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CXR-LT 2026 Task 1 inference", add_help=False)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints / safetensors to ensemble; required")
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="ensemble weights (default: equal)")
    parser.add_argument("--test_csv", required=True, help="CSV listing the test images; required")
    parser.add_argument("--image_dir", required=True, help="image folder; required")
    parser.add_argument("--output", required=True, help="output CSV; required")
    parser.add_argument("--image_size", type=int, default=512, help="resize side (default: 512)")
    parser.add_argument("--batch_size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--num_workers", type=int, default=4, help="(default: 4)")
    parser.add_argument("--use_tta", action="store_true", help="enable TTA (default: off)")
    parser.add_argument("--tta_config", choices=TTA_CONFIGS, default="flip_scale", help="TTA set (default: flip_scale)")
    parser.add_argument("--tta_style", choices=TTA_STYLES, default="original",
                        help="original: views of the normalised tensor (reflect-filled rotations, int() sizes, brightness "
                             "on normalised values) as the original tta.py; corrected: views of the [0, 1] image "
                             "(black-filled rotations, round() sizes, image brightness); not in the original "
                             "(default: original)")
    parser.add_argument("--tta_merge_mode", choices=MERGE_MODES, default="mean",
                        help="merge of TTA views; logit_mean is the README's mode, not in the original (default: mean)")
    parser.add_argument("--ensemble_mode", choices=("mean", "weighted_mean", "max"), default="weighted_mean",
                        help="model merge; the original applies weighted_mean whatever is chosen (default: weighted_mean)")
    parser.add_argument("--postprocess", choices=("none", "normal_gating", "normal_gating_linear"),
                        default="normal_gating",
                        help="normal_gating: p_c*(1-p_Normal)^alpha (the code); normal_gating_linear: "
                             "p_c*(1-alpha*p_Normal) (the README) (default: normal_gating)")
    parser.add_argument("--normal_alpha", type=float, default=0.5, help="gating exponent alpha (default: 0.5)")
    parser.add_argument("--clip_eps", type=float, default=1e-6, help="final clip to [eps, 1-eps] (default: 1e-6)")
    parser.add_argument("--image_col", default="ImageID", help="image column of --test_csv (default: ImageID)")
    parser.add_argument("--model", default="convnextv2_base",
                        help="timm backbone of the checkpoints (not in the original) (default: convnextv2_base)")
    parser.add_argument("--bad_image", choices=BAD_IMAGE_POLICIES, default="error",
                        help="unreadable image: error or zeros (original) (default: error)")
    parser.add_argument("--device", default="cuda", help="(default: cuda, CPU when none)")
    return parser


def normal_gating(probs: np.ndarray, alpha: float, *, mode: str = "normal_gating", normal_index: int = 0) -> np.ndarray:
    """Gate every finding by the Normal probability (column ``normal_index`` is left as is).

    ``normal_gating``: p_c * (1 - p_Normal) ** alpha (what the original computes);
    ``normal_gating_linear``: p_c * (1 - alpha * p_Normal) (what its README writes).
    """
    out = probs.copy()
    p_normal = probs[:, normal_index:normal_index + 1]
    gate = (1.0 - p_normal) ** alpha if mode == "normal_gating" else 1.0 - alpha * p_normal
    others = [c for c in range(probs.shape[1]) if c != normal_index]
    out[:, others] = probs[:, others] * gate
    return out


def load_any_model(path: str | Path, backbone: str) -> nn.Module:
    """Build the model a checkpoint's keys describe (``head.classifier`` -> CSRA, ``head.multi_head`` ->
    official CSRA, ``classifier.6`` -> standard MLP) and load it strictly."""
    path = Path(path)
    state = load_weights_file(path) if path.suffix == ".safetensors" else extract_state_dict(load_checkpoint(path), path)
    if "head.classifier.weight" in state:
        model: nn.Module = ConvNeXtV2CXR(state["head.classifier.weight"].shape[0], backbone=backbone, drop_path_rate=0.0)
    elif any(k.startswith("head.multi_head.") for k in state):
        heads = len({k.split(".")[2] for k in state if k.startswith("head.multi_head.")})
        num_classes = state["head.multi_head.0.head.weight"].shape[0]
        model = ConvNeXtV2CXR(num_classes, backbone=backbone, drop_path_rate=0.0, head="csra", num_heads=heads)
    elif "classifier.6.weight" in state:
        model = StandardCXR(state["classifier.6.weight"].shape[0], backbone=backbone, drop_path_rate=0.0)
    else:
        raise ValueError(f"{path}: unknown architecture (no head.classifier, head.multi_head or classifier.6 weights)")
    load_state_dict_strict(model, state, f"{path} (--model {backbone})")
    return model.eval()


class _TestImages(Dataset):
    def __init__(self, paths: Sequence[Path], size: int, bad_image: str):
        self.paths, self.size, self.bad_image = list(paths), size, bad_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return resize_uint8(read_cxr(self.paths[i], bad_image=self.bad_image, size=self.size), self.size).float() / 255.0


def _normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] B x 3 x H x W -> ImageNet-normalised, on x's device (``cxrlt.data.normalize`` per image)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict_probs(model: nn.Module, loader: DataLoader, device: torch.device, *, tta: str | None,
                  merge_mode: str, tta_style: str = "original") -> np.ndarray:
    """N x C probabilities of one model, TTA views merged with ``merge_mode``.

    ``tta_style="original"``: the views act on the ImageNet-normalised batch (as the original);
    ``"corrected"``: on the [0, 1] images, normalised afterwards (see ``cxrlt.tta``).
    """
    views = tta_views(tta or "none", tta_style)
    out = []
    for x in loader:
        x = x.to(device)
        if tta_style == "original":
            xn = _normalize_batch(x)
            logits = torch.stack([model(view(xn)).float() for view in views])
        else:
            logits = torch.stack([model(_normalize_batch(view(x))).float() for view in views])
        out.append(merge(logits, merge_mode).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def ensemble(probs: Sequence[np.ndarray], weights: Sequence[float], mode: str) -> np.ndarray:
    """Merge per-model probabilities: weighted_mean (weights normalised), mean or max."""
    stack = np.stack(probs)
    if mode == "max":
        return stack.max(0)
    if mode == "mean":
        return stack.mean(0)
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1)


def main(args: argparse.Namespace) -> pd.DataFrame:
    setup_logging()
    device = resolve_device(args.device)
    weights = args.weights if args.weights is not None else [1.0] * len(args.checkpoints)
    if len(weights) != len(args.checkpoints):
        raise ValueError(f"--weights: {len(weights)} value(s) for {len(args.checkpoints)} checkpoint(s)")
    if args.ensemble_mode != "weighted_mean":
        _logger.warning("--ensemble_mode %s: applied as named (the original always used weighted_mean)", args.ensemble_mode)
    frame = read_csv(args.test_csv, [args.image_col], dtype={args.image_col: str})
    ids = list(frame[args.image_col])
    paths = [Path(args.image_dir) / i for i in ids]
    if args.bad_image == "error":
        # Checked up front: a loader worker's error would arrive wrapped in its traceback.
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"--image_dir {args.image_dir}: {len(missing)} image(s) listed in {args.test_csv} "
                            f"not found, first {missing[0]}")
    loader = DataLoader(_TestImages(paths, args.image_size, args.bad_image), batch_size=args.batch_size,
                        num_workers=args.num_workers, shuffle=False)
    all_probs = []
    for ckpt in args.checkpoints:
        model = load_any_model(ckpt, args.model).to(device)
        all_probs.append(predict_probs(model, loader, device, tta=args.tta_config if args.use_tta else None,
                                       merge_mode=args.tta_merge_mode, tta_style=args.tta_style))
        _logger.info("%s: scored %d images", ckpt, len(ids))
    probs = ensemble(all_probs, weights, args.ensemble_mode)
    if probs.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"the checkpoints predict {probs.shape[1]} classes; the Task-1 CSV needs {len(CLASS_NAMES)}")
    if args.postprocess != "none":
        probs = normal_gating(probs, args.normal_alpha, mode=args.postprocess)
    probs = np.clip(probs, args.clip_eps, 1.0 - args.clip_eps)
    result = pd.DataFrame(probs, columns=list(CLASS_NAMES))
    result.insert(0, "ImageID", ids)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out, index=False)
    _logger.info("wrote %s (%d rows)", out, len(result))
    return result


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
