"""``python -m benchmarks.run [--quick] [--only NAME] [--device cpu|cuda] [--threads N]``.

Runs every section in one process (memory cases in subprocesses), prints and writes
``benchmarks/results/<machine>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.context import Ctx
from benchmarks.core import CpuMonitor, Row, machine_info, machine_slug, row_dict

SECTIONS: dict[str, str] = {
    "matmul": "benchmarks.bench_matmul",
    "dvxray": "benchmarks.bench_dvxray",
    "cxrlt": "benchmarks.bench_cxrlt",
    "dcal": "benchmarks.bench_dcal",
    "charm_xray": "benchmarks.bench_charm",
    "xmnet": "benchmarks.bench_xmnet",
    "metrics": "benchmarks.bench_metrics",
    "data": "benchmarks.bench_data",
    "memory": "benchmarks.bench_memory",
}
RESULTS = Path(__file__).resolve().parent / "results"
QUIET_LIMIT_CORES = 0.2  # other processes' average CPU use above this -> "machine not quiet"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and sizes, 1-2 repetitions (well under a minute)")
    p.add_argument("--only", action="append", choices=list(SECTIONS), default=None,
                   help="run only this section (repeatable); matmul always runs first for the peak")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3; --quick 1)")
    p.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure torch.compile (default: on in full mode, off in --quick)")
    p.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    return p


def fmt(v: Any, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu_model']} ({m['logical_cpus']} logical CPUs), {m['torch_threads']} torch threads, "
        f"native bf16: {'yes' if m['native_bf16'] else 'no'} (flags: {', '.join(m['cpu_vendor_flags']) or 'none'}), torch {m['torch_version']}, device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f"; {result['mode']} mode, {result['date']}.",
        f"Other processes' CPU use during the run: {result['load']['others_cores_mean']:.2f} cores on average "
        f"(max section {result['load']['others_cores_max']:.2f})"
        + (" - WARNING: the machine was not quiet, timings are unreliable." if not result['load']['quiet'] else "."),
        "",
        "Time = median over repetitions after warm-up, spread = min-max; ratio = time / reference time "
        "(< 1 is faster); training GFLOP/s use 3 x forward FLOPs; % peak of the fp32 matmul (bf16 rows: bf16).",
        "",
        "| section | case | median ms | spread ms | reps | items/s | GFLOP/s | % peak | vs reference | other | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in result["rows"]:
        spread = f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}" if r["min_s"] is not None else ""
        vs = f"{r['ratio']:.3f}x {r['ref']}" if r["ratio"] is not None else ""
        other = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["extra"].items())
        lines.append(f"| {r['section']} | {r['name']} | {fmt(r['median_s'] and r['median_s'] * 1e3, '.1f')} | "
                     f"{spread} | {r['reps']} | {fmt(r['items_per_s'], '.2f')} | {fmt(r['gflops_per_s'], '.1f')} | "
                     f"{fmt(r['pct_peak'], '.0f')} | {vs} | {other} | {r['note']} |")
    lines.append("")
    per = result["load"]["per_section"]
    lines.append("Section wall time and the other processes' CPU use (cores): " + "; ".join(
        f"{k} {v['wall_s']:.0f} s / {v['others_cores']:.2f}" for k, v in per.items() if v) + ".")
    lines.append("")
    for sec, notes in result["notes"].items():
        for n in notes:
            lines.append(f"- {sec}: {n}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    reps = args.reps or (1 if args.quick else 3)
    ctx = Ctx(device=device, quick=args.quick, warmup=1, reps=reps, compile=not args.quick if args.compile is None else args.compile)
    names = list(SECTIONS) if not args.only else ["matmul"] + [n for n in SECTIONS if n in args.only and n != "matmul"]
    info = machine_info(device)
    print(f"benchmarks: {info['cpu_model']}, {info['torch_threads']} threads, native bf16 {info['native_bf16']}, "
          f"device {device}, sections {names}", flush=True)
    loads: dict[str, Any] = {}
    errors: dict[str, str] = {}
    overall = CpuMonitor()
    overall.start()
    t_start = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        mon = CpuMonitor()
        mon.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(SECTIONS[name]).run(ctx)
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            ctx.add(Row(name, "section failed", note=errors[name][:300]))
        loads[name] = mon.stop()
    total = overall.stop()
    others = [v["others_cores"] for v in loads.values() if v]
    load = {"others_cores_mean": total["others_cores"] if total else float("nan"),
            "others_cores_max": max(others) if others else float("nan"), "per_section": loads, "overall": total}
    load["quiet"] = bool(others) and load["others_cores_max"] <= QUIET_LIMIT_CORES
    now = dt.datetime.now(dt.UTC)
    result = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "full",
        "date": now.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t_start,
        "machine": info,
        "peak_gflops": ctx.peak,
        "load": load,
        "sections": names,
        "errors": errors,
        "notes": ctx.notes,
        "rows": [row_dict(r) for r in ctx.rows],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a partial or quick run gets its own name, so it never overwrites the day's full run
    stem = (f"{machine_slug(info)}-{now.strftime('%Y-%m-%d')}" + ("-quick" if args.quick else "")
            + ("-only-" + "-".join(args.only) if args.only else ""))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    print()
    print(md)
    if not load["quiet"]:
        print(f"WARNING: other processes used up to {load['others_cores_max']:.2f} cores during the run; "
              "on 2 cores two torch processes slow each other 3-5x - rerun on a quiet machine.", file=sys.stderr)
    print(f"wrote {out / stem}.json and .md ({result['duration_s']:.0f} s)")
    result["paths"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return result


if __name__ == "__main__":
    main()
