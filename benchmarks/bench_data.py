"""Section 8: decode + resize + augment img/s with 0/1/2 workers vs the model's consumption; PIL vs torchvision.io."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image

from benchmarks.context import Ctx
from benchmarks.core import train_step_fn

SECTION = "data"


class Files(Dataset):
    def __init__(self, paths: list[Path], size: int, gray: bool):
        self.paths = paths
        self.gray = gray
        self.tf = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.ColorJitter(0.2, 0.2),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.25] * 3),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def make_images(folder: Path, n: int, quick: bool) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    out: dict[str, list[Path]] = {"png": [], "jpg": []}
    gs, (cw, ch) = (256, (200, 150)) if quick else (1024, (800, 600))
    for i in range(n):
        # smooth content so the codecs see image-like data, not incompressible noise
        base = rng.integers(0, 255, (gs // 16, gs // 16), dtype=np.uint8)
        g = Image.fromarray(base).resize((gs, gs), Image.BICUBIC)
        p = folder / f"x{i}.png"
        g.save(p)
        out["png"].append(p)
        base = rng.integers(0, 255, (ch // 16, cw // 16, 3), dtype=np.uint8)
        c = Image.fromarray(base).resize((cw, ch), Image.BICUBIC)
        p = folder / f"c{i}.jpg"
        c.save(p, quality=90)
        out["jpg"].append(p)
    return out


def run(ctx: Ctx) -> None:
    import timm

    n = 8 if ctx.quick else 64
    sizes = (64,) if ctx.quick else (224, 512)
    workers = (0, 1) if ctx.quick else (0, 1, 2)
    label = {"png": "1024x1024 grayscale PNG", "jpg": "800x600 colour JPEG"}
    if ctx.quick:
        label = {"png": "256x256 grayscale PNG", "jpg": "200x150 colour JPEG"}
    ctx.note(SECTION, f"{n} synthetic files per format; PIL decode + Resize + flip/rotate/jitter + ToTensor; "
                      "batch 8; one warm-up epoch (persistent workers), then timed epochs. Consumption = bare "
                      "convnextv2_tiny train step (atto in --quick) at batch 2 images.")
    # consumption first, so the loading rows can refer to it
    model_name = "convnextv2_atto" if ctx.quick else "convnextv2_tiny"
    for size in sizes:
        net = timm.create_model(model_name, pretrained=False, num_classes=15).to(ctx.device).train()
        x = torch.randn(2, 3, size, size, device=ctx.device)
        y = torch.zeros(2, 15, device=ctx.device)
        bce = torch.nn.BCEWithLogitsLoss()
        ctx.measure(SECTION, f"model consumption {model_name} train {size} px",
                    train_step_fn(net, lambda net=net, x=x, y=y, bce=bce: bce(net(x), y), amp=None, device=ctx.device),
                    items=2, warmup=1, reps=max(1, ctx.reps - 1))
    with tempfile.TemporaryDirectory() as tmp:
        files = make_images(Path(tmp), n, ctx.quick)
        for fmt in ("png", "jpg"):
            raw = [p.read_bytes() for p in files[fmt]]
            mode = ImageReadMode.GRAY if fmt == "png" else ImageReadMode.RGB

            def pil(raw: list[bytes] = raw, fmt: str = fmt) -> None:
                for r in raw:
                    with Image.open(io.BytesIO(r)) as im:
                        im.convert("L" if fmt == "png" else "RGB").load()

            def tvio(raw: list[bytes] = raw, mode: ImageReadMode = mode) -> None:
                for r in raw:
                    decode_image(torch.frombuffer(bytearray(r), dtype=torch.uint8), mode=mode)

            pil_name = f"PIL decode {label[fmt]}"
            ctx.measure(SECTION, pil_name, pil, items=n, warmup=1)
            ctx.measure(SECTION, f"torchvision.io decode {label[fmt]}", tvio, items=n, warmup=1, ref=pil_name)
            for size in sizes:
                consumption = ctx.find(SECTION, f"model consumption {model_name} train {size} px")
                for w in workers:
                    loader = DataLoader(Files(files[fmt], size, fmt == "png"), batch_size=8, num_workers=w,
                                        persistent_workers=w > 0)

                    def epoch(loader: DataLoader = loader) -> None:
                        for _ in loader:
                            pass

                    row = ctx.measure(SECTION, f"load {label[fmt]} -> {size} px, {w} workers", epoch, items=n,
                                      warmup=1, reps=max(1, ctx.reps - 1))
                    if consumption is not None and consumption.items_per_s and row.items_per_s:
                        row.extra["x_consumption"] = row.items_per_s / consumption.items_per_s
                        if w == 2:
                            row.note = "target: >= 2x consumption with 2 workers"
