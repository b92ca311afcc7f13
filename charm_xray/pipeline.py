"""``train.py``'s pipeline: phase 1 (BCE, lr_find, fine_tune), phase 2 (asymmetric loss, one-cycle),
test (ROC-AUC), for one setting or the notebooks' grid (charm_xray.md §6).

Output folder (``--output_dir``, the original's ``/kaggle/working``)::

    models/phase1_<exp>.pth, models/final_<exp>.pth      weights + optimizer ({"model", "opt", ...})
    training_results.csv                                  mean_auc, class_auc, training_time, exp_name
    parameter_search_results/grid_search_results.csv      momentum, k, threshold, mean_auc, ... error,
                                                          fingerprint: one row per setting, kept across
                                                          invocations (the newest row of a setting wins)
    parameter_search_results/grid_search_results.fingerprint.json   the flags and inputs its rows share
    parameter_search_results/heatmap_momentum_<m>.png     k x threshold AUC over all rows, one per momentum
    parameter_search_results/preds_<exp>.pt               test probabilities and targets
    runs/<exp>/                                           log, split report, lr_find.png, one folder per
                                                          fit (phase1_freeze, phase1, phase2), test
                                                          metrics.json (common schema), roc_curves.png,
                                                          fingerprint.json (what the folder was made with)

A setting's folder (``runs/<exp>/``: its finished result, finished stages, lr_find result, a killed stage's
checkpoints) is reused only when its ``fingerprint.json`` equals this run's (:func:`setting_fingerprint`);
otherwise the run stops before any work with one error naming the differing flags (``--overwrite``
discards the old folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from charm_xray import config
from charm_xray.data import SplitPlan, build_dataset, load_table, make_split
from charm_xray.engine_charm import (
    CharmTask,
    StageSettings,
    build_fastai_adam,
    fit_one_cycle,
    save_model_file,
    set_frozen,
)
from charm_xray.losses import ChestXrayLoss
from charm_xray.models import build_model
from common.checkpoint import atomic_save, atomic_write_text
from common.cli import resolve_amp
from common.data.formats.chestxray14 import CSV_NAME, TEST_LIST, TRAIN_VAL_LIST
from common.dist import DistContext, init_distributed
from common.engine import build_loader, collect_outputs
from common.fingerprint import (
    FINGERPRINT_FILE,
    Fingerprint,
    FingerprintMismatch,
    check,
    make_fingerprint,
    overwrite_ways,
    read_fingerprint,
    remove_paths,
    write_fingerprint,
)
from common.lr_find import lr_find, plot_lr_find, suggest
from common.metrics.multilabel import roc_auc_per_class
from common.predictions import (
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    EvalRecorder,
    PredictionWriter,
    loader_order,
    start_recording,
)
from common.pretrained import add_protocol_warnings, random_init_warning
from common.run import CsvLog, RunDir
from common.seed import seed_everything

_logger = logging.getLogger(__name__)
FINISHED = "_FINISHED"
TRAINING_RESULTS_COLUMNS = ["mean_auc", "class_auc", "training_time", "exp_name"]
GRID_COLUMNS = ["momentum", "k", "threshold", "mean_auc", "class_auc", "training_time", "exp_name", "error",
                "fingerprint"]
GRID_CSV = "grid_search_results.csv"
GRID_FINGERPRINT = "grid_search_results.fingerprint.json"

# Flags left out of a setting's fingerprint: they do not change its result, or they stand for something
# recorded otherwise.
FINGERPRINT_EXCLUDED = (
    "output_dir", "exp_name",  # where the result goes: they name the folder that is checked
    "overwrite",  # what to do with an old result
    # how it is computed: the same math on another device, with other loader processes, compiled or NHWC
    # (equal up to float rounding)
    "device", "num_workers", "compile", "channels_last",
    "no_progress", "plots", "keep_stage_checkpoints",  # what is shown, drawn or kept afterwards
    "momentum_values", "k_values", "threshold_values",  # the grid: a setting records its own m, k, threshold
    "data_dir", "pretrained_weights",  # paths: the files' SHA-256 are recorded instead (a moved folder is the same)
)
SETTING_FLAGS = ("momentum", "retrieval_k", "rarity_threshold")  # what differs between a grid's settings


def exp_name_for(momentum: float, k: int, threshold: float) -> str:
    """The notebooks' experiment name ``m{momentum}_k{k}_t{threshold}``."""
    return f"m{momentum}_k{k}_t{threshold}"


