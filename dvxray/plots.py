"""DvXray attention overlays: the CoordAtt-U map at N3 (the fused neck level the classifier pools)
drawn over both views of a few validation pairs (called by ``python -m common.plots``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.plots import save_overlay_grid, to_display


@torch.no_grad()
def coordatt_maps(model: torch.nn.Module, img_a: torch.Tensor, img_b: torch.Tensor,
                  level: str = "attn3") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], CoordAtt map [B, H, W]) of the CoordAtt-U module at ``level`` (N3 = attn3).

    The map is the channel mean of ``a_h * a_w``, the two sigmoid gates of the module's coordinate
    attention, captured with forward hooks during one forward pass.
    """
    from dvxray.models.modules.attentions import CoordAtt_U

    target = next((m for n, m in model.named_modules() if n.endswith(level) and isinstance(m, CoordAtt_U)), None)
    if target is None:
        raise ValueError(f"model has no CoordAtt-U at {level} (--attention_config '{{\"N3\":\"coordatt_u\"}}')")
    got: dict[str, torch.Tensor] = {}
    hooks = [target.base.conv_h.register_forward_hook(lambda m, i, o: got.__setitem__("h", o)),
             target.base.conv_w.register_forward_hook(lambda m, i, o: got.__setitem__("w", o))]
    try:
        model.eval()
        out = model(img_a, img_b)
    finally:
        for h in hooks:
            h.remove()
    logits = out["logits"] if isinstance(out, dict) else out
    a_h = torch.sigmoid(got["h"])                    # [B, C, H, 1]
    a_w = torch.sigmoid(got["w"]).permute(0, 1, 3, 2)  # [B, C, 1, W]
    return logits, (a_h * a_w).mean(1)


def draw_coordatt(model: torch.nn.Module, img_a: torch.Tensor, img_b: torch.Tensor, out: str | Path, *,
                  class_names: Sequence[str], top_k: int = 3, title: str = "DvXray CoordAtt-U at N3") -> Path:
    """One row per pair: view A and view B with the N3 CoordAtt-U map over each, captioned with the
    top-k predicted classes (sigmoid probabilities)."""
    logits, maps = coordatt_maps(model, img_a, img_b)
    probs = torch.sigmoid(logits.float())
    rows = []
    for i in range(img_a.shape[0]):
        top = torch.topk(probs[i], min(top_k, probs.shape[1]))
        cap = ", ".join(f"{class_names[j]} {p:.2f}" for j, p in zip(top.indices.tolist(), top.values.tolist()))
        rows.append([(to_display(img_a[i]), maps[i].numpy(), f"view A | {cap}"),
                     (to_display(img_b[i]), maps[i].numpy(), "view B (same fused N3 map)")])
    return save_overlay_grid(rows, out, title=f"{title}: the fused two-view N3 feature's coordinate attention "
                             "(a_h x a_w, channel mean), top predicted classes", map_label="CoordAtt-U weight")


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Overlays from a finished run folder (not wired yet: needs the run's val list and checkpoint)."""
    print(f"plots: dvxray overlays from a run folder are not implemented yet ({run_dir}); "
          "call dvxray.plots.draw_coordatt(model, view_a, view_b, out, class_names=...)", file=sys.stderr)
    return []
