"""CHARM-Xray attention overlays: the spatial-attention map of ``ChestXrayModel.forward_features``
drawn over a few chest X-rays, with the top predicted findings (called by ``python -m common.plots``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from charm_xray import config  # noqa: E402


def _denorm(x: torch.Tensor) -> torch.Tensor:
    from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1)


@torch.no_grad()
def draw_attention(model: torch.nn.Module, images: torch.Tensor, out: str | Path, *, names: list[str] | None = None,
                   top_k: int = 3, title: str = "CHARM-Xray spatial attention") -> Path:
    """One column per image: the X-ray, then the spatial attention (upsampled) over it, titled with
    the top-k predicted findings and their probabilities.

    Args:
        model: a ``ChestXrayModel`` (needs ``forward_features``), in eval mode.
        images: normalised batch [B, 3, H, W].
        out: PNG path.
        names: per-image captions (file names).
        top_k: findings listed per image.
        title: figure title.

    Returns:
        ``out``.
    """
    model.eval()
    _, att = model.forward_features(images)
    probs = torch.sigmoid(model(images)).cpu()
    att = F.interpolate(att.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(2.8 * n, 6.0), squeeze=False)
    for i in range(n):
        img = _denorm(images[i]).mean(0).numpy()
        axes[0, i].imshow(img, cmap="gray")
        axes[0, i].set_title(names[i] if names else f"image {i}", fontsize=8)
        axes[1, i].imshow(img, cmap="gray")
        im = axes[1, i].imshow(att[i].numpy(), cmap="jet", alpha=0.45, vmin=float(att.min()), vmax=float(att.max()))
        top = torch.topk(probs[i], min(top_k, probs.shape[1]))
        labels = [config.DISEASE_LABELS[j] if j < len(config.DISEASE_LABELS) else str(j) for j in top.indices.tolist()]
        axes[1, i].set_title("\n".join(f"{lab} {p:.2f}" for lab, p in zip(labels, top.values.tolist())), fontsize=7)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, label="attention weight (sigmoid)")
    fig.suptitle(f"{title}\ntop: input X-ray; bottom: attention over it, with the top-{top_k} predicted findings",
                 fontsize=9)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def overlays(run_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Attention overlays for a ``runs/<exp>`` folder of ``charm_xray/train.py``.

    Loads ``<output_dir>/models/final_<exp>.pth`` and the first ``n_images`` test-list images of the
    run's ``data_dir`` (from ``args.json``, relative paths tried against the current folder and the
    output folder's parents). Returns [] with a note on stderr when either is missing.
    """
    import json

    from PIL import Image

    from charm_xray.data import build_transform
    from charm_xray.evaluate import build_from_checkpoint, read_checkpoint

    run = Path(run_dir)
    ckpt = run.parent.parent / "models" / f"final_{run.name}.pth"
    args_file = run / "args.json"
    if not ckpt.is_file() or not args_file.is_file():
        print(f"plots: charm_xray overlays skipped: no {ckpt} or {args_file}", file=sys.stderr)
        return []
    recorded = json.loads(args_file.read_text(encoding="utf-8"))
    data_dir = Path(recorded.get("data_dir", "data"))
    candidates = [data_dir] if data_dir.is_absolute() else [Path.cwd() / data_dir] + [
        p / data_dir for p in run.resolve().parents]
    data = next((c for c in candidates if (c / "test_list.txt").is_file()), None)
    if data is None:
        print(f"plots: charm_xray overlays skipped: data_dir {data_dir} (args.json) not found", file=sys.stderr)
        return []
    wanted = (data / "test_list.txt").read_text().split()[: max(n_images * 4, 16)]
    files = {p.name: p for p in data.glob("images*/**/*.png")}
    paths = [files[w] for w in wanted if w in files][:n_images]
    if not paths:
        print(f"plots: charm_xray overlays skipped: no test_list.txt images under {data}", file=sys.stderr)
        return []
    state, rec = read_checkpoint(ckpt)
    import argparse

    ns = argparse.Namespace()
    model = build_from_checkpoint(state, {**recorded, **rec}, ns, str(ckpt)).eval()
    if not hasattr(model, "forward_features"):
        return []
    tf = build_transform(int(ns.image_size), train=False)
    images = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    return [draw_attention(model, images, run / "attention_overlays.png", names=[p.name for p in paths],
                           title=f"CHARM-Xray {run.name}: spatial attention on test-list images")]