def grid_settings(args: argparse.Namespace) -> list[tuple[float, int, float]] | None:
    """(momentum, k, threshold) for each grid setting, or None without grid flags."""
    if args.momentum_values is None and args.k_values is None and args.threshold_values is None:
        return None
    ms = args.momentum_values or [args.momentum]
    ks = args.k_values or [args.retrieval_k]
    ts = args.threshold_values or [args.rarity_threshold]
    return list(itertools.product(ms, ks, ts))


def build_loss(args: argparse.Namespace, loss_type: str) -> nn.Module:
    return ChestXrayLoss(loss_type, focal_alpha=args.focal_alpha, focal_gamma=args.focal_gamma,
                         asymmetric_gamma_neg=args.gamma_neg, asymmetric_gamma_pos=args.gamma_pos,
                         focal_ignore_kwargs=args.focal_ignore_kwargs, asymmetric_clip=args.clip,
                         asl_variant=args.asl_variant)


def build_model_from_args(args: argparse.Namespace, momentum: float, k: int, threshold: float) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if args.model_name != "vgg16_lka":
        kwargs = {"momentum": momentum, "attention_reduction": args.attention_reduction, "bank_size": args.bank_size,
                  "rarity_threshold": threshold, "retrieval_k": k, "dropout_rate": args.dropout_rate,
                  "hidden_dim": args.hidden_dim, "memory_select": args.memory_select,
                  "memory_wrap": args.memory_wrap, "exclusion_tol": args.exclusion_tol}
    return build_model(args.model_name, len(config.DISEASE_LABELS), pretrained_weights=args.pretrained_weights,
                       **kwargs)


def _loaders(args: argparse.Namespace, split, batch_size: int, ctx: DistContext, seed: int):
    size = args.image_size
    train = build_loader(build_dataset(split.train, size, train=True), batch_size, train=True, ctx=ctx,
                         num_workers=args.num_workers, seed=seed)
    valid = build_loader(build_dataset(split.valid, size, train=False), batch_size, train=False, ctx=ctx,
                         num_workers=args.num_workers)
    return train, valid


def _settings(args: argparse.Namespace) -> StageSettings:
    return StageSettings(amp=args.amp, min_delta=args.min_delta, patience=args.patience if args.patience > 0 else None,
                         with_opt=True, discriminative_lr=args.discriminative_lr,
                         class_names=config.DISEASE_LABELS, progress=not args.no_progress, seed=args.seed,
                         compile=args.compile, channels_last=args.channels_last)


