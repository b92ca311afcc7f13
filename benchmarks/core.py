"""Shared machinery: timing, FLOP counting, machine description, CPU-load monitor, result rows."""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.cli import cpu_has_native_bf16

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    reps: int


@dataclass
class Row:
    """One measured figure. ``ratio`` = this median time / the reference's median time (lower is faster)."""

    section: str
    name: str
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    reps: int = 0
    items: int | None = None          # images (or queries, ...) per timed call -> items/s
    items_per_s: float | None = None
    flops: float | None = None        # FLOPs per timed call (training: 3 x forward)
    gflops_per_s: float | None = None
    pct_peak: float | None = None
    ref: str | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, *, warmup: int, reps: int) -> Timing:
    """Median / min / max wall time of ``fn`` over ``reps`` calls after ``warmup`` calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), len(times))


def forward_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (a forward pass) counted by ``torch.utils.flop_counter`` (no grad).

    Only the forward is counted: the counter over-counts depthwise-convolution backward (issue 10), so
    training cost uses the 3x-forward convention.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return float(counter.get_total_flops())


def train_step_fn(module: nn.Module, loss_of: Callable[[], torch.Tensor], *, amp: torch.dtype | None,
                  device: torch.device) -> Callable[[], None]:
    """One optimiser step: zero_grad, forward under autocast (``amp``), backward, AdamW step."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_of()
        loss.backward()
        opt.step()

    return step


def read_proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def read_self_jiffies() -> int:
    """utime + stime + cutime + cstime of this process (children that were waited for included)."""
    text = Path("/proc/self/stat").read_text()
    rest = text[text.rindex(")") + 2:].split()
    return sum(int(v) for v in rest[11:15])


class CpuMonitor:
    """CPU used by the other processes while a block runs: (all busy - ours) / wall, in cores."""

    def __init__(self) -> None:
        self.available = Path("/proc/stat").exists()
        self._start: tuple[int, int, int, float] | None = None

    def start(self) -> None:
        if self.available:
            busy, total = read_proc_stat()
            self._start = (busy, total, read_self_jiffies(), time.perf_counter())

    def stop(self) -> dict[str, float] | None:
        if not self.available or self._start is None:
            return None
        busy, total = read_proc_stat()
        own = read_self_jiffies()
        b0, t0, o0, w0 = self._start
        wall = time.perf_counter() - w0
        ncpu = os.cpu_count() or 1
        total_busy = (busy - b0) / CLK_TCK
        own_s = (own - o0) / CLK_TCK
        others = max(0.0, total_busy - own_s)
        return {"wall_s": wall, "own_cores": own_s / wall if wall > 0 else 0.0,
                "others_cores": others / wall if wall > 0 else 0.0,
                "others_pct_of_machine": 100.0 * others / max(1e-9, (total - t0) / CLK_TCK),
                "cpus": ncpu}


def _proc_status_kib(field: str) -> int | None:
    """A ``KiB`` field of /proc/self/status (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_hwm_kib() -> int | None:
    """Peak resident set size of this process (VmHWM, KiB)."""
    return _proc_status_kib("VmHWM")


def vm_rss_kib() -> int | None:
    """Current resident set size of this process (VmRSS, KiB)."""
    return _proc_status_kib("VmRSS")
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(device: torch.device) -> dict[str, Any]:
    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_vendor_flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "device": str(device),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def machine_slug(info: dict[str, Any]) -> str:
    name = info.get("gpu") or info["cpu_model"]
    slug = re.sub(r"\(r\)|\(tm\)|processor|cpu", "", name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return f"{slug}-{info['torch_threads']}t-{info['device'].split(':')[0]}"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def row_dict(r: Row) -> dict[str, Any]:
    return asdict(r)
