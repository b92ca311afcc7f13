"""Tables of the demo's runs.

* ``python -m common.demo_table RUNS_DIR``: one row per run folder holding a metrics.json.
* ``python -m common.demo_table --summary STATUS_TSV``: the main job's summary, one row per paper:
  status, wall time, the command, the main run's final metrics, the published headline number with
  the delta, and where its outputs and pictures are. STATUS_TSV has one line per paper
  ``paper<TAB>status<TAB>seconds<TAB>command<TAB>main run folder`` (written by shell/demo.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: what the demo changes with respect to each paper's setting (shown under the summary)
SCALE_NOTES: dict[str, str] = {
    "dvxray": "synthetic DvXray pairs (320); convnextv2_atto from a random-init 'pretrained' file; 32 px; 8 epochs "
              "(+ main.sh 2-6 at 1 epoch)",
    "charm_xray": "synthetic ChestX-ray14 (400 images); resnet18, no pretrained weights; 48 px; 1+4+1 epochs; "
                  "grid of 2 settings instead of 26",
    "cxrlt": "synthetic MIMIC / PadChest (160 / 240 images); convnextv2_atto, --pretrained false; 64 px; 1 epoch "
             "per phase",
    "xmnet": "synthetic soybean leaves (150 images); resnet18; 64 px; 2-6 epochs; 30 Optuna trials instead of 150",
    "dcal": "synthetic CUB / VeRi / Market (200 / 96 / 96 images); ViT with 2 SA + 2 PWCA blocks, 8 px patches; "
            "32-64 px; 1 epoch",
}


def _scalar_items(metrics: dict, limit: int = 6) -> list[tuple[str, float]]:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return items[:limit]


def _headline(paper: str, run: Path) -> tuple[str, str]:
    """(final metrics text, "published (delta)" text) of a run's metrics.json against its registry."""
    from common.compare import CompareError, _select, compare, read_metrics
    from common.results import ResultsError, load_paper

    try:
        data, path = read_metrics(run)
    except CompareError:
        return "no metrics.json", "-"
    final = data.get("final") or data.get("best") or {}
    metrics = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalar_items(final, 3))
    try:
        reg = load_paper(paper)
        dataset = data.get("dataset") if isinstance(data.get("dataset"), str) else None
        try:
            entries = _select(reg, None, False, dataset)
        except CompareError:
            entries = _select(reg, None, False, None)
        result = compare(data, reg, entries=entries, section="final" if data.get("final") else "best", path=path)
    except (CompareError, ResultsError) as err:
        return metrics, f"compare failed: {err}"
    row = next((r for r in result["rows"] if r["class"] is None and r["published"] is not None and r["run"] is not None),
               None)
    if row is None:
        row = next((r for r in result["rows"] if r["class"] is None and r["run"] is not None), None)
        return metrics, "-" if row is None else f"{row['entry']}: not published"
    return metrics, f"{row['entry']} {row['metric']} {row['published']:.4f} (delta {row['delta']:+.4f})"


def summary(status_file: Path) -> str:
    """The main job's summary table (see the module docstring for the input)."""
    rows: list[dict[str, Any]] = []
    for line in status_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        paper, status, seconds, command, run = (line.split("\t") + [""] * 5)[:5]
        run_dir = Path(run) if run else None
        metrics, published = _headline(paper, run_dir) if run_dir is not None and status != "skipped" else ("-", "-")
        # the run's own pictures, then predict.py --explain's (shell/demo.sh writes them under predict/)
        pictures = [str(p) for pattern in ("*.png", "predict/*_explain/*.png") for p in sorted(run_dir.glob(pattern))] \
            if run_dir is not None and run_dir.is_dir() else []
        rows.append({"paper": paper, "status": status, "time": f"{float(seconds or 0) / 60:.1f} min",
                     "command": command, "metrics": metrics, "published": published,
                     "outputs": str(run_dir) if run_dir else "-", "pictures": pictures})
    out = ["", "=" * 100, "MAIN JOB SUMMARY  (synthetic demo data and tiny models: the deltas measure nothing but "
           "that the pipeline runs)", "=" * 100]
    for r in rows:
        out.append(f"{r['paper']:<11} {r['status']:<8} {r['time']:>8}  {r['command']}")
        out.append(f"{'':<11} final:     {r['metrics']}")
        out.append(f"{'':<11} published: {r['published']}")
        out.append(f"{'':<11} outputs:   {r['outputs']}")
        if r["pictures"]:
            out.append(f"{'':<11} pictures:  " + f"\n{'':<11}            ".join(r["pictures"]))
        if r["paper"] in SCALE_NOTES:
            out.append(f"{'':<11} scale:     {SCALE_NOTES[r['paper']]}")
    out.append("Compare a real run: python -m common.compare RUN_DIR [RUN_DIR ...] --paper P; pictures: "
               "python -m common.plots RUN_DIR")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, nargs="?", help="folder searched for metrics.json files")
    parser.add_argument("--summary", type=Path, default=None, metavar="STATUS_TSV",
                        help="print the main job's per-paper summary from this status file instead")
    args = parser.parse_args(argv)
    if args.summary is not None:
        if not args.summary.is_file():
            print(f"demo_table: error: --summary {args.summary}: file not found", file=sys.stderr)
            return 2
        print(summary(args.summary))
        return 0
    if args.runs_dir is None:
        parser.error("give RUNS_DIR or --summary STATUS_TSV")
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
