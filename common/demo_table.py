"""Print one row per run folder holding a metrics.json: ``python -m common.demo_table RUNS_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _scalar_items(metrics: dict, limit: int = 6) -> list[tuple[str, float]]:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return items[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs_dir", type=Path)
    args = parser.parse_args(argv)
    files = sorted(args.runs_dir.rglob("metrics.json")) if args.runs_dir.is_dir() else []
    if not files:
        print(f"no metrics.json under {args.runs_dir}")
        return 0
    width = max(len(str(f.parent.relative_to(args.runs_dir))) for f in files)
    print(f"{'run':<{width}}  monitor  best metrics (final for evaluation-only runs)")
    for f in files:
        try:
            m = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            print(f"{f}: unreadable ({exc})", file=sys.stderr)
            continue
        best = m.get("best") or m.get("final") or {}
        text = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalar_items(best))
        print(f"{str(f.parent.relative_to(args.runs_dir)):<{width}}  {m.get('monitor', '-'):<7}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
