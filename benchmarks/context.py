"""The run context handed to every section: device, sizes, repetitions and the collected rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.core import Row, time_fn


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    warmup: int
    reps: int
    compile: bool
    rows: list[Row] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)  # "fp32" / "bf16" -> GFLOP/s
    notes: dict[str, list[str]] = field(default_factory=dict)

    def bf16(self) -> torch.dtype:
        return torch.bfloat16

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def find(self, section: str, name: str) -> Row | None:
        for r in self.rows:
            if r.section == section and r.name == name:
                return r
        return None

    def add(self, row: Row, *, precision: str = "fp32") -> Row:
        if row.median_s and row.items:
            row.items_per_s = row.items / row.median_s
        if row.median_s and row.flops:
            row.gflops_per_s = row.flops / row.median_s / 1e9
            peak = self.peak.get(precision)
            if peak:
                row.pct_peak = 100.0 * row.gflops_per_s / peak
        if row.ref is not None:
            ref = self.find(row.section, row.ref)
            if ref is not None and ref.median_s and row.median_s:
                row.ratio = row.median_s / ref.median_s
        self.rows.append(row)
        print(f"  [{row.section}] {row.name}: " + _short(row), flush=True)
        return row

    def measure(self, section: str, name: str, fn: Callable[[], Any], *, items: int | None = None,
                flops: float | None = None, ref: str | None = None, note: str = "", precision: str = "fp32",
                warmup: int | None = None, reps: int | None = None, extra: dict | None = None) -> Row:
        t = time_fn(fn, self.device, warmup=self.warmup if warmup is None else warmup,
                    reps=self.reps if reps is None else reps)
        return self.add(Row(section, name, t.median_s, t.min_s, t.max_s, t.reps, items=items, flops=flops, ref=ref,
                            note=note, extra=dict(extra or {})), precision=precision)


def _short(r: Row) -> str:
    parts = []
    if r.median_s is not None:
        parts.append(f"{r.median_s * 1e3:.2f} ms")
    if r.items_per_s is not None:
        parts.append(f"{r.items_per_s:.2f}/s")
    if r.gflops_per_s is not None:
        parts.append(f"{r.gflops_per_s:.1f} GFLOP/s")
    if r.ratio is not None:
        parts.append(f"x{r.ratio:.3f} vs {r.ref}")
    for k, v in r.extra.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)
