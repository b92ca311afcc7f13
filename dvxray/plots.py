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
    """CoordAtt-U overlays for a ``main_finetune.py`` output folder: ``checkpoint_best.pth`` (else
    ``checkpoint_last.pth``) and the first ``n_images`` pairs of its ``--val_list`` (paths as recorded,
    relative to the folder the training ran in, i.e. the current one). Returns [] with a one-line note
    on stderr when the checkpoint, the list or a CoordAtt-U at N3 is missing."""
    from common.checkpoint import load_checkpoint
    from dvxray.datasets import build_dataset, read_classes
    from dvxray.engine_finetune import build_model_from_args
    from dvxray.eval_only import load_eval_weights
    from dvxray.main_finetune import get_args_parser

    run = Path(run_dir)
    ckpt_path = next((run / n for n in ("checkpoint_best.pth", "checkpoint_last.pth") if (run / n).is_file()), None)
    if ckpt_path is None:
        print(f"plots: dvxray overlays skipped: no checkpoint_best.pth in {run}", file=sys.stderr)
        return []
    ckpt = load_checkpoint(ckpt_path)
    recorded = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else None
    if recorded is None or "coordatt_u" not in str(recorded.get("attention_config") or ""):
        print(f"plots: dvxray overlays skipped: {ckpt_path} has no CoordAtt-U (--attention_config)", file=sys.stderr)
        return []
    train_args = {**vars(get_args_parser().parse_args([])), **recorded}
    if not Path(train_args["val_list"]).is_file():
        print(f"plots: dvxray overlays skipped: --val_list {train_args['val_list']} not found from {Path.cwd()}",
              file=sys.stderr)
        return []
    model, _ = build_model_from_args(train_args)
    load_eval_weights(model, ckpt["model"], f"{ckpt_path} (model weights)")
    names = read_classes(train_args["classes_file"], train_args["num_classes"])
    data = build_dataset(train_args["val_list"], num_classes=train_args["num_classes"], train=False,
                         input_size=train_args["input_size"], data_root=train_args.get("data_root") or None)
    items = [data[i] for i in range(min(n_images, len(data)))]
    img_a = torch.stack([it[0] for it in items])
    img_b = torch.stack([it[1] for it in items])
    return [draw_coordatt(model, img_a, img_b, run / "coordatt_n3_overlays.png", class_names=names,
                          title=f"DvXray {run.name}, validation pairs")]
