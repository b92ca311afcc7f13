"""MCB-U fine-tuning entry point: dual-view ConvNeXt-V2 + FPN-PAN + CoordAtt-U with the MCB-Convex loss on
DvXray ("Enhancing Occluded X-Ray Security Screening via Collaborative Optimization and Representation
Learning"; original: DCY512/MCB-U-code ``main_finetune.py``).

Every original flag is kept with its default. The loop is ``common.engine.fit``. Quirks of the original
that change results are reproduced by default, with a flag for the corrected behaviour (see README):
constant LR (``--use_scheduler``), ignored ``--drop_path`` (``--apply_drop_path``), EMA copy without
BatchNorm buffers (``--ema_buffers``), ``training_log.csv`` re-sorted by val mAP (``--sort_training_log``).

Run from the repository root (``python dvxray/main_finetune.py ...``), from ``dvxray/`` or as
``main(get_args_parser().parse_args([...]))``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from common.cli import (
    add_amp_flag,
    add_channels_last_flag,
    add_compile_flag,
    run_main,
    str2bool,
    warn_unused_flag,
)
from common.dist import init_distributed
from common.ema import ModelEma
from common.engine import EpochCounter, FitConfig, build_loader, fit, updates_per_epoch
from common.optim import build_optimizer
from common.predictions import PredictionWriter, relative_id, start_recording
from common.pretrained import random_init_warning
from common.run import RunDir
from common.schedule import ConstantSchedule, WarmupCosineSchedule
from common.seed import seed_everything
from dvxray.adapter import preprocessing_from_args
from dvxray.datasets import AUG_MODES, TrainTransformPolicy, build_dataset, read_classes
from dvxray.engine_finetune import (
    CSV_COLUMNS,
    AugmentationCallback,
    DvXrayTask,
    TrainingLogCallback,
    build_model_from_args,
    count_params,
    load_finetune_weights,
    make_metric_fn,
)
from dvxray.models.convnextv2 import list_models
from dvxray.models.modules.fusions import FUSE_MODES
from dvxray.models.modules.losses import BASE_LOSSES, LossParams, build_base_criterion
from dvxray.models.modules.necks import HEAD_TYPES

_logger = logging.getLogger(__name__)

SUMMARY_CSV = "experiments_summary_test_2.csv"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MCB-U dual-view fine-tuning on DvXray", add_help=False)
    g = p.add_argument_group("basic")
    g.add_argument("--model", default="convnextv2_base", type=str,
                   help=f"backbone builder (default: convnextv2_base); one of {', '.join(list_models())}")
    g.add_argument("--input_size", default=384, type=int, help="square input side of both views (default: 384)")
    g.add_argument("--batch_size", default=8, type=int, help="training batch size (default: 8)")
    g.add_argument("--epochs", default=100, type=int, help="epochs (default: 100)")
    g.add_argument("--lr", default=1e-3, type=float, help="AdamW learning rate, constant unless --use_scheduler (default: 1e-3)")
    g.add_argument("--min_lr", default=1e-6, type=float,
                   help="final LR of the cosine schedule; ignored by the original, used only with --use_scheduler true (default: 1e-6)")
    g.add_argument("--warmup_epochs", default=5, type=int,
                   help="warm-up epochs; ignored by the original, used only with --use_scheduler true (default: 5)")
    g.add_argument("--weight_decay", default=0.05, type=float, help="AdamW weight decay on all parameters (default: 0.05)")
    g.add_argument("--drop_path", default=0.2, type=float,
                   help="stochastic depth; ignored by the original (backbone rate 0), used only with --apply_drop_path true (default: 0.2)")
    g.add_argument("--output_dir", default="./output", type=str, help="output folder (default: ./output)")
    g.add_argument("--device", default="cuda", type=str, help="device; cuda without a GPU falls back to CPU with a warning (default: cuda)")
    g.add_argument("--seed", default=42, type=int, help="seed (default: 42)")
    g.add_argument("--num_workers", default=8, type=int, help="DataLoader workers (default: 8)")

    g = p.add_argument_group("initial weights")
    g.add_argument("--finetune", default="", type=str, help="weights (.safetensors or torch checkpoint; its 'model' entry if present) (default: '')")
    g.add_argument("--model_prefix", default="", type=str, help="prefix removed from every checkpoint key (default: '')")
    g.add_argument("--model_mount", default="", type=str, help="prefix added to every key before loading (default: '')")

    g = p.add_argument_group("data")
    g.add_argument("--dual_view", default=True, type=str2bool, help="accepted for compatibility; the data is always dual-view (default: true)")
    g.add_argument("--train_list", default="annotations/DvXray_train.txt", type=str, help="training list (default: annotations/DvXray_train.txt)")
    g.add_argument("--val_list", default="annotations/DvXray_val.txt", type=str, help="validation list (default: annotations/DvXray_val.txt)")
    g.add_argument("--classes_file", default="annotations/classes.txt", type=str, help="class names, one per line (default: annotations/classes.txt)")
    g.add_argument("--num_classes", default=15, type=int, help="classes; label vectors must have this length (default: 15)")
    g.add_argument("--multi_label", default=True, type=str2bool, help="accepted for compatibility, no effect (default: true)")
    g.add_argument("--eval_threshold", default=0.5, type=float, help="probability threshold of acc1 and F1 (default: 0.5)")
    g.add_argument("--data_root", default="", type=str,
                   help="folder that relative image paths in the lists are joined to; '' = the working directory, as in the original (default: '')")

    g = p.add_argument_group("backbone features, fusion and head")
    g.add_argument("--return_intermediate", default=False, type=str2bool, help="model returns a dict with logits and features (default: false)")
    g.add_argument("--out_indices", default=[1, 2, 3], type=int, nargs="+", help="backbone stages kept, 1 2 3 = C3 C4 C5 (default: 1 2 3)")
    g.add_argument("--fuse_mode", default="concat", choices=FUSE_MODES, help="per-level view fusion; add is the paper's (default: concat)")
    g.add_argument("--fuse_levels", default=["C3", "C4", "C5"], type=str, nargs="+", help="levels fused (default: C3 C4 C5)")
    g.add_argument("--head_type", default="c5", choices=HEAD_TYPES, help="head; fpn_pan is the paper's (default: c5)")
    g.add_argument("--attention_config", default=None, type=str,
                   help='JSON attention per neck output, e.g. \'{"N3":"coordatt_u"}\'; a value is a name, a list (sequential) or {"parallel": [...]} (default: none)')
    g.add_argument("--xattn_heads", default=4, type=int, help="heads of --fuse_mode xattn (default: 4)")
    g.add_argument("--xattn_reduction", default=4, type=int, help="key/value pooling of --fuse_mode xattn (default: 4)")
    g.add_argument("--fpn_out_channels", default=256, type=int, help="neck width (default: 256)")
    g.add_argument("--patience", default=0, type=int, help="early stopping on val mAP after this many epochs without improvement; 0 disables (default: 0)")
    g.add_argument("--ahcr_mode", default="intra_level", choices=("intra_level", "inter_level"), help="for --fuse_mode ahcr (default: intra_level)")
    g.add_argument("--batch_views", default=True, type=str2bool,
                   help="run both views through the shared backbone in one batched pass (same result as two passes) (default: true)")

    g = p.add_argument_group("teacher / EMA")
    g.add_argument("--teacher_mode", default=True, type=str2bool, help="keep a parameter EMA and validate (and select) with it (default: true)")
    g.add_argument("--ema_decay", default=0.9999, type=float, help="EMA decay per optimisation step (default: 0.9999)")
    g.add_argument("--ema_device", default="cpu", type=str, help="device of the EMA copy (default: cpu)")
    g.add_argument("--ema_buffers", default=False, type=str2bool,
                   help="also average BatchNorm buffers in the EMA copy; the original leaves them at their initial values (default: false)")
    g.add_argument("--fsdp_cpu_offload", default=False, type=str2bool, help="accepted for compatibility, no effect (default: false)")

    g = p.add_argument_group("resume")
    g.add_argument("--resume", default="", type=str, help="checkpoint file, or folder (checkpoint_last.pth, else checkpoint_best.pth) (default: '')")
    g.add_argument("--resume_epoch", default=-1, type=int, help="if >= 0, the epoch to continue at (default: -1)")
    g.add_argument("--resume_optimizer", default=True, type=str2bool, help="restore the optimiser state (default: true)")
    g.add_argument("--resume_scheduler", default=True, type=str2bool, help="accepted for compatibility; schedules are stateless (default: true)")

    g = p.add_argument_group("distillation (not implemented: the original deleted its implementation)")
    g.add_argument("--use_distillation", default=False, type=str2bool, help="must stay false: distillation is not implemented (default: false)")
    g.add_argument("--teacher_model", default="convnext_small", type=str, help="distillation only (default: convnext_small)")
    g.add_argument("--teacher_weights", default="", type=str, help="distillation only (default: '')")
    g.add_argument("--kd_mode", default="logits", choices=("logits", "dkd"), help="distillation only (default: logits)")
    g.add_argument("--distillation_alpha", default=0.5, type=float, help="distillation only (default: 0.5)")
    g.add_argument("--distillation_tau", default=2.0, type=float, help="distillation only (default: 2.0)")
    g.add_argument("--distill_feature_layers", default=None, type=str, nargs="+", help="distillation only (default: none)")
    g.add_argument("--distillation_beta", default=0.0, type=float, help="distillation only (default: 0.0)")
    g.add_argument("--dkd_alpha", default=1.0, type=float, help="distillation only (default: 1.0)")
    g.add_argument("--dkd_beta", default=8.0, type=float, help="distillation only (default: 8.0)")

    g = p.add_argument_group("loss")
    g.add_argument("--base_loss", default="bce", choices=BASE_LOSSES, help="criterion; mcb_convex is the paper's (default: bce)")
    g.add_argument("--focal_gamma", default=2.0, type=float, help="focal (default: 2.0)")
    g.add_argument("--focal_alpha", default=None, type=float, help="focal; none = no alpha term (default: none)")
    g.add_argument("--fals_eps", default=0.1, type=float, help="fals (default: 0.1)")
    g.add_argument("--fals_gamma", default=2.0, type=float, help="fals (default: 2.0)")
    g.add_argument("--mcb_momentum", default=0.9, type=float, help="mcb, mcb_convex: EMA momentum of the class weights (default: 0.9)")
    g.add_argument("--mcb_tau", default=1.0, type=float, help="mcb_convex softmax temperature; not passed to mcb (default: 1.0)")
    g.add_argument("--mcb_wmin", default=1e-3, type=float, help="mcb_convex weight floor (default: 1e-3)")
    g.add_argument("--ge_lambda", default=0.1, type=float, help="gebce (default: 0.1)")
    g.add_argument("--ge_pos_only", default=True, type=str2bool, help="gebce (default: true)")
    g.add_argument("--ge_alpha", default=0.75, type=float, help="gebce (default: 0.75)")
    g.add_argument("--ge_ema", default=True, type=str2bool, help="gebce (default: true)")
    g.add_argument("--ge_momentum", default=0.9, type=float, help="gebce (default: 0.9)")
    g.add_argument("--ge_band", default=0.0, type=float, help="gebce (default: 0.0)")
    g.add_argument("--ge_trainable", default=False, type=str2bool, help="gebce: learnable lambda (default: false)")
    g.add_argument("--dals_eps", default=0.1, type=float, help="dals (default: 0.1)")
    g.add_argument("--dals_gamma", default=2.0, type=float, help="dals (default: 2.0)")

    g = p.add_argument_group("augmentation")
    g.add_argument("--aug_mode", default="standard", choices=AUG_MODES, help="training transforms (default: standard)")
    g.add_argument("--rand_aug_n", default=2, type=int, help="RandAugment ops (default: 2)")
    g.add_argument("--rand_aug_m", default=9, type=int, help="RandAugment magnitude (default: 9)")

    g = p.add_argument_group("evaluation CSV (no effect during training, as in the original)")
    g.add_argument("--eval_csv", default="", type=str, help="accepted for compatibility, no effect (default: '')")
    g.add_argument("--eval_csv_sort_classes", default=False, type=str2bool, help="accepted for compatibility (default: false)")
    g.add_argument("--eval_csv_topk", default=0, type=int, help="accepted for compatibility (default: 0)")

    g = p.add_argument_group("corrections and run options (not in the original)")
    g.add_argument("--use_scheduler", default=False, type=str2bool,
                   help="per-iteration warm-up (--warmup_epochs) + cosine to --min_lr; the original keeps the LR constant (default: false)")
    g.add_argument("--apply_drop_path", default=False, type=str2bool, help="build the backbone with --drop_path (default: false)")
    add_amp_flag(g, default="auto", help="autocast: auto = bf16 where supported else fp16, as the original; CPU always bf16")
    add_compile_flag(g)
    add_channels_last_flag(g)
    g.add_argument("--sort_training_log", default=True, type=str2bool,
                   help="re-sort training_log.csv by val_metric at the end, as the original (default: true)")
    g.add_argument("--plots", default=True, type=str2bool,
                   help="draw the run's pictures at the end (curves, per-class AP, CoordAtt-U overlays; python -m common.plots) (default: true)")
    g.add_argument("--summary_csv", default=SUMMARY_CSV, type=str,
                   help=f"per-run summary CSV appended at the end; a relative path is under --output_dir (the original wrote it in the working directory) (default: {SUMMARY_CSV})")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible combinations and warn about compatibility-only flags."""
    if args.use_distillation:
        parser.error("--use_distillation true: distillation is not implemented (the original deleted models/modules/distillation)")
    for name in ("dual_view", "multi_label", "fsdp_cpu_offload", "resume_scheduler", "eval_csv",
                 "eval_csv_sort_classes", "eval_csv_topk", "teacher_model", "teacher_weights", "kd_mode",
                 "distillation_alpha", "distillation_tau", "distill_feature_layers", "distillation_beta",
                 "dkd_alpha", "dkd_beta"):
        warn_unused_flag(parser, args, name, "has no effect (as in the original)")
    if not args.use_scheduler:
        for name in ("warmup_epochs", "min_lr"):
            warn_unused_flag(parser, args, name, "is ignored like in the original; add --use_scheduler true to use it")
    if not args.apply_drop_path:
        warn_unused_flag(parser, args, "drop_path", "is ignored like in the original; add --apply_drop_path true to use it")
    for name in ("batch_size", "epochs", "input_size", "num_classes", "fpn_out_channels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.patience < 0:
        parser.error(f"--patience must be >= 0, got {args.patience}")


def loss_params_from_args(args: argparse.Namespace) -> LossParams:
    return LossParams(**{f: getattr(args, f) for f in LossParams.__dataclass_fields__})


def _finish_outputs(args: argparse.Namespace, run: RunDir, summary: dict[str, Any], class_names: list[str],
                    monitor_key: str, total_params_m: float, *, trained: bool = True) -> None:
    out = Path(args.output_dir)
    log = run.csv("training_log.csv", CSV_COLUMNS)
    if args.sort_training_log:
        rows = log.read_rows()
        rows.sort(key=lambda r: float(r["val_metric"]) if r.get("val_metric") not in (None, "") else -1.0, reverse=True)
        log.rewrite(rows)
    ap_key = "per_class_ap" + ("_ema" if monitor_key.endswith("_ema") else "")
    best_ap = summary.get("best", {}).get(ap_key) or [0.0] * len(class_names)
    per_class = run.csv("per_class_ap_best.csv", ["class", "AP"])
    per_class.rewrite([{"class": c, "AP": f"{a:.4f}"} for c, a in zip(class_names, best_ap)])
    summary_path = Path(args.summary_csv)
    if not summary_path.is_absolute():
        summary_path = out / summary_path
    columns = ["output_dir", "model", "aug_mode", "fuse_mode", "ahcr_mode", "attention_config", "best_metric_name",
               "best_metric_value", "total_params_M", "batch_size", "learning_rate"]
    columns += [f"AP_{c.replace(' ', '_')}" for c in class_names]
    row = {"output_dir": args.output_dir, "model": args.model, "aug_mode": args.aug_mode, "fuse_mode": args.fuse_mode,
           "ahcr_mode": args.ahcr_mode, "attention_config": args.attention_config or "",
           # the original names the metric "mAP" whether the live model or the EMA copy was validated
           "best_metric_name": "mAP", "best_metric_value": summary.get("best", {}).get(summary["monitor"]),
           "total_params_M": f"{total_params_m:.3f}", "batch_size": args.batch_size, "learning_rate": args.lr}
    row.update({f"AP_{c.replace(' ', '_')}": f"{a:.4f}" for c, a in zip(class_names, best_ap)})
    from common.run import CsvLog

    log = CsvLog(summary_path, columns, enabled=run.is_primary)
    # resuming a finished run trains nothing: its row is already there (unless a kill came before it)
    if trained or not any(r.get("output_dir") == str(args.output_dir) for r in log.read_rows()):
        log.append(row)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the parsed flags; returns the content of ``metrics.json``."""
    if args.use_distillation:
        raise ValueError("--use_distillation true: distillation is not implemented")
    ctx = init_distributed(args.device)
    run = RunDir(args.output_dir, args, ctx)
    out_dir = Path(args.output_dir)
    seed_everything(args.seed + ctx.rank)

    class_names = read_classes(args.classes_file, args.num_classes)
    policy = TrainTransformPolicy(args.aug_mode, args.input_size, class_names, epochs=args.epochs,
                                  rand_aug_n=args.rand_aug_n, rand_aug_m=args.rand_aug_m,
                                  classes_file=args.classes_file)
    dataset_train = build_dataset(args.train_list, num_classes=args.num_classes, train=True,
                                  input_size=args.input_size, policy=policy, data_root=args.data_root)
    dataset_val = build_dataset(args.val_list, num_classes=args.num_classes, train=False,
                                input_size=args.input_size, data_root=args.data_root)
    data_loader_train = build_loader(dataset_train, args.batch_size, train=True, ctx=ctx,
                                     num_workers=args.num_workers, seed=args.seed)
    data_loader_val = build_loader(dataset_val, args.batch_size, train=False, ctx=ctx, num_workers=args.num_workers)
    _logger.info("train pairs %d (%d iterations/epoch), val pairs %d", len(dataset_train), len(data_loader_train),
                 len(dataset_val))

    model, signal = build_model_from_args(args)
    warnings: list[str] = []
    if args.finetune:
        load_finetune_weights(model, args.finetune, model_prefix=args.model_prefix, model_mount=args.model_mount,
                              report_dir=out_dir)
    else:
        warnings.append(random_init_warning("--finetune", args.model, "a ConvNeXt-V2 checkpoint converted by "
                                            "convert_all_no_head.sh"))
    criterion = build_base_criterion(args.base_loss, loss_params_from_args(args), signal)
    task = DvXrayTask(model, criterion).to(ctx.device)
    total_m, trainable_m = count_params(model)
    _logger.info("model %s: %.3fM parameters (%.3fM trainable)", args.model, total_m, trainable_m)

    ema = None
    if args.teacher_mode:
        ema = ModelEma(model, args.ema_decay, device=args.ema_device, include_buffers=args.ema_buffers)
    # AdamW over every parameter, no exclusion groups (as the original)
    optimizer = build_optimizer("adamw", task.parameters(), args.lr, args.weight_decay)
    iters = updates_per_epoch(data_loader_train)
    if args.use_scheduler:
        schedule = WarmupCosineSchedule(args.lr, args.epochs * iters, args.warmup_epochs * iters, args.min_lr)
    else:
        schedule = ConstantSchedule(args.lr)

    # split_manifest.json + the split check now; predictions.csv of the epoch reported as best (fit)
    ids_train = [relative_id(r.paths[0], args.data_root) for r in dataset_train.records]
    ids_val = [relative_id(r.paths[0], args.data_root) for r in dataset_val.records]
    recorder = start_recording(out_dir, {"train": {"ids": ids_train}, "val": {"ids": ids_val}},
                               writer=PredictionWriter(ids_val, class_names=class_names), protocol="official",
                               dataset="dvxray", is_primary=ctx.is_primary)
    monitor_key = "val_mAP_ema" if args.teacher_mode else "val_mAP"
    config = FitConfig(
        epochs=args.epochs, output_dir=out_dir, amp=args.amp, monitor="mAP",
        patience=args.patience if args.patience > 0 else None,
        eval_ema=args.teacher_mode, select_on_ema=args.teacher_mode, eval_live=not args.teacher_mode,
        resume=args.resume or None, resume_optimizer=args.resume_optimizer,
        resume_start_epoch=args.resume_epoch if args.resume_epoch >= 0 else None,
        csv_name="training_log.csv", csv_columns=CSV_COLUMNS, class_names=class_names,
        # the PAN's N4/N5 outputs and the backbone's final norm are built (as in the original) but the
        # classifier reads N3 only, so DDP must tolerate parameters without gradients
        find_unused_parameters=True, compile=args.compile, channels_last=args.channels_last, warnings=warnings,
        recorder=recorder, preprocessing=preprocessing_from_args(args, class_names),
    )
    epochs_trained = EpochCounter()
    callbacks = [TrainingLogCallback(args.epochs, monitor_key),
                 AugmentationCallback(policy, "per_class_ap_ema" if args.teacher_mode else "per_class_ap"),
                 epochs_trained]
    summary = fit(task, optimizer, data_loader_train, config=config, ctx=ctx, run=run, schedule=schedule,
                  data_loader_val=data_loader_val, metric_fn=make_metric_fn(args.eval_threshold, class_names),
                  ema=ema, callbacks=callbacks, args=args)
    if ctx.is_primary:
        _finish_outputs(args, run, summary, class_names, monitor_key, total_m, trained=epochs_trained.count > 0)
        if args.plots:
            from common.plots import plot_run_at_end

            plot_run_at_end(args.output_dir, "dvxray")
    return summary


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(parents=[get_args_parser()])
    _args = _parser.parse_args()
    check_args(_parser, _args)
    run_main(main, _args)
