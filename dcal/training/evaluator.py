"""DCAL standalone evaluation (``scripts/eval_fgvc.py`` / ``scripts/eval_reid.py``).

Loads a checkpoint written by training (or any file holding the model's state dict) strictly,
evaluates on the FGVC test split or the re-ID query/gallery, writes ``fgvc_results.json`` /
``reid_results.json`` (the replication's names) and ``metrics.json`` into ``--output_dir``, and with
``--visualize`` the attention overlays of the first evaluation images under ``visualizations/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import load_state_dict_strict, load_weights_file
from common.dist import init_distributed
from common.engine import build_loader, collect_outputs, to_device
from common.predictions import loader_order
from common.run import RunDir
from dcal.training.trainer import (
    DCALTask,
    build_datasets,
    build_model,
    evaluation_recorder,
    norm_stats,
    resolve_device,
)
from dcal.utils.config import ConfigError, ExperimentConfig, to_dict
from dcal.utils.metrics import fgvc_metrics, reid_metrics
from dcal.utils.visualization import save_attention_maps

logger = logging.getLogger(__name__)

NUM_VISUALIZED = 16


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Strictly load a training checkpoint's ``model`` entry (or a bare state dict) into ``model``."""
    if not Path(path).is_file():
        raise ConfigError(f"--checkpoint: weights file not found: {path}")
    load_state_dict_strict(model, load_weights_file(path), f"--checkpoint {path}")


def evaluate_from_config(cfg: ExperimentConfig, *, task_type: str, checkpoint: str, output_dir: str, gpu: int = 0,
                         visualize: bool = False, distance_metric: str = "euclidean",
                         extra_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a trained DCAL model and write the result files.

    Args:
        cfg: validated configuration (model and data sections are used).
        task_type: "fgvc" or "reid" (must equal ``cfg.task_type``).
        checkpoint: weights file (training checkpoint or state dict).
        output_dir: where results go.
        gpu: CUDA index when ``cfg.device`` is "cuda".
        visualize: also write attention overlays.
        distance_metric: re-ID distance ("euclidean" or "cosine").
        extra_args: command-line values for ``args.json``.

    Returns:
        The metrics dict written to the results JSON.
    """
    if cfg.task_type != task_type:
        raise ConfigError(f"task_type is '{cfg.task_type}' but this script evaluates '{task_type}'")
    ctx = init_distributed(resolve_device(cfg, gpu), flag="config key device (with --gpu)")
    run = RunDir(output_dir, {**(extra_args or {}), "config": to_dict(cfg)}, ctx)
    model = build_model(cfg, load_pretrained=False)
    load_model_weights(model, checkpoint)
    model.to(ctx.device).eval()
    mean, std = norm_stats(model)
    train_ds, eval_ds, class_names = build_datasets(cfg, mean, std)
    recorder = evaluation_recorder(cfg, train_ds, eval_ds, class_names, output_dir, is_primary=ctx.is_primary,
                                   distance_metric=distance_metric)
    loader = build_loader(eval_ds, cfg.data.batch_size, train=False, ctx=ctx, num_workers=cfg.data.num_workers)
    task = DCALTask(model)
    outputs = collect_outputs(model, loader, predict_fn=task.predict, ctx=ctx)
    order = loader_order(loader, ctx)
    if ctx.is_primary:
        recorder.save(output_dir, outputs, order)
    if task_type == "fgvc":
        metrics = fgvc_metrics(outputs)
        results_name = "fgvc_results.json"
    else:
        metrics = reid_metrics(outputs, distance_metric)
        results_name = "reid_results.json"
    run.write_json(results_name, metrics)
    run.write_json("metrics.json", {"checkpoint": str(checkpoint), "final": metrics, **recorder.metrics_entries()})
    logger.info("%s: %s", results_name, {k: v for k, v in metrics.items() if isinstance(v, float)})
    if visualize and ctx.is_primary:
        _visualize(model, eval_ds, Path(output_dir) / "visualizations", ctx.device, mean, std)
    return metrics


@torch.no_grad()
def _visualize(model, dataset, out_dir: Path, device, mean, std) -> None:
    n = min(NUM_VISUALIZED, len(dataset))
    items = [dataset[i] for i in range(n)]
    images = to_device(torch.stack([it[0] for it in items]), device)
    out = model(images)
    names = [f"{i:03d}_{Path(dataset.records[i].path).stem}" for i in range(n)]
    paths = save_attention_maps(images, out["rollout"], out["glca_idx"], model.grid_size, out_dir, names,
                                mean=mean, std=std)
    logger.info("wrote %d attention overlays to %s", len(paths), out_dir)
