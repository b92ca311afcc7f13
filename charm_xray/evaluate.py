"""``test_checkpoint.py``'s library half: load any accepted checkpoint, score a split, report."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from charm_xray import config
from charm_xray.data import load_table, make_split, test_checkpoint_split
from charm_xray.models import build_model
from charm_xray.pipeline import auc_report, plot_roc_curves, predict_probabilities, test_metrics_json
from common.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, load_state_dict_strict
from common.dist import init_distributed
from common.run import setup_logging

_logger = logging.getLogger(__name__)
_MODEL_ARGS = ("model_name", "image_size", "attention_reduction", "bank_size", "rarity_threshold", "retrieval_k",
               "dropout_rate", "hidden_dim", "momentum")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, recorded args) from any accepted checkpoint layout:

    * ours: ``{"model": state_dict, "args": {...}, ...}`` (training checkpoints, ``models/*.pth``);
    * fastai ``learn.save``: ``{"model": state_dict, "opt": ...}``;
    * a plain state dict of the original model (``model.state_dict()``);
    * notebook checkpoints: the same with every key prefixed ``model.`` (``ModelWrapper``).

    Raises:
        CheckpointError: unreadable, unsafe (needs arbitrary unpickling) or holding no state dict.
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"--checkpoint {path}: holds a {type(ckpt).__name__}, not a state dict")
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {path}: no model state dict inside (expected a state dict, our "
                              "checkpoint, or a fastai {'model': state_dict, 'opt': ...} file)")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state, args


def _guess_model_name(state: dict[str, torch.Tensor]) -> str:
    if "lka3.dw_conv1.weight" in state:
        return "vgg16_lka"
    if "base_model.fc.weight" in state or any(k.startswith("base_model.layer4.") for k in state):
        channels = state["memory_bank.memory"].shape[1] if "memory_bank.memory" in state else 2048
        return "resnet50" if channels == 2048 else "resnet18"
    if any(k.startswith("base_model.features.denseblock") for k in state):
        return "densenet121"
    return "efficientnet_b0"


def build_from_checkpoint(state: dict[str, torch.Tensor], recorded: dict[str, Any], args: argparse.Namespace,
                          what: str) -> torch.nn.Module:
    """The model described by the flags, else the checkpoint's args, else the keys; loaded strict."""
    mc = config.ModelConfig
    defaults = {"model_name": _guess_model_name(state), "image_size": config.IMAGE_SIZE[0],
                "attention_reduction": mc.ATTENTION_REDUCTION, "bank_size": mc.BANK_SIZE,
                "rarity_threshold": mc.RARITY_THRESHOLD, "retrieval_k": mc.RETRIEVAL_K,
                "dropout_rate": mc.DROPOUT_RATE, "hidden_dim": mc.HIDDEN_DIM, "momentum": mc.MOMENTUM}
    if "memory_bank.memory" in state:
        defaults["bank_size"] = state["memory_bank.memory"].shape[0]
    if "classifier.1.weight" in state:
        defaults["hidden_dim"] = state["classifier.1.weight"].shape[0]
    chosen = {k: getattr(args, k, None) if getattr(args, k, None) is not None else recorded.get(k, defaults[k])
              for k in _MODEL_ARGS}
    for k in _MODEL_ARGS:
        setattr(args, k, chosen[k])
    kwargs = {} if chosen["model_name"] == "vgg16_lka" else {
        k: chosen[k] for k in _MODEL_ARGS if k not in ("model_name", "image_size")}
    if kwargs:  # retrieval corrections the run was trained with (the bank itself is in the state dict)
        kwargs.update({k: recorded[k] for k in ("memory_select", "memory_wrap", "exclusion_tol") if k in recorded})
    model = build_model(chosen["model_name"], len(config.DISEASE_LABELS), **kwargs)
    load_state_dict_strict(model, state, f"{what} (model_name {chosen['model_name']})")
    return model


def main(args: argparse.Namespace) -> dict[str, Any]:
    setup_logging()
    t_start = time.time()
    ctx = init_distributed(args.device)
    state, recorded = read_checkpoint(args.checkpoint)
    model = build_from_checkpoint(state, recorded, args, f"--checkpoint {args.checkpoint}").to(ctx.device).eval()
    t_loaded = time.time()
    table = load_table(args.data_dir)
    report_extra: dict[str, Any] = {}
    if args.split == "test_checkpoint":
        frame = test_checkpoint_split(table, num_samples=args.num_samples)
        plan_report = {"test_subset_images": len(frame), "warnings": [
            "test_checkpoint split: RandomSplitter(0.2, seed 42) over the whole CSV, as the original; it can "
            "score images the model was trained on (quirk 21)"]}
    else:
        plan = make_split(table, args.split, seed=args.seed)
        frame = plan.phase2.test
        if args.num_samples != -1 and args.num_samples < len(frame):
            frame = frame.sample(n=args.num_samples, random_state=config.TEST_CHECKPOINT_SEED)
        plan_report = dict(plan.report, test_subset_images=len(frame))
    probs, targets = predict_probabilities(model, frame, args, args.batch_size, ctx)
    t_done = time.time()
    report = auc_report(probs, targets)
    timing = {"load_seconds": t_loaded - t_start, "inference_seconds": t_done - t_loaded,
              "images_per_second": len(targets) / max(t_done - t_loaded, 1e-9)}
    for warning in plan_report.get("warnings", []):
        _logger.warning("%s", warning)
    print(f"Evaluated {len(targets)} images ({args.split} split) with {args.checkpoint}")
    print(f"Overall ROC-AUC: {report['auc']:.4f}")
    print(f"Mean class ROC-AUC: {report['mean_class_auc']:.4f}")
    print("Per-class ROC-AUC:")
    for name, value in zip(config.DISEASE_LABELS, report["per_class_auc"]):
        print(f"  {name:<20} {'undefined (one label value)' if value is None else f'{value:.4f}'}")
    print(f"Time: load {timing['load_seconds']:.1f} s, inference {timing['inference_seconds']:.1f} s "
          f"({timing['images_per_second']:.1f} images/s)")
    out = Path(args.output_dir) if args.output_dir else Path(f"{args.checkpoint}_test")
    if ctx.is_primary:
        out.mkdir(parents=True, exist_ok=True)
        plot_roc_curves(probs, targets, out / "roc_curves.png", f"{Path(args.checkpoint).name}: ROC on "
                        f"{len(targets)} images (AUC {report['auc']:.4f})")
        metrics = test_metrics_json(report, plan_report, args.split, Path(args.checkpoint).name,
                                    {"timing": timing, "checkpoint": str(args.checkpoint), **report_extra,
                                     "model_name": args.model_name, "image_size": args.image_size})
        atomic_write_text(json.dumps(metrics, indent=2) + "\n", out / "metrics.json")
        print(f"Wrote {out / 'roc_curves.png'} and {out / 'metrics.json'}")
    return {**report, "timing": timing}
