"""Section 5: charm_xray memory-bank retrieval, momentum update, full step vs bare EfficientNetV2-S."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.context import Ctx
from benchmarks.core import forward_flops, train_step_fn

SECTION = "charm_xray"


def loop_retrieve(memory: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample reference of ``MemoryBank.retrieve`` (same exclusion and weighting rules)."""
    mem_n = F.normalize(memory, dim=1)
    out = []
    for q in query:
        sim = mem_n @ F.normalize(q, dim=0)
        sim = sim.masked_fill(sim == 1.0, float("-inf"))
        top, idx = sim.topk(min(k, memory.shape[0]))
        w = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        out.append((w[:, None] * memory[idx]).sum(0))
    return torch.stack(out)


def run(ctx: Ctx) -> None:
    from charm_xray.models import ChestXrayModel, MemoryBank

    dev = ctx.device
    bank, batch, dim, k = (512, 128, 1280, 3)
    if ctx.quick:
        bank, batch, dim = 64, 16, 128
    torch.manual_seed(0)
    mb = MemoryBank(dim, bank).to(dev)
    mb.write(torch.randn(bank, dim, device=dev))
    q = torch.randn(batch, dim, device=dev)
    with torch.no_grad():
        diff = (mb.retrieve(q, k) - loop_retrieve(mb.memory, q, k)).abs().max().item()
        ctx.measure(SECTION, f"retrieve per-sample loop (bank {bank}, batch {batch}, C {dim})",
                    lambda: loop_retrieve(mb.memory, q, k), items=batch)
        ctx.measure(SECTION, f"MemoryBank.retrieve vectorised (bank {bank}, batch {batch}, C {dim})",
                    lambda: mb.retrieve(q, k), items=batch,
                    ref=f"retrieve per-sample loop (bank {bank}, batch {batch}, C {dim})", extra={"max_abs_diff": diff})

    b, size = (2, 64) if ctx.quick else (8, 224)
    ctx.note(SECTION, f"EfficientNetV2-S (model_name efficientnet_b0, as the original), batch {b}, {size} px, "
                      "14 classes, BCE; random weights.")
    x = torch.randn(b, 3, size, size, device=dev)
    y = (torch.rand(b, 14, device=dev) > 0.8).float()
    bce = nn.BCEWithLogitsLoss()
    bare = torchvision.models.efficientnet_v2_s(weights=None, num_classes=14).to(dev).train()
    fl = 3 * forward_flops(lambda: bare(x))
    ref = "bare torchvision efficientnet_v2_s train step"
    ctx.measure(SECTION, ref, train_step_fn(bare, lambda: bce(bare(x), y), amp=None, device=dev), items=b, flops=fl)

    model = ChestXrayModel("efficientnet_b0", 14).to(dev).train()
    fl = 3 * forward_flops(lambda: model(x))
    ctx.measure(SECTION, "ChestXrayModel full train step", train_step_fn(model, lambda: bce(model(x), y), amp=None,
                                                                          device=dev),
                items=b, flops=fl, ref=ref, note="includes bank write/retrieve and the momentum update")
    ctx.measure(SECTION, "momentum update (MomentumFinalBlock.update)",
                lambda: model.momentum_final_block.update(model.final_block), ref="ChestXrayModel full train step",
                note="ratio = share of the full step")
