"""Section 9: peak RSS (CPU, one subprocess per case, VmHWM) / peak allocated (CUDA) per training step.

Model: the dvxray paper model (dual view: 2B images per step), AdamW, fp32. ``--quick`` runs the cases
in-process (VmHWM reset through /proc/self/clear_refs, less isolated) to save the subprocess start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.context import Ctx
from benchmarks.core import Row, vm_hwm_kib, vm_rss_kib

SECTION = "memory"


def one_case(model_name: str, batch: int, size: int, device: str, threads: int) -> dict:
    """Build the model, run two training steps; returns baseline RSS, peak RSS / CUDA peak and the step time."""
    from benchmarks.bench_dvxray import build_task
    from benchmarks.core import sync, train_step_fn

    torch.set_num_threads(threads)
    dev = torch.device(device)
    task = build_task(model_name, True).to(dev).train()
    a = torch.randn(batch, 3, size, size, device=dev)
    s = torch.randn(batch, 3, size, size, device=dev)
    y = (torch.rand(batch, 15, device=dev) > 0.7).float()
    step = train_step_fn(task, lambda: task((a, s, y))["loss"], amp=None, device=dev)
    base = vm_rss_kib()
    reset_hwm()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step()
    sync(dev)
    t0 = time.perf_counter()
    step()
    sync(dev)
    dt = time.perf_counter() - t0
    out = {"baseline_rss_mib": (base or 0) / 1024, "peak_rss_mib": (vm_hwm_kib() or 0) / 1024, "step_s": dt}
    if dev.type == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run(ctx: Ctx) -> None:
    if ctx.quick:
        model_name, batches, sizes = "convnextv2_atto", (1, 2), (32, 64)
    else:
        model_name, batches, sizes = "convnextv2_tiny", (2, 4), (224, 384, 512)
    ctx.note(SECTION, f"dvxray paper model ({model_name}), batch B per view = {batches} (2B images), sizes {sizes}; "
                      + ("in-process cases (--quick)" if ctx.quick else "one subprocess per case")
                      + "; peak = VmHWM over the two steps (CPU) or max_memory_allocated (CUDA); batches are small to fit the time budget.")
    for size in sizes:
        for b in batches:
            name = f"train step B={b} ({2 * b} images) {size} px"
            if ctx.quick:
                res = one_case(model_name, b, size, str(ctx.device), torch.get_num_threads())
                ctx.add(Row(SECTION, name, res["step_s"], res["step_s"], res["step_s"], 1, items=2 * b,
                            extra={k: v for k, v in res.items() if k != "step_s"}, note="in-process (--quick)"))
                continue
            cmd = [sys.executable, "-m", "benchmarks.bench_memory", model_name, str(b), str(size), str(ctx.device),
                   str(torch.get_num_threads())]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                ctx.add(Row(SECTION, name, note=f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            ctx.add(Row(SECTION, name, res["step_s"], res["step_s"], res["step_s"], 1, items=2 * b,
                        extra={k: v for k, v in res.items() if k != "step_s"}))


if __name__ == "__main__":
    print(json.dumps(one_case(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
