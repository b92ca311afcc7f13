"""Pictures that explain a prediction: Grad-CAM over the image for its top classes, the model's own
attention map, and torchreid-style ranked re-ID results.

Grad-CAM (Selvaraju et al., ICCV 2017): for class k and a layer with activation A (C x h x w), the
channel weights are the spatially averaged gradients, ``alpha_c = mean_hw d y_k / d A_c``, and the map is
``ReLU(sum_c alpha_c A_c)``. Written here (about 30 lines) rather than taken from the ``grad-cam``
package: that package pulls OpenCV and ttach, and handles neither our two-view models (one backbone
called once per view) nor dict outputs without wrappers. For a model that global-average-pools the
layer and classifies linearly the map equals ``ReLU(sum_c w_kc A_c) / (h w)`` (the CAM of Zhou et al.),
which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from common.predict import LoadedModel, PredictAdapter


def grad_cam(forward: Callable[[], torch.Tensor], layer: nn.Module, class_index: torch.Tensor, *,
             inputs: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Grad-CAM maps of ``class_index`` at ``layer``.

    Args:
        forward: runs the model on its inputs and returns the logits [B, K].
        layer: the module whose output is weighed (called once per view for a shared backbone).
        class_index: [B] class per sample.
        inputs: the input tensors; they are made to require grad so that the map exists even when the
            model's parameters are frozen.

    Returns:
        One map [B, h, w] (not normalised) per call of ``layer`` during the forward pass.
    """
    acts: list[torch.Tensor] = []
    grads: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        k = len(acts)
        acts.append(output)
        if output.requires_grad:
            output.register_hook(lambda g: grads.__setitem__(k, g))
        # later in-place ops (a ReLU(inplace=True) after the stage) act on the copy, not on the saved A
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            for x in inputs:
                x.requires_grad_(True)
            logits = forward()
            score = logits.float().gather(1, class_index.view(-1, 1).to(logits.device)).sum()
            score.backward()
    finally:
        handle.remove()
        for x in inputs:
            x.requires_grad_(False)
    maps = []
    for k, a in enumerate(acts):
        g = grads.get(k)
        if g is None:  # this call did not reach the score
            maps.append(torch.zeros(a.shape[0], *a.shape[2:]))
            continue
        alpha = g.float().mean(dim=(2, 3), keepdim=True)
        maps.append(torch.relu((alpha * a.detach().float()).sum(1)).cpu())
    return maps


def per_view(maps: list[torch.Tensor], views: int, batch: int) -> list[torch.Tensor]:
    """Grad-CAM maps split by view: one layer call per view, or one call over the views stacked."""
    if len(maps) == 1 and views > 1 and maps[0].shape[0] == views * batch:
        return list(maps[0].split(batch))
    return maps[:views] if len(maps) >= views else maps + [maps[-1]] * (views - len(maps))


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised [3, H, W] tensor back to an [H, W, 3] array in [0, 1]."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def explain_batch(adapter: PredictAdapter, loaded: LoadedModel, inputs: Sequence[torch.Tensor],
                  names: Sequence[str], out_paths: Sequence[Path], *, top_k: int = 3) -> list[Path]:
    """One PNG per sample: per view a row with the image, the Grad-CAM map of each of its top-``top_k``
    classes (class name and probability in the caption) and the model's own attention map."""
    from common.plots import save_overlay_grid

    model, prep = loaded.model, loaded.preprocessing
    model.eval()
    with torch.no_grad():
        probs = adapter.scores(adapter.forward(model, inputs), loaded).float().cpu()
    layer = adapter.cam_layer(model)
    k = min(top_k, probs.shape[1])
    top = torch.topk(probs, k, dim=1)
    views = len(inputs)
    batch = inputs[0].shape[0]
    cams: list[list[torch.Tensor]] = []  # [rank][view] -> [B, h, w]
    if layer is not None:
        for r in range(k):
            maps = grad_cam(lambda: adapter.forward(model, inputs)["logits"], layer, top.indices[:, r],
                            inputs=inputs)
            cams.append(per_view(maps, views, batch))
    with torch.no_grad():
        att = adapter.attention(model, inputs)
    view_names = adapter.views if views > 1 else ("",)
    written = []
    for b, out in enumerate(out_paths):
        rows = []
        for v in range(views):
            img = denormalize(inputs[v][b], prep.mean, prep.std)
            label = f"{view_names[v]}: " if views > 1 else ""
            row = [(img, None, f"{label}{names[b]}" if v == 0 else label.rstrip(": "))]
            for r in range(k):
                j = int(top.indices[b, r])
                cap = f"{prep.class_names[j]} p={float(top.values[b, r]):.2f}"
                if not cams:
                    row.append((img, None, cap))
                    continue
                cam = cams[r][v][b]
                flat = _flat_reason(cam)
                row.append((img, None if flat else cam.numpy(), f"Grad-CAM: {cap}" + (f"\n({flat})" if flat else "")))
            if att is not None:
                row.append((img, att[v][b].float().cpu().numpy(), adapter.attention_label()))
            rows.append(row)
        what = f"Grad-CAM on {_layer_name(model, layer)}" if layer is not None else "top classes"
        extra = f"; last panel: {adapter.attention_label()}" if att is not None else ""
        written.append(save_overlay_grid(
            rows, out, map_label="Grad-CAM / attention",
            title=f"{adapter.paper}: {names[b]}: {what} for the top-{k} classes{extra}"))
    return written


def _flat_reason(cam: torch.Tensor) -> str | None:
    """Why a Grad-CAM map carries no spatial information (then no heat map is drawn), else None."""
    hi, lo = float(cam.max()), float(cam.min())
    if hi <= 0:
        return "map all zero: no positive evidence at this layer"
    if hi - lo <= 1e-6 * hi:
        return f"map flat ({cam.shape[-2]}x{cam.shape[-1]} cells at this input size)"
    return None


def _layer_name(model: nn.Module, layer: nn.Module | None) -> str:
    return next((n for n, m in model.named_modules() if m is layer), type(layer).__name__) or "the model"


def draw_ranked(query: Path, gallery: Sequence[Path], dists: Sequence[float], same: Sequence[bool | None],
                out: Path, *, query_name: str, gallery_names: Sequence[str]) -> Path:
    """torchreid-style ranked result: the query, then its top gallery images left to right with their
    rank and distance, framed green (same identity), red (different) or grey (identity unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from common.plots import save_figure

    n = len(gallery)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.4 * (n + 1), 3.0), squeeze=False)
    panels = [(query, f"query\n{_short(query_name)}", "black")] + [
        (p, f"#{r} d={d:.3g}\n{_short(name)}", {True: "limegreen", False: "red", None: "grey"}[s])
        for r, (p, d, s, name) in enumerate(zip(gallery, dists, same, gallery_names), start=1)]
    for ax, (path, caption, colour) in zip(axes[0], panels):
        with Image.open(path) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        ax.set_title(caption, fontsize=6)
    known = [s for s in same if s is not None]
    legend = (f"green: same identity as the query, red: different ({sum(known)} of {len(known)} correct)"
              if known else "identities unknown from the file names (grey frames)")
    fig.suptitle(f"ranked gallery matches of {_short(query_name, 40)}; {legend}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)


def _short(text: str, width: int = 18) -> str:
    text = Path(text).name
    return text if len(text) <= width else text[: width - 1] + "…"
