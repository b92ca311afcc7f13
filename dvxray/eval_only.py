"""Score a saved MCB-U checkpoint on any list (``eval_only.py`` of the original).

Rebuilds the model from the checkpoint's ``args``, loads the EMA weights if present (else ``model``),
prints parameter counts and appends a row ``checkpoint_path, fuse_mode, head_type, attention_type,
total_params_M, trainable_params_M, mAP, f1_micro, f1_macro, accuracy_micro, AP_<class>...`` to
``--output_csv``. Use ``--val_list annotations/DvXray_test.txt`` for test numbers.

The evaluation is also a run folder (``--output_dir``, default ``eval_<list name>/`` next to the
checkpoint) that ``python -m common.compare`` reads: ``metrics.json`` (``final``), ``predictions.csv``
(the evaluated list's per-class probabilities) and ``split_manifest.json`` (the checkpoint's training list
and the evaluated list, with their overlap check).

Differences: without ``--output_csv`` the row goes to ``eval_<list name>.csv`` next to the checkpoint
(the original then wrote nothing); the CoordAtt-U signal state saved in the checkpoint is restored
(``--restore_signal false`` evaluates like the original, whose fresh process had no signal and so
applied no gain). Checkpoints written by the original code (``model``/``model_ema`` + ``args``) are
accepted too: the model's state-dict keys are the original's (its empty ``backbone.head`` included), flags
it did not have take their defaults, and the BatchNorm buffers its parameter-only ``model_ema`` lacks
stay at their initial values (as there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torch import nn

from common.checkpoint import CheckpointError, atomic_write_text, load_checkpoint
from common.cli import run_main, str2bool
from common.dist import init_distributed
from common.engine import build_loader, collect_outputs
from common.predictions import PredictionWriter, loader_order, relative_id, start_recording
from common.run import CsvLog, setup_logging, to_plain
from dvxray.datasets import build_dataset, read_classes
from dvxray.engine_finetune import DvXrayTask, build_model_from_args, count_params, make_metric_fn
from dvxray.main_finetune import get_args_parser as get_finetune_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluate an MCB-U checkpoint", add_help=False)
    p.add_argument("--checkpoint", required=True, type=str, help="checkpoint to evaluate; required")
    p.add_argument("--val_list", default=None, type=str, help="evaluation list (default: the checkpoint's --val_list)")
    p.add_argument("--batch_size", default=16, type=int, help="batch size (default: 16)")
    p.add_argument("--num_workers", default=8, type=int, help="DataLoader workers (default: 8)")
    p.add_argument("--device", default="cuda", type=str, help="device; cuda without a GPU falls back to CPU (default: cuda)")
    p.add_argument("--output_csv", default=None, type=str,
                   help="CSV to append to (default: eval_<list name>.csv next to the checkpoint)")
    p.add_argument("--output_dir", default=None, type=str,
                   help="folder for metrics.json, predictions.csv and split_manifest.json (default: "
                        "eval_<list name>/ next to the checkpoint)")
    p.add_argument("--data_root", default=None, type=str, help="image root for relative list paths (default: the checkpoint's --data_root)")
    p.add_argument("--use_ema", default=True, type=str2bool, help="use the EMA weights when the checkpoint has them (default: true)")
    p.add_argument("--restore_signal", default=True, type=str2bool,
                   help="restore the saved CoordAtt-U signal; false reproduces the original's no-gain evaluation (default: true)")
    return p


def _ema_weights(ckpt: dict) -> dict | None:
    if ckpt.get("model_ema"):
        return ckpt["model_ema"]
    ema = ckpt.get("ema")
    if not ema:
        return None
    return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}


# keys a checkpoint of the original code does not hold: BatchNorm buffers (its ``model_ema`` has
# parameters only; the original evaluated with fresh buffers, quirk 4)
_MAY_BE_ABSENT = ("running_mean", "running_var", "num_batches_tracked")


def load_eval_weights(model: nn.Module, weights: dict, source: str) -> None:
    """Strict loading, except the BatchNorm buffers a parameter-only EMA lacks (``_MAY_BE_ABSENT``).

    Any other missing or unexpected key raises ``CheckpointError``.
    """
    own = model.state_dict()
    unexpected = sorted(k for k in weights if k not in own)
    missing = sorted(k for k in own if k not in weights)
    bad_missing = [k for k in missing if not k.endswith(_MAY_BE_ABSENT)]
    if unexpected or bad_missing:
        raise CheckpointError(f"{source}: weights do not fit the model rebuilt from its args "
                              f"(missing {bad_missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict(weights, strict=False)
    if missing:
        print(f"[eval] {source}: {len(missing)} buffer/state keys absent (original-code checkpoint), kept at "
              f"their initial values as the original evaluation did")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; returns the metrics dict (mAP, f1_micro, f1_macro, acc1, per_class_ap, ...)."""
    setup_logging(None)
    ckpt = load_checkpoint(args.checkpoint)
    train_args = ckpt.get("args")
    if not isinstance(train_args, dict) or "model" not in train_args:
        raise CheckpointError(f"{args.checkpoint}: no training 'args' stored; cannot rebuild the model")
    ctx = init_distributed(args.device)
    # flags added by this re-implementation are absent from the original's checkpoints: use their defaults
    train_args = {**vars(get_finetune_parser().parse_args([])), **train_args}
    model, signal = build_model_from_args(train_args)
    weights = _ema_weights(ckpt) if args.use_ema else None
    source = "EMA" if weights is not None else "model"
    if weights is None:
        weights = ckpt["model"]
    load_eval_weights(model, weights, f"{args.checkpoint} ({source} weights)")
    signal_state = ((ckpt.get("task") or {}).get("_extra_state") or {}).get("signal")
    if args.restore_signal and signal_state is not None:
        signal.load_state_dict(signal_state)
    total_m, trainable_m = count_params(model)
    print(f"[eval] {args.checkpoint} ({source} weights): {total_m:.3f}M parameters, {trainable_m:.3f}M trainable")

    val_list = args.val_list or train_args["val_list"]
    data_root = train_args.get("data_root", "") if args.data_root is None else args.data_root
    class_names = read_classes(train_args["classes_file"], train_args["num_classes"])
    dataset = build_dataset(val_list, num_classes=train_args["num_classes"], train=False,
                            input_size=train_args["input_size"], data_root=data_root)
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / f"eval_{Path(val_list).stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    ids_eval = [relative_id(r.paths[0], data_root) for r in dataset.records]
    splits = {"eval": {"ids": ids_eval}}
    train_list = train_args.get("train_list")
    if train_list and Path(train_list).is_file():  # the training images must not be among those scored
        train_set = build_dataset(train_list, num_classes=train_args["num_classes"], train=False,
                                  input_size=train_args["input_size"], data_root=data_root)
        splits = {"train": {"ids": [relative_id(r.paths[0], data_root) for r in train_set.records]}, **splits}
    recorder = start_recording(out_dir, splits, writer=PredictionWriter(ids_eval, class_names=class_names),
                               protocol="official", dataset="dvxray", is_primary=ctx.is_primary)
    loader = build_loader(dataset, args.batch_size, train=False, ctx=ctx, num_workers=args.num_workers)
    task = DvXrayTask(model, criterion=None).to(ctx.device)
    outputs = collect_outputs(task.model, loader, predict_fn=task.predict, ctx=ctx)
    metrics = make_metric_fn(train_args["eval_threshold"], class_names)(outputs)
    if ctx.is_primary:
        recorder.save(out_dir, outputs, loader_order(loader, ctx))
        summary = {"checkpoint": str(args.checkpoint), "eval_list": str(val_list), "dataset": "dvxray",
                   "class_names": list(class_names), "final": metrics, **recorder.metrics_entries()}
        atomic_write_text(json.dumps(to_plain(summary), indent=2) + "\n", out_dir / "metrics.json")
    print(f"[eval] {val_list}: mAP {metrics['mAP']:.4f}  f1_micro {metrics['f1_micro']:.4f}  "
          f"f1_macro {metrics['f1_macro']:.4f}  acc {metrics['acc1']:.4f}")
    if ctx.is_primary:
        out_csv = Path(args.output_csv) if args.output_csv else Path(args.checkpoint).parent / f"eval_{Path(val_list).stem}.csv"
        columns = ["checkpoint_path", "fuse_mode", "head_type", "attention_type", "total_params_M", "trainable_params_M",
                   "mAP", "f1_micro", "f1_macro", "accuracy_micro"] + [f"AP_{c.replace(' ', '_')}" for c in class_names]
        row = {"checkpoint_path": args.checkpoint, "fuse_mode": train_args["fuse_mode"],
               "head_type": train_args["head_type"], "attention_type": train_args.get("attention_config") or "",
               "total_params_M": f"{total_m:.3f}", "trainable_params_M": f"{trainable_m:.3f}",
               "mAP": f"{metrics['mAP']:.4f}", "f1_micro": f"{metrics['f1_micro']:.4f}",
               "f1_macro": f"{metrics['f1_macro']:.4f}", "accuracy_micro": f"{metrics['acc1']:.4f}"}
        row.update({f"AP_{c.replace(' ', '_')}": f"{a:.4f}" for c, a in zip(class_names, metrics["per_class_ap"])})
        CsvLog(out_csv, columns).append(row)
        print(f"[eval] row appended to {out_csv}; metrics.json, predictions.csv, split_manifest.json in {out_dir}")
    return metrics


if __name__ == "__main__":
    _args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args()
    run_main(main, _args)
