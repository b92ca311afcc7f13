"""Section 1: the machine limit, dense fp32 and bf16 matmul GFLOP/s on the benchmark's threads."""

from __future__ import annotations

import torch

from benchmarks.context import Ctx

SECTION = "matmul"


def run(ctx: Ctx) -> None:
    n = 512 if ctx.quick else 2048
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        row = ctx.measure(SECTION, f"matmul {precision} {n}x{n}", lambda a=a, b=b: a @ b, flops=2.0 * n ** 3,
                          ref=f"matmul fp32 {n}x{n}" if precision == "bf16" else None,
                          warmup=2, reps=max(3, ctx.reps * 2))
        ctx.peak[precision] = row.gflops_per_s or 0.0
        row.pct_peak = 100.0
    ctx.note(SECTION, "Peak = median GFLOP/s of one square matmul; model rows give % of the fp32 peak "
                      "(bf16 rows: of the bf16 peak).")