def _find_lr(args: argparse.Namespace, task: CharmTask, optimizer, loader, exp_dir: Path, ctx: DistContext) -> float:
    """``--lr`` when given, else fastai's valley suggestion (saved, so a resumed run reuses it: the setting's
    fingerprint was checked before), falling back to ``--lr_fallback`` as the original when the range test
    gives nothing usable."""
    if args.lr is not None:
        return args.lr
    saved = exp_dir / "lr_find.json"
    if saved.is_file():
        return float(json.loads(saved.read_text())["lr"])
    seed_everything(args.seed + 1000 + ctx.rank)
    lrs, losses = lr_find(task, optimizer, loader, device=ctx.device, start_lr=args.lr_find_start,
                          end_lr=args.lr_find_end, num_it=args.lr_find_iters,
                          amp_dtype=resolve_amp(args.amp, ctx.device))
    try:
        lr = suggest(lrs, losses, args.lr_find_iters, "valley")
        how = "valley"
    except ValueError as err:
        lr, how = args.lr_fallback, f"fallback ({err})"
    if not math.isfinite(lr) or lr <= 0:
        lr, how = args.lr_fallback, "fallback (non-finite suggestion)"
    if ctx.distributed:  # every rank trains with rank 0's suggestion
        value = torch.tensor([lr], dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
        torch.distributed.broadcast(value, src=0)
        lr = float(value.item())
    _logger.info("lr_find: %d points, suggested lr %.4g (%s)", len(lrs), lr, how)
    if ctx.is_primary:
        plot_lr_find(lrs, losses, exp_dir / "lr_find.png", suggestion=lr, title=f"lr_find ({how})")
        atomic_write_text(json.dumps({"lr": lr, "how": how, "lrs": lrs, "losses": losses}) + "\n", saved)
    return lr


def train_phases(args: argparse.Namespace, plan: SplitPlan, exp_name: str, momentum: float, k: int, threshold: float,
                 ctx: DistContext, exp_dir: Path) -> tuple[nn.Module, float]:
    """Phase 1 and phase 2; returns the final model and the phase-1 learning rate."""
    out = Path(args.output_dir)
    settings = _settings(args)
    seed_everything(args.seed + ctx.rank)
    model = build_model_from_args(args, momentum, k, threshold).to(ctx.device)
    split_body = args.freeze_backbone or args.discriminative_lr

    # phase 1: BCE, batch 64, lr_find valley, fine_tune(freeze_epochs, epochs, base_lr)
    task = CharmTask(model, build_loss(args, args.phase1_loss)).to(ctx.device)
    optimizer = build_fastai_adam(model, 1e-3, weight_decay=args.weight_decay, split=split_body)
    train1, valid1 = _loaders(args, plan.phase1, args.batch_size_phase1, ctx, args.seed)
    base_lr = _find_lr(args, task, optimizer, train1, exp_dir, ctx)
    if args.freeze_backbone:
        set_frozen(model, True)
    if args.freeze_epochs > 0:
        fit_one_cycle(exp_dir / "phase1_freeze", task, optimizer, train1, valid1, epochs=args.freeze_epochs,
                      lr=(None, base_lr), settings=settings, ctx=ctx, pct_start=0.99, stage_seed=1, args=args)
    base_lr /= 2
    set_frozen(model, False)
    if args.phase1_epochs > 0:
        fit_one_cycle(exp_dir / "phase1", task, optimizer, train1, valid1, epochs=args.phase1_epochs,
                      lr=(base_lr / args.lr_mult, base_lr), settings=settings, ctx=ctx, pct_start=0.3, div=5.0,
                      stage_seed=2, args=args)
    if ctx.is_primary:
        save_model_file(out / "models" / f"phase1_{exp_name}.pth", task, optimizer, args, lr=base_lr * 2)

    # phase 2: asymmetric loss, batch 128, the phase-1 weights (and, as fastai's learn.load, its optimizer
    # state), unfreeze, fit_one_cycle(5, slice(2e-5, 8e-5))
    task = CharmTask(model, build_loss(args, args.phase2_loss)).to(ctx.device)
    optimizer2 = build_fastai_adam(model, args.phase2_lr_max, weight_decay=args.weight_decay, split=split_body)
    if args.phase2_load_optimizer:
        optimizer2.load_state_dict(optimizer.state_dict())
    train2, valid2 = _loaders(args, plan.phase2, args.batch_size_phase2, ctx, args.seed + 1)
    if args.phase2_epochs > 0:
        fit_one_cycle(exp_dir / "phase2", task, optimizer2, train2, valid2, epochs=args.phase2_epochs,
                      lr=(args.phase2_lr_min, args.phase2_lr_max), settings=settings, ctx=ctx, stage_seed=3,
                      args=args)
    if ctx.is_primary:
        save_model_file(out / "models" / f"final_{exp_name}.pth", task, optimizer2, args)
    return model, base_lr * 2


@torch.no_grad()
def predict_probabilities(model: nn.Module, frame, args: argparse.Namespace, batch_size: int,
                          ctx: DistContext, *, save_to: Path | None = None,
                          recorder: EvalRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores and targets over ``frame`` (evaluation mode: the bank is read, never written).
    With ``recorder``, the primary rank also writes them (``save_to``: the predictions file)."""
    loader = build_loader(build_dataset(frame, args.image_size, train=False), batch_size, train=False, ctx=ctx,
                          num_workers=args.num_workers)
    out = collect_outputs(model, loader, predict_fn=lambda m, b: {"logits": m(b[0]), "target": b[1]}, ctx=ctx,
                          amp_dtype=resolve_amp(args.amp, ctx.device))
    probs = torch.sigmoid(out["logits"])
    if recorder is not None and save_to is not None:
        order = loader_order(loader, ctx)
        if ctx.is_primary:  # the very probabilities the AUCs are computed from
            writer = PredictionWriter(frame["Image_Index"].tolist(), class_names=config.DISEASE_LABELS,
                                      groups={"patient": frame["Patient_ID"].astype(str).tolist()},
                                      score_key="probs", activation="none")
            recorder.save(save_to.parent, {"probs": probs, "target": out["target"]}, order, name=save_to.name,
                          writer=writer)
    return probs, out["target"]


def split_levels(plan: SplitPlan) -> dict[str, dict[str, list[str]]]:
    """The plan's splits for the split manifest / check: image (Image_Index) and patient ids."""
    frames = {"phase1_train": plan.phase1.train, "phase1_valid": plan.phase1.valid,
              "phase2_train": plan.phase2.train, "phase2_valid": plan.phase2.valid, "test": plan.phase2.test}
    return {name: {"ids": f["Image_Index"].tolist(), "patient": f["Patient_ID"].astype(str).tolist()}
            for name, f in frames.items()}


def allowed_overlaps(protocol: str) -> list[dict[str, Any]]:
    """What each protocol allows (counted, not refused): both protocols train phase 2 on phase 1's images;
    ``charm_notebook`` is the paper's protocol, leak included (quirk 12: phase-2 test patients trained on in
    phase 1; fastai's RandomSplitter splits train / valid by image, not patient); ``official`` must show none."""
    phases = [{"splits": [a, b], "levels": ["image", "patient"], "reason": "phase 2 re-uses phase 1's data"}
              for a in ("phase1_train", "phase1_valid") for b in ("phase2_train", "phase2_valid")]
    if protocol != "charm_notebook":
        return phases
    leak = "charm_notebook protocol (the paper's): phase 1 trained on patients phase 2 tests on (quirk 12)"
    by_image = "charm_notebook protocol: fastai RandomSplitter splits train / valid by image, not by patient"
    return phases + [
        {"splits": ["phase1_train", "test"], "levels": ["image", "patient"], "reason": leak},
        {"splits": ["phase1_valid", "test"], "levels": ["image", "patient"], "reason": leak},
        {"splits": ["phase1_train", "phase1_valid"], "levels": ["patient"], "reason": by_image},
        {"splits": ["phase2_train", "phase2_valid"], "levels": ["patient"], "reason": by_image},
    ]


def auc_report(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """``roc_auc_score(y, p)`` (macro) and the per-class AUCs, as the original prints them."""
    per_class = roc_auc_per_class(probs, targets)
    defined = [float(v) for v in per_class if not math.isnan(v)]
    mean = sum(defined) / len(defined) if defined else float("nan")
    return {"auc": mean, "mean_class_auc": mean,
            "per_class_auc": [None if math.isnan(v) else float(v) for v in per_class],
            "undefined_classes": [c for c, v in zip(config.DISEASE_LABELS, per_class) if math.isnan(v)]}


def plot_roc_curves(probs: torch.Tensor, targets: torch.Tensor, path: Path, title: str) -> Path:
    """One ROC curve per class with its AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from common.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 6))
    y, p = targets.numpy(), probs.numpy()
    for c, name in enumerate(config.DISEASE_LABELS):
        if 0 < y[:, c].sum() < len(y):
            fpr, tpr, _ = roc_curve(y[:, c], p[:, c])
            ax.plot(fpr, tpr, lw=1, label=f"{name} ({roc_auc_per_class(p[:, c:c + 1], y[:, c:c + 1])[0]:.3f})")
    drawn = bool(ax.lines)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    else:  # no class has both labels in this test set: say so instead of an empty legend
        ax.text(0.5, 0.5, "ROC undefined: no class has both positive and negative test images",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
    fig.tight_layout()
    return save_figure(fig, path)


def test_metrics_json(report: dict[str, Any], plan_report: dict[str, Any], protocol: str, exp_name: str,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metrics.json`` in the common schema (``best`` = ``final`` = the test scores)."""
    section = {k: report[k] for k in ("auc", "mean_class_auc", "per_class_auc")}
    return {"monitor": "auc", "monitor_mode": "max", "best_epoch": None, "best": section, "final": section,
            "class_names": list(config.DISEASE_LABELS), "dataset": "chestxray14", "exp_name": exp_name,
            "protocol": {"split": protocol, "test_images": plan_report.get("test_subset_images"),
                         "metric": "sklearn roc_auc_score macro (mean of per-class AUCs)",
                         "warnings": plan_report.get("warnings", [])},
            "undefined_classes": report["undefined_classes"], **(extra or {})}


# ----------------------------------------------------------------------------------------------
# reuse: fingerprints of settings and of the grid table


def setting_fingerprint(args: argparse.Namespace, momentum: float, k: int, threshold: float) -> Fingerprint:
    """What determines one setting's result: the flags (without ``FINGERPRINT_EXCLUDED``, with the setting's
    own momentum, k and threshold) and the SHA-256 of the data CSV, the two split lists and the weights."""
    data = Path(args.data_dir)
    inputs: dict[str, Any] = {f"--data_dir {name}": data / name for name in (CSV_NAME, TRAIN_VAL_LIST, TEST_LIST)}
    inputs["--pretrained_weights"] = args.pretrained_weights
    return make_fingerprint(args, exclude=FINGERPRINT_EXCLUDED, inputs=inputs,
                            values={"momentum": momentum, "retrieval_k": k, "rarity_threshold": threshold})


def setting_artefacts(out: Path, exp_name: str) -> list[Path]:
    """What ``--overwrite`` discards for one setting: its run folder, saved models and test predictions."""
    models = out / config.MODEL_PATHS["model_save_dir"]
    return [out / "runs" / exp_name, models / f"phase1_{exp_name}.pth", models / f"final_{exp_name}.pth",
            out / config.MODEL_PATHS["results_dir"] / f"preds_{exp_name}.pt"]


def _reusable(exp_dir: Path) -> bool:
    """True when a setting's folder holds something a rerun would reuse (a finished result, the lr_find
    suggestion, a finished stage or a stage checkpoint to resume from)."""
    if not exp_dir.is_dir():
        return False
    return (any((exp_dir / name).exists() for name in (FINISHED, "result.json", "lr_find.json"))
            or any(exp_dir.glob("*/stage_done.json")) or any(exp_dir.glob("*/checkpoint_*.pth")))


def _row_digest(shared: Fingerprint, row: dict[str, str]) -> str | None:
    """The fingerprint a grid row must carry: ``shared`` with the row's own momentum, k and threshold."""
    try:
        setting = {"momentum": float(row["momentum"]), "retrieval_k": int(row["k"]),
                   "rarity_threshold": float(row["threshold"])}
    except (KeyError, TypeError, ValueError):
        return None
    return Fingerprint({**shared.args, **setting}, dict(shared.inputs)).digest()


def check_reuse(args: argparse.Namespace, out: Path, runs: list[tuple[str, float, int, float]], grid: bool,
                ctx: DistContext) -> dict[str, Fingerprint]:
    """Before any work: each setting's fingerprint, checked against the folder a rerun would reuse and, for a
    grid, against the rows of ``grid_search_results.csv`` (which its table and heat maps are drawn from).
    A mismatch (or an old artefact without a fingerprint) raises ``FingerprintMismatch``; with
    ``--overwrite`` the artefacts are discarded instead. Returns setting name -> fingerprint."""
    place = "--output_dir" if grid else "--exp_name or --output_dir"
    fingerprints: dict[str, Fingerprint] = {}
    discard: list[Path] = []
    for name, momentum, k, threshold in runs:
        fp = fingerprints[name] = setting_fingerprint(args, momentum, k, threshold)
        exp_dir = out / "runs" / name
        if args.overwrite:
            discard += setting_artefacts(out, name)
        elif _reusable(exp_dir):
            what = f"{'grid setting' if grid else '--exp_name'} {name} ({exp_dir})"
            check(read_fingerprint(exp_dir / FINGERPRINT_FILE), fp, what=what, ways=overwrite_ways(place))
    if grid:
        results_dir = out / config.MODEL_PATHS["results_dir"]
        table = results_dir / GRID_CSV
        rows = CsvLog(table).read_rows()
        shared = next(iter(fingerprints.values())).without(SETTING_FLAGS)
        recorded = read_fingerprint(results_dir / GRID_FINGERPRINT)
        bad_row = next((r.get("exp_name", "?") for r in rows if r.get("fingerprint") != _row_digest(shared, r)), None)
        if rows and (recorded != shared or bad_row is not None):
            if args.overwrite:
                discard += [table, results_dir / GRID_FINGERPRINT, *results_dir.glob("heatmap_momentum_*.png")]
            else:
                ways = ("pass --overwrite to discard its rows and start the table again, or choose another "
                        "--output_dir")
                check(recorded, shared, what=f"{table} (the grid table this run adds its rows to)", ways=ways)
                raise FingerprintMismatch(f"{table}: row {bad_row} has no fingerprint or another one than the "
                                          f"table's, so it is not reused: {ways}")
    if discard and ctx.is_primary:
        _logger.info("--overwrite: discarding %s", ", ".join(str(p) for p in discard if p.exists()) or "nothing")
        remove_paths(discard)
    ctx.barrier()
    return fingerprints


def run_experiment(args: argparse.Namespace, plan: SplitPlan, exp_name: str, momentum: float, k: int,
                   threshold: float, ctx: DistContext, fingerprint: Fingerprint) -> dict[str, Any]:
    """One setting, end to end (a killed one resumes: :func:`check_reuse` checked its folder's fingerprint);
    returns its result row."""
    exp_dir = Path(args.output_dir) / "runs" / exp_name
    if ctx.is_primary:  # first, so that whatever this run leaves behind is fingerprinted
        exp_dir.mkdir(parents=True, exist_ok=True)
        write_fingerprint(exp_dir / FINGERPRINT_FILE, fingerprint)
    ctx.barrier()
    with RunDir(exp_dir, args, ctx):  # the setting's log.txt (train_log.txt keeps getting every line too)
        return _train_and_test(args, plan, exp_name, momentum, k, threshold, ctx, fingerprint, exp_dir)


def finished_result(out: Path, exp_name: str, fingerprint: Fingerprint) -> dict[str, Any] | None:
    """The result row of a finished setting (its fingerprint was checked by :func:`check_reuse`), else None."""
    exp_dir = out / "runs" / exp_name
    if (exp_dir / FINISHED).is_file() and (exp_dir / "result.json").is_file():
        _logger.info("%s: already finished with the same flags and inputs, reused", exp_name)
        return {**json.loads((exp_dir / "result.json").read_text()), "fingerprint": fingerprint.digest()}
    return None


def _train_and_test(args: argparse.Namespace, plan: SplitPlan, exp_name: str, momentum: float, k: int,
                    threshold: float, ctx: DistContext, fingerprint: Fingerprint, exp_dir: Path) -> dict[str, Any]:
    out = Path(args.output_dir)
    result_file = exp_dir / "result.json"
    if ctx.is_primary:
        atomic_write_text(json.dumps(plan.report, indent=2) + "\n", exp_dir / "split_report.json")
    recorder = start_recording(exp_dir, split_levels(plan), protocol=plan.protocol,
                               allowed=allowed_overlaps(plan.protocol), dataset="chestxray14",
                               is_primary=ctx.is_primary)
    for warning in plan.report.get("warnings", []):
        _logger.warning("%s", warning)
    init_warnings = [] if args.pretrained_weights else [
        random_init_warning("--pretrained_weights", args.model_name, "torchvision ImageNet weights")]
    t0 = time.time()
    model, lr = train_phases(args, plan, exp_name, momentum, k, threshold, ctx, exp_dir)
    # the validation predictions first (common.thresholds fits on them), then the test ones
    predict_probabilities(model, plan.phase2.valid, args, args.batch_size_test, ctx,
                          save_to=exp_dir / VAL_PREDICTIONS_FILE, recorder=recorder)
    probs, targets = predict_probabilities(model, plan.phase2.test, args, args.batch_size_test, ctx,
                                           save_to=exp_dir / PREDICTIONS_FILE, recorder=recorder)
    report = auc_report(probs, targets)
    training_time = time.time() - t0  # this process's share when resumed
    result = {"momentum": momentum, "k": k, "threshold": threshold, "mean_auc": report["auc"],
              "class_auc": dict(zip(config.DISEASE_LABELS, report["per_class_auc"])),
              "training_time": training_time, "exp_name": exp_name, "error": "",
              "fingerprint": fingerprint.digest()}
    _logger.info("%s: test ROC-AUC %.4f on %d images (%s split)", exp_name, report["auc"], len(targets),
                 plan.protocol)
    for name, value in result["class_auc"].items():
        _logger.info("  %-20s %s", name, "undefined" if value is None else f"{value:.4f}")
    if ctx.is_primary:
        results_dir = out / config.MODEL_PATHS["results_dir"]
        atomic_save({"preds": probs, "targets": targets, "class_names": list(config.DISEASE_LABELS)},
                    results_dir / f"preds_{exp_name}.pt")
        plot_roc_curves(probs, targets, exp_dir / "roc_curves.png", f"{exp_name}: test ROC (AUC {report['auc']:.4f})")
        metrics = test_metrics_json(report, plan.report, plan.protocol, exp_name,
                                    {"lr_phase1": lr, "momentum": momentum, "k": k, "threshold": threshold,
                                     "model_name": args.model_name, "image_size": args.image_size,
                                     "training_time": training_time, **recorder.metrics_entries()})
        add_protocol_warnings(metrics, init_warnings)
        atomic_write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n", exp_dir / "metrics.json")
        atomic_write_text(json.dumps(result, indent=2) + "\n", result_file)
        if args.plots:  # training curves, per-class AUC vs the paper, spatial-attention overlays
            from common.plots import plot_run_at_end

            plot_run_at_end(exp_dir, "charm_xray")
        atomic_write_text(time.strftime("%F %T") + "\n", exp_dir / FINISHED)
        if not args.keep_stage_checkpoints:  # models/phase1_*.pth and final_*.pth hold what is needed
            for stale in exp_dir.glob("*/checkpoint_*.pth"):
                stale.unlink()
    ctx.barrier()
    return result


def _fmt_auc(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def write_results(out: Path, results: list[dict[str, Any]], grid: bool, shared: Fingerprint | None = None) -> None:
    """Rewrite ``training_results.csv`` from this invocation's results; for a grid, merge them into
    ``grid_search_results.csv`` (one row per setting, kept across invocations, a setting's newest row wins;
    each row carries its setting's fingerprint, ``shared`` is what all rows share) and draw the heat maps
    from all its rows."""
    rows = [{"mean_auc": _fmt_auc(r["mean_auc"]), "class_auc": json.dumps(r["class_auc"]),
             "training_time": f"{r['training_time']:.1f}", "exp_name": r["exp_name"]} for r in results if not r["error"]]
    CsvLog(out / "training_results.csv", TRAINING_RESULTS_COLUMNS).rewrite(rows)
    if not grid:
        return
    results_dir = out / config.MODEL_PATHS["results_dir"]
    table = CsvLog(results_dir / GRID_CSV, GRID_COLUMNS)
    new = {r["exp_name"]: {"momentum": str(r["momentum"]), "k": str(r["k"]), "threshold": str(r["threshold"]),
                           "mean_auc": _fmt_auc(r["mean_auc"]),
                           "class_auc": json.dumps(r["class_auc"]) if r["class_auc"] else "",
                           "training_time": f"{r['training_time']:.1f}", "exp_name": r["exp_name"],
                           "error": r["error"], "fingerprint": r["fingerprint"]} for r in results}
    # rows of earlier invocations (check_reuse made sure they share this invocation's flags and inputs)
    merged = [new.pop(row["exp_name"], row) for row in table.read_rows()] + list(new.values())
    if shared is not None:
        write_fingerprint(results_dir / GRID_FINGERPRINT, shared)
    table.rewrite(merged)
    every = [{"momentum": float(r["momentum"]), "k": int(r["k"]), "threshold": float(r["threshold"]),
              "mean_auc": float(r["mean_auc"]) if r["mean_auc"] not in ("", None) else None, "error": r["error"]}
             for r in merged]
    for momentum in sorted({r["momentum"] for r in every}):
        plot_heatmap([r for r in every if r["momentum"] == momentum], momentum,
                     results_dir / f"heatmap_momentum_{momentum}.png")


def plot_heatmap(results: list[dict[str, Any]], momentum: float, path: Path) -> Path:
    """Test AUC over k (rows) x threshold (columns) for one momentum, as the notebooks plot it."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import numpy as np

    from common.plots import save_figure

    ks = sorted({r["k"] for r in results})
    ts = sorted({r["threshold"] for r in results})
    grid = np.full((len(ks), len(ts)), np.nan)
    ran = np.zeros((len(ks), len(ts)), dtype=bool)  # rows accumulate over invocations: a cell may not be run yet
    for r in results:
        ran[ks.index(r["k"]), ts.index(r["threshold"])] = True
        if not r["error"] and r["mean_auc"] is not None:
            grid[ks.index(r["k"]), ts.index(r["threshold"])] = r["mean_auc"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.2 * len(ts)), 1.4 + 0.8 * len(ks)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, j in itertools.product(range(len(ks)), range(len(ts))):
        text = ("failed" if ran[i, j] else "not run") if np.isnan(grid[i, j]) else f"{grid[i, j]:.4f}"
        bright = np.isnan(grid[i, j]) or grid[i, j] >= np.nanmean(grid)  # viridis is light at the top; NaN is blank
        ax.text(j, i, text, ha="center", va="center", color="k" if bright else "w", fontsize=9)
    ax.set_xticks(range(len(ts)), [str(t) for t in ts])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("rarity threshold")
    ax.set_ylabel("retrieval k")
    ax.set_title(f"test ROC-AUC, momentum {momentum}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def load_plan(args: argparse.Namespace) -> SplitPlan:
    """The data table and the phases' split (``--split``)."""
    plan = make_split(load_table(args.data_dir), args.split, seed=args.seed, valid_pct=args.valid_pct,
                      phase1_findings_only=args.phase1_findings_only)
    _logger.info("%s split: phase 1 %d train / %d valid, phase 2 %d train / %d valid, test %d images",
                 plan.protocol, len(plan.phase1.train), len(plan.phase1.valid), len(plan.phase2.train),
                 len(plan.phase2.valid), len(plan.phase2.test))
    return plan


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``train.py``: one setting (``--exp_name``) or the grid; returns each setting's result."""
    ctx = init_distributed(args.device)
    out = Path(args.output_dir)
    RunDir(out, args, ctx, log_name="train_log.txt")
    settings = grid_settings(args)
    grid = settings is not None
    if not grid:
        settings = [(args.momentum, args.retrieval_k, args.rarity_threshold)]
    names = [exp_name_for(*s) if grid else args.exp_name for s in settings]
    # before any work: a setting's old folder (and the grid table) is reused only when made the same way
    fingerprints = check_reuse(args, out, [(n, *s) for n, s in zip(names, settings)], grid, ctx)
    shared = fingerprints[names[0]].without(SETTING_FLAGS)
    plan = None  # read when a setting has to run: reusing finished ones reads no data
    results, failed = [], []
    for name, (momentum, k, threshold) in zip(names, settings):
        try:
            result = finished_result(out, name, fingerprints[name])
            if result is None:
                plan = plan or load_plan(args)
                result = run_experiment(args, plan, name, momentum, k, threshold, ctx, fingerprints[name])
            results.append(result)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # the notebooks record the error and go on with the next setting
            if not grid:
                raise
            _logger.error("%s failed: %s", name, err)
            failed.append(name)
            results.append({"momentum": momentum, "k": k, "threshold": threshold, "mean_auc": None, "class_auc": {},
                            "training_time": 0.0, "exp_name": name, "error": f"{type(err).__name__}: {err}",
                            "fingerprint": fingerprints[name].digest()})
        if ctx.is_primary:
            write_results(out, results, grid, shared)
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(settings)} grid setting(s) failed: {', '.join(failed)} "
                           f"(see {out / config.MODEL_PATHS['results_dir'] / 'grid_search_results.csv'})")
    return results

