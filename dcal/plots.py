"""DCAL evidence overlays: the attention rollout of the SA branch (CLS row over the patches) and the
patches GLCA selected as local queries (its top-R rollout patches), for a few evaluation images
(called by ``python -m common.plots RUN_DIR`` and at the end of ``train_fgvc.py`` / ``train_reid.py``).

From a run folder the model is rebuilt from the config recorded in ``args.json`` and the weights of
``checkpoint_best.pth`` (else ``checkpoint_last.pth``); the images are spread over the FGVC test split
or taken from the re-ID query set, read from the recorded ``data.data_root``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.plots import PlotError, save_overlay_grid, to_display

OUT_NAME = "rollout_glca_overlays.png"


@torch.no_grad()
def rollout_and_selection(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor | None]:
    """(rollout [B, gh, gw], GLCA selection mask [B, gh, gw] (1 = selected), prediction scores [B, K] or
    None for re-ID) from one eval-mode forward of a ``DualAttentionModel``."""
    model.eval()
    out = model(images)
    gh, gw = model.grid_size
    rollout = out["rollout"].float().cpu().view(-1, gh, gw)
    mask = torch.zeros(rollout.shape[0], gh * gw)
    if "glca_idx" in out:
        mask.scatter_(1, (out["glca_idx"].long().cpu() - 1).clamp(min=0), 1.0)  # positions are 1..N (0 = CLS)
    scores = out["embedding"].float().cpu() if model.task_type == "fgvc" else None
    return rollout, mask.view(-1, gh, gw), scores


def outline_patches(image: np.ndarray, mask: torch.Tensor, *, min_side: int = 192) -> np.ndarray:
    """The image (upsampled so that outlines stay visible on small inputs) with the unselected patches
    darkened and each selected patch outlined in red; returns [H', W', 3] in [0, 1]."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    h, w = rgb.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    big = F.interpolate(torch.as_tensor(rgb, dtype=torch.float32).permute(2, 0, 1)[None], scale_factor=scale,
                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    cells = F.interpolate(mask.float()[None, None], size=big.shape[:2], mode="nearest")[0, 0].numpy() > 0
    out = big * np.where(cells, 1.0, 0.35)[..., None]
    gh, gw = mask.shape
    ch, cw = big.shape[0] / gh, big.shape[1] / gw
    t = max(2, round(min(ch, cw) / 12))
    for r, c in zip(*np.nonzero(mask.numpy())):
        y0, y1, x0, x1 = round(r * ch), round((r + 1) * ch), round(c * cw), round((c + 1) * cw)
        for ys, xs in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t, y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t, x1))):
            out[ys, xs] = (1.0, 0.0, 0.0)
    return out


def draw_rollout(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *,
                 names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 display: Sequence[np.ndarray] | None = None, top_k_ratio: float | None = None,
                 title: str = "DCAL") -> Path:
    """One row per image: the image, the SA attention rollout over it, and the GLCA-selected patches
    outlined, with the top FGVC class when the model classifies.

    Args:
        model: a ``DualAttentionModel``.
        images: normalised batch [B, 3, H, W].
        out: PNG path.
        names: per-image captions (file name, true class / identity).
        class_names: FGVC class names for the predicted class.
        display: the images to draw, [H, W, 3] in [0, 1] (default: min-max scaled ``images``).
        top_k_ratio: R of the model's config, quoted in the title (default: K / N).
        title: figure title prefix.

    Returns:
        ``out``.
    """
    rollout, mask, scores = rollout_and_selection(model, images)
    gh, gw = model.grid_size
    n, k = gh * gw, int(model.top_k)
    ratio = top_k_ratio if top_k_ratio is not None else k / n
    has_glca = getattr(model, "glca", None) is not None
    branches = 2 if has_glca else 1  # FGVC scores are the SA (+ GLCA) class probabilities added
    rows = []
    for i in range(images.shape[0]):
        img = display[i] if display is not None else to_display(images[i])
        cap = names[i] if names else f"image {i}"
        if scores is not None:
            p, j = scores[i].max(0)
            cls = class_names[int(j)] if class_names else f"class {int(j)}"
            cap = f"{cap}\npred: {_short(cls)} (p {float(p) / branches:.2f})"
        sel = (f"GLCA local queries: top {k} of {n} patches" if has_glca
               else f"top {k} of {n} patches (no GLCA branch)")
        rows.append([(img, None, cap), (img, rollout[i].numpy(), "SA attention rollout (CLS row)"),
                     (outline_patches(img, mask[i]), None, sel)])
    what = "re-ID query" if getattr(model, "task_type", "fgvc") == "reid" else "test"
    return save_overlay_grid(
        rows, out, map_label="rollout score (CLS row over patches)",
        title=f"{title}: one {what} image per row. Middle: attention rollout through the "
              f"{len(model.backbone.blocks)} SA blocks (head-averaged attention + identity, multiplied over "
              f"layers; the CLS token's row over the {gh}x{gw} patches). Right: GLCA keeps the top "
              f"R = {ratio:.0%} of patches by rollout ({k} of {n}, outlined red; the rest darkened) as its "
              "local queries")


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _config_from_record(recorded: dict[str, Any], source: str):
    """The ExperimentConfig recorded by training (``args.json`` ``config``), validated again."""
    from dcal.utils.config import SECTIONS, ConfigError, ExperimentConfig, validate

    try:
        cfg = ExperimentConfig(**{k: v for k, v in recorded.items() if k not in SECTIONS},
                               **{k: cls(**recorded.get(k, {})) for k, cls in SECTIONS.items()})
    except TypeError as err:  # a key this version does not know
        raise ConfigError(f"{source}: recorded config does not fit this version ({err})") from None
    validate(cfg, source)
    return cfg


