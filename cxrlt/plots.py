"""CXR-LT CSRA class-attention overlays: for the top-k predicted classes of a few images, the CSRA
head's spatial attention of that class (called by ``python -m common.plots``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.plots import save_overlay_grid, to_display


@torch.no_grad()
def csra_maps(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], class attention [B, K, H, W]) of a ``ConvNeXtV2CXR``.

    The seed's head (``CSRAHead``): softmax over positions of ``conv_att``; the official head (``MHA``):
    softmax over positions of the first (T = 1) head's normalised class scores.
    """
    model.eval()
    feats = model.bn(model.backbone(images))
    logits = model.head(feats)
    head = model.head
    if hasattr(head, "conv_att"):
        score = head.conv_att(feats)
    else:
        h0 = head.multi_head[0]
        score = h0.head(feats) / torch.norm(h0.head.weight, dim=1, keepdim=True).transpose(0, 1) * h0.T
    b, k, hh, ww = score.shape
    return logits, score.flatten(2).softmax(-1).view(b, k, hh, ww)


def draw_csra(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *, class_names: Sequence[str],
              top_k: int = 3, names: Sequence[str] | None = None, title: str = "CXR-LT CSRA class attention") -> Path:
    """One row per image: the image, then the CSRA attention of each of its top-k predicted classes."""
    logits, att = csra_maps(model, images)
    probs = torch.sigmoid(logits.float())
    rows = []
    for i in range(images.shape[0]):
        img = to_display(images[i])
        row = [(img, None, names[i] if names else f"image {i}")]
        top = torch.topk(probs[i], min(top_k, probs.shape[1]))
        for j, p in zip(top.indices.tolist(), top.values.tolist()):
            row.append((img, att[i, j].numpy(), f"{class_names[j]} p={p:.2f}"))
        rows.append(row)
    return save_overlay_grid(rows, out, title=f"{title}: per row the image, then the spatial attention of its "
                             f"top-{top_k} predicted classes", map_label="class attention (softmax over positions)")


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """CSRA overlays for a ``train_stage1.py`` / ``train_stage2.py`` output folder: its
    ``checkpoint_last.pth`` (model rebuilt from the weights' keys, as ``inference.py`` does) on the
    first ``n_images`` images of the run's ``--data_dir`` ``images/`` folder (as recorded in
    ``args.json``, relative to the folder the training ran in). Returns [] with a one-line note on
    stderr when something is missing."""
    import json

    from cxrlt.inference import load_any_model
    from cxrlt.model import CLASS_NAMES
    from cxrlt.predict import load_input

    run = Path(run_dir)
    ckpt = next((run / n for n in ("checkpoint_last.pth", "checkpoint_best.pth") if (run / n).is_file()), None)
    if ckpt is None or not (run / "args.json").is_file():
        print(f"plots: cxrlt overlays skipped: no checkpoint_last.pth / args.json in {run}", file=sys.stderr)
        return []
    args = json.loads((run / "args.json").read_text(encoding="utf-8"))
    image_dir = Path(args.get("data_dir", ".")) / "images"
    paths = sorted(p for p in image_dir.glob("*.png") if "corrupt" not in p.name)[:n_images]
    if not paths:
        print(f"plots: cxrlt overlays skipped: no PNG images in {image_dir} (from {Path.cwd()})", file=sys.stderr)
        return []
    model = load_any_model(ckpt, args.get("model", "convnextv2_base"))
    if not hasattr(model, "bn"):
        print(f"plots: cxrlt overlays skipped: {ckpt} has no CSRA head", file=sys.stderr)
        return []
    size = int(args.get("image_size", 512))
    images = torch.cat([load_input(p, size) for p in paths])
    metrics = run / "metrics.json"
    names = json.loads(metrics.read_text()).get("class_names") if metrics.is_file() else None
    k = model.num_classes
    names = names if names and len(names) == k else (list(CLASS_NAMES) if len(CLASS_NAMES) == k else
                                                    [f"class {i}" for i in range(k)])
    return [draw_csra(model, images, run / "csra_overlays.png", class_names=names, names=[p.name for p in paths],
                      title=f"CXR-LT {run.name}")]
