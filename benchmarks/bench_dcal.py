"""Section 4: dcal SA + GLCA + PWCA training step vs bare DeiT; attention rollout; eval with PWCA off."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.context import Ctx
from benchmarks.core import forward_flops, train_step_fn

SECTION = "dcal"


def naive_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """A straightforward per-sample, per-layer, per-head loop of R <- rownorm(mean_h A + I) R."""
    b, h, n, _ = attentions[0].shape
    out = []
    for i in range(b):
        r = torch.eye(n)
        for att in attentions:
            m = torch.zeros(n, n)
            for j in range(h):
                m = m + att[i, j].float()
            m = m / h + torch.eye(n)
            m = m / m.sum(dim=-1, keepdim=True)
            r = m @ r
        out.append(r)
    return torch.stack(out)


def run(ctx: Ctx) -> None:
    from dcal.models.backbones.timm_wrapper import create_backbone
    from dcal.models.dual_attention_model import DualAttentionModel
    from dcal.training.trainer import DCALTask
    from dcal.utils.attention_rollout import attention_rollout

    dev = ctx.device
    if ctx.quick:
        name, img, patch, depth, b = "deit_tiny_patch16_224", 32, 8, 2, 2
    else:
        name, img, patch, depth, b = "deit_small_patch16_224", 224, None, 12, 4
    ctx.note(SECTION, f"{name}, depth {depth}, {img} px, batch {b}, FGVC (200 classes), CE; the reference for "
                      f"'two extra blocks' is the bare DeiT built with depth {depth + 2}.")
    torch.manual_seed(0)
    x = torch.randn(b, 3, img, img, device=dev)
    y = torch.randint(0, 200, (b,), device=dev)

    def bare(d: int) -> torch.nn.Module:
        vit = create_backbone(name, img_size=(img, img), patch_size=patch, depth=d)
        return torch.nn.Sequential(vit, torch.nn.Linear(vit.embed_dim, 200)).to(dev).train()

    ref = f"bare DeiT depth {depth} train step"
    for d in (depth, depth + 2):
        net = bare(d)
        fl = 3 * forward_flops(lambda net=net: net(x))
        ctx.measure(SECTION, f"bare DeiT depth {d} train step",
                    train_step_fn(net, lambda net=net: F.cross_entropy(net(x), y), amp=None, device=dev),
                    items=b, flops=fl, ref=None if d == depth else ref)
    net.eval()
    with torch.no_grad():
        ctx.measure(SECTION, f"bare DeiT depth {depth + 2} inference", lambda: net(x), items=b)

    model = DualAttentionModel(create_backbone(name, img_size=(img, img), patch_size=patch, depth=depth), 200,
                               task_type="fgvc", top_k_ratio=0.1).to(dev)
    task = DCALTask(model).to(dev).train()
    fl = 3 * forward_flops(lambda: model(x))
    ctx.measure(SECTION, "DCAL SA+GLCA+PWCA train step", train_step_fn(task, lambda: task((x, y))["loss"], amp=None,
                                                                       device=dev),
                items=b, flops=fl, ref=ref, note=f"target: <= time of depth {depth + 2} ('two extra blocks'); PWCA = {depth} more blocks")
    # Decomposition: PWCA is a second pass of the target through all T = L blocks (weights shared, keys
    # of target + distractor), so it costs about one more backbone step by construction.
    model_sa = DualAttentionModel(create_backbone(name, img_size=(img, img), patch_size=patch, depth=depth), 200,
                                  task_type="fgvc", top_k_ratio=0.1, use_pwca=False).to(dev)
    task_sa = DCALTask(model_sa).to(dev).train()
    ctx.measure(SECTION, "DCAL SA+GLCA train step (PWCA off)",
                train_step_fn(task_sa, lambda: task_sa((x, y))["loss"], amp=None, device=dev), items=b, ref=ref,
                note=f"the part the 'two extra blocks' target can apply to (<= depth {depth + 2})")
    model.eval()
    with torch.no_grad():
        ctx.measure(SECTION, "DCAL eval inference (PWCA off)", lambda: model(x), items=b,
                    ref=f"bare DeiT depth {depth + 2} inference", note="eval mode: SA + GLCA, no PWCA")

    # rollout: the project's vectorised version vs a naive loop, on random softmax maps of the model's shape
    n = model.backbone.patch_embed.num_patches + 1
    heads = model.backbone.blocks[0].attn.num_heads
    atts = [torch.randn(b, heads, n, n).softmax(-1) for _ in range(depth)]
    vec = attention_rollout(atts)
    diff = (vec - naive_rollout(atts)).abs().max().item()
    ctx.measure(SECTION, "naive rollout loop", lambda: naive_rollout(atts), items=b, warmup=1)
    ctx.measure(SECTION, "attention_rollout (vectorised)", lambda: attention_rollout(atts), items=b,
                ref="naive rollout loop", extra={"max_abs_diff": diff})