def _pick(n_total: int, n: int) -> list[int]:
    # spread over the list: the FGVC test lists are sorted by class, so the first n would be one class
    return sorted({int(round(x)) for x in np.linspace(0, n_total - 1, min(n, n_total))})


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Rollout / GLCA overlays for a ``train_fgvc.py`` / ``train_reid.py`` save_dir.

    Returns [] with a one-line note on stderr when ``args.json``, the checkpoint or the data root (as
    recorded, relative to the folder the training ran in) is missing.

    Raises:
        PlotError: the recorded config, the weights or the data do not fit together.
    """
    from common.data.errors import DataError
    from dcal.training.evaluator import load_model_weights
    from dcal.training.trainer import build_datasets, build_model, norm_stats
    from dcal.utils.config import ConfigError
    from dcal.utils.visualization import denormalize

    run = Path(run_dir)
    args_file = run / "args.json"
    ckpt = next((run / n for n in ("checkpoint_best.pth", "checkpoint_last.pth") if (run / n).is_file()), None)
    if ckpt is None or not args_file.is_file():
        print(f"plots: dcal overlays skipped: no checkpoint_best.pth / args.json in {run}", file=sys.stderr)
        return []
    recorded = json.loads(args_file.read_text(encoding="utf-8")).get("config")
    if not isinstance(recorded, dict):
        print(f"plots: dcal overlays skipped: {args_file} has no 'config' (not a DCAL training run)", file=sys.stderr)
        return []
    try:
        cfg = _config_from_record(recorded, str(args_file))
        if not Path(cfg.data.data_root).is_dir():
            print(f"plots: dcal overlays skipped: data.data_root {cfg.data.data_root} not found from {Path.cwd()}",
                  file=sys.stderr)
            return []
        model = build_model(cfg, load_pretrained=False)
        load_model_weights(model, ckpt)
        mean, std = norm_stats(model)
        _, eval_ds, class_names = build_datasets(cfg, mean, std)
    except (ConfigError, DataError) as err:
        raise PlotError(f"dcal overlays of {run}: {err}") from None
    if cfg.task_type == "reid":
        pool = [i for i, r in enumerate(eval_ds.records) if r.label == 1]  # label carries is_query
    else:
        pool = list(range(len(eval_ds)))
    if not pool:
        print(f"plots: dcal overlays skipped: no evaluation images under {cfg.data.data_root}", file=sys.stderr)
        return []
    idx = [pool[i] for i in _pick(len(pool), n_images)]
    items = [eval_ds[i] for i in idx]
    images = torch.stack([it[0] for it in items])
    names = []
    for i, it in zip(idx, items):
        rec = eval_ds.records[i]
        if cfg.task_type == "reid":
            truth = f"query: id {rec.pid}, camera {rec.camid}"
        else:
            truth = f"true: {_short(class_names[it[1]])}" if class_names else f"true: class {it[1]}"
        names.append(f"{_short(Path(rec.path).name, 30)}\n{truth}")
    display = [denormalize(x, mean, std).astype(np.float32) / 255.0 for x in images]
    kind = "FGVC" if cfg.task_type == "fgvc" else "re-ID"
    return [draw_rollout(model, images, run / OUT_NAME, names=names, class_names=class_names, display=display,
                         top_k_ratio=cfg.model.top_k_ratio,
                         title=f"DCAL {kind} {run.name} ({cfg.data.dataset_name}, {ckpt.name})")]
