"""Section 2: dvxray training step, paper model vs bare convnextv2_tiny on the same 2B images."""

from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.context import Ctx
from benchmarks.core import Row, forward_flops, train_step_fn

SECTION = "dvxray"

PAPER_FLAGS = ["--fuse_mode", "add", "--head_type", "fpn_pan", "--attention_config", '{"N3":"coordatt_u"}',
               "--base_loss", "mcb_convex"]


def build_task(model_name: str, batch_views: bool, num_classes: int = 15) -> nn.Module:
    """The paper model + MCB-Convex criterion wrapped in the trainer's DvXrayTask (random weights)."""
    from dvxray.engine_finetune import DvXrayTask, build_model_from_args
    from dvxray.main_finetune import get_args_parser, loss_params_from_args
    from dvxray.models.modules.losses import build_base_criterion

    args = get_args_parser().parse_args([*PAPER_FLAGS, "--model", model_name, "--num_classes", str(num_classes),
                                         "--batch_views", str(batch_views).lower()])
    model, signal = build_model_from_args(args)
    criterion = build_base_criterion(args.base_loss, loss_params_from_args(args), signal)
    return DvXrayTask(model, criterion)


def sizes(ctx: Ctx) -> tuple[str, str, int, int]:
    """(dvxray backbone, timm backbone, batch B, image size)."""
    return ("convnextv2_atto", "convnextv2_atto", 2, 64) if ctx.quick else ("convnextv2_tiny", "convnextv2_tiny", 4, 224)


def run(ctx: Ctx) -> None:
    import timm

    dev = ctx.device
    name, timm_name, b, size = sizes(ctx)
    torch.manual_seed(0)
    a = torch.randn(b, 3, size, size, device=dev)
    s = torch.randn(b, 3, size, size, device=dev)
    both = torch.cat([a, s])
    target = (torch.rand(b, 15, device=dev) > 0.7).float()
    target2 = torch.cat([target, target])
    ctx.note(SECTION, f"{name}, batch B={b} per view ({2 * b} images per step), {size} px, AdamW, random weights; "
                      "training FLOPs = 3 x forward FLOPs.")

    bare = timm.create_model(timm_name, pretrained=False, num_classes=15).to(dev).train()
    bare_flops = 3 * forward_flops(lambda: bare(both))
    bce = nn.BCEWithLogitsLoss()
    ctx.measure(SECTION, f"bare timm {timm_name} train step (2B images)",
                train_step_fn(bare, lambda: bce(bare(both), target2), amp=None, device=dev),
                items=2 * b, flops=bare_flops)
    ref = f"bare timm {timm_name} train step (2B images)"

    task = build_task(name, True).to(dev).train()
    model = task.model
    flops = 3 * forward_flops(lambda: model(a, s))
    batch = (a, s, target)
    step = train_step_fn(task, lambda: task(batch)["loss"], amp=None, device=dev)
    ctx.measure(SECTION, "paper model train step", step, items=2 * b, flops=flops, ref=ref,
                note="target <= 1.15x bare")

    # batch_views false: the original's two sequential backbone passes; same weights -> same outputs
    seq = build_task(name, False).to(dev).train()
    seq.load_state_dict(task.state_dict())
    model.eval()
    seq.model.eval()
    with torch.no_grad():
        diff = (model(a, s) - seq.model(a, s)).abs().max().item()
    model.train()
    seq.model.train()
    ctx.measure(SECTION, "paper model train step, --batch_views false",
                train_step_fn(seq, lambda: seq(batch)["loss"], amp=None, device=dev),
                items=2 * b, flops=flops, ref="paper model train step",
                extra={"max_abs_diff_logits_eval": diff}, note="equal outputs, no slower on CPU")

    # channels_last
    cl = build_task(name, True).to(dev).train()
    cl.load_state_dict(task.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    a_cl, s_cl = a.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
    ctx.measure(SECTION, "paper model train step, channels_last",
                train_step_fn(cl, lambda: cl((a_cl, s_cl, target))["loss"], amp=None, device=dev),
                items=2 * b, flops=flops, ref="paper model train step")

    bf16_note = "target >= 1.5x fp32 (ratio <= 0.67)"
    if dev.type == "cpu":
        from common.cli import cpu_has_native_bf16
        bf16_note += f"; native bf16 on this CPU: {'yes' if cpu_has_native_bf16() else 'no'}"
    ctx.measure(SECTION, "paper model train step, bf16 autocast",
                train_step_fn(task, lambda: task(batch)["loss"], amp=torch.bfloat16, device=dev),
                items=2 * b, flops=flops, ref="paper model train step", precision="bf16", note=bf16_note)
    a_nhwc, s_nhwc = (v.contiguous(memory_format=torch.channels_last) for v in (a, s))
    ctx.measure(SECTION, "paper model train step, bf16 autocast + NHWC batches",
                train_step_fn(task, lambda: task((a_nhwc, s_nhwc, target))["loss"], amp=torch.bfloat16, device=dev),
                items=2 * b, flops=flops, ref="paper model train step", precision="bf16",
                note=bf16_note + "; what --amp bf16/auto does on a CPU (--channels_last auto)")
    ctx.measure(SECTION, "bare timm train step, bf16 autocast",
                train_step_fn(bare := timm.create_model(timm_name, pretrained=False, num_classes=15).to(dev).train(),
                              lambda: bce(bare(both), target2), amp=torch.bfloat16, device=dev),
                items=2 * b, flops=bare_flops, ref=ref, precision="bf16")

    # inference, eager
    model.eval()
    with torch.no_grad():
        ctx.measure(SECTION, "paper model inference", lambda: model(a, s), items=2 * b, flops=flops / 3)
    model.train()

    if not ctx.compile:
        ctx.note(SECTION, "torch.compile not measured (off by default in --quick, or --no-compile).")
        return
    ctx.note(SECTION, "torch.compile as the trainers' --compile does it (common.engine.fit): the Task (model + "
                      "loss) for training; for inference a separate compile of the model in eval mode.")
    compiled_task = build_task(name, True).to(dev).train()
    compiled_task.load_state_dict(task.state_dict())
    train_c = torch.compile(compiled_task)
    step_c = train_step_fn(compiled_task, lambda: train_c(batch)["loss"], amp=None, device=dev)
    t0 = time.perf_counter()
    step_c()
    first = time.perf_counter() - t0
    ctx.add(Row(SECTION, "torch.compile first train step (compile time)", first, first, first, 1, items=2 * b,
                note="includes compilation (cache state as found)"))
    ctx.measure(SECTION, "paper model train step, torch.compile", step_c, items=2 * b, flops=flops,
                ref="paper model train step", note="target >= 1.15x (ratio <= 0.87)")
    # A model compiled while training and then switched to eval recompiles on a training-mode graph cache
    # (first measured run: 1.9x slower than eager); fit compiles the evaluation forward separately.
    infer_model = build_task(name, True).to(dev).model
    infer_model.load_state_dict(model.state_dict())
    infer_model.eval()
    infer_c = torch.compile(infer_model)
    with torch.no_grad():
        t0 = time.perf_counter()
        infer_c(a, s)
        first = time.perf_counter() - t0
        ctx.add(Row(SECTION, "torch.compile first inference (compile time)", first, first, first, 1, items=2 * b))
        ctx.measure(SECTION, "paper model inference, torch.compile", lambda: infer_c(a, s), items=2 * b,
                    flops=flops / 3, ref="paper model inference", note="target >= 1.5x (ratio <= 0.67)")
