"""Compare a run's metrics.json with the published numbers of its paper.

Usage::

    python -m common.compare RUN_DIR --paper dvxray [--entry mcbu] [--section best] [--json]

Reads ``RUN_DIR/metrics.json`` (written by ``common.engine.fit``: ``{"monitor", "best_epoch",
"best": {...}, "final": {...}, "class_names": [...] (optional)}``) and the paper's registry file
``common/results/<paper>.yaml``, then prints one row per registry entry (metric, run value,
published value, delta = run - published, source) plus one row per class for entries that have
per-class values. Published values are converted to the paper's ``run_scale`` first, so a number
published in percent is compared with a fraction correctly.

A metric is looked up in the chosen section under exactly its registry key (``mAP``), or
``<key>_ema`` with ``--ema`` (the engine's EMA evaluation); the key used is shown in ``--json``.
Per-class lists are matched to class names by name (case, spaces and underscores ignored) using
``class_names`` from metrics.json, or the registry's ``class_order`` when metrics.json has none
(the output says which). Errors are one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import math
import re
import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.results import PaperResults, PublishedEntry, ResultsError, convert_scale, load_paper

METRICS_FILE = "metrics.json"


class CompareError(ValueError):
    """Bad input to the comparison (missing file, missing key, ...); the message is one line."""


def get_args_parser() -> ArgumentParser:
    """Build the compare parser with ``add_help=False`` so other scripts can embed it.

    Returns:
        The argument parser (flags: RUN_DIR, --paper, --entry, --all, --dataset, --section, --json,
        --results-dir).
    """
    parser = ArgumentParser("Compare a run's metrics.json with published results", add_help=False)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.json")
    parser.add_argument("--paper", required=True, help="registry to compare with (a file stem in common/results/)")
    parser.add_argument(
        "--entry", action="append", default=None, metavar="NAME",
        help="registry entry to compare; repeatable (default: the entries marked show_by_default)",
    )
    parser.add_argument("--all", action="store_true", help="compare every registry entry (default: off)")
    parser.add_argument(
        "--dataset", default=None,
        help="keep only entries whose dataset contains this text, ignoring case and punctuation "
             "(default: the run's metrics.json 'dataset', else no filter)",
    )
    parser.add_argument(
        "--section", default="best", choices=("best", "final"),
        help="metrics.json section to read (default: best)",
    )
    parser.add_argument(
        "--ema", action="store_true",
        help="compare the EMA model's values (<metric>_ema keys, written with eval_ema) "
             "(default: on when the run's monitored metric is an _ema one)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument(
        "--results-dir", default=None,
        help="folder with <paper>.yaml registry files (default: the common/results package)",
    )
    return parser


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def read_metrics(run_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """Load ``RUN_DIR/metrics.json``.

    Args:
        run_dir: the run's output folder.

    Returns:
        ``(parsed metrics dict, path of the file)``.

    Raises:
        CompareError: the file is missing, not valid JSON or not a JSON object.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise CompareError(f"metrics file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: top level must be a JSON object")
    return data, path


def _lookup(section: dict[str, Any], key: str) -> tuple[str, Any] | None:
    return (key, section[key]) if key in section else None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
        return None
    return float(x)


def _select(paper: PaperResults, names: Sequence[str] | None, all_entries: bool, dataset: str | None):
    if names:
        entries = [paper.entry(n) for n in names]
    elif all_entries:
        entries = list(paper.entries)
    else:
        entries = [e for e in paper.entries if e.show_by_default]
    if dataset is not None:
        # "veri776" matches "VeRi-776", "cub200" matches "CUB-200-2011"
        key = re.sub(r"[^0-9a-z]+", "", dataset.lower())
        kept = [e for e in entries if key in re.sub(r"[^0-9a-z]+", "", e.dataset.lower())]
        if not kept:
            datasets = sorted({e.dataset for e in entries})
            raise CompareError(f"no {paper.paper} entry matches --dataset {dataset!r}; datasets: {' | '.join(datasets)}")
        entries = kept
    return entries


def _class_names(data: dict[str, Any], section: dict[str, Any], paper: PaperResults, path: Path):
    for where, names in (("metrics.json class_names", data.get("class_names")),
                         ("metrics.json section class_names", section.get("class_names"))):
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CompareError(f"{path}: class_names must be a list of strings")
            return names, where
    if paper.class_order is not None:
        return list(paper.class_order), f"{paper.paper}.yaml class_order (metrics.json has no class_names)"
    return None, None


def _row(entry: PublishedEntry, paper: PaperResults, *, cls: str | None, published: float | None,
         run_key: str | None, run: float | None) -> dict[str, Any]:
    pub = None if published is None else convert_scale(published, entry.scale, paper.run_scale)
    return {
        "entry": entry.name,
        "metric": entry.metric if cls is None else f"{entry.per_class_key}[{cls}]",
        "class": cls,
        "run_key": run_key,
        "run": run,
        "published": pub,
        "delta": None if run is None or pub is None else run - pub,
        "scale": paper.run_scale,
        "published_verbatim": entry.published,
        "dataset": entry.dataset,
        "source": entry.source,
        "source_type": entry.source_type,
        "caveat": entry.caveat,
        "note": entry.note,
    }


def compare(
    data: dict[str, Any],
    paper: PaperResults,
    *,
    entries: Sequence[PublishedEntry],
    section: str = "best",
    path: Path | str = METRICS_FILE,
    strict: bool = False,
    ema: bool = False,
) -> dict[str, Any]:
    """Build the comparison rows of a parsed metrics.json against registry entries.

    Args:
        data: parsed metrics.json.
        paper: the paper's registry.
        entries: the registry entries to compare.
        section: ``"best"`` or ``"final"``.
        path: metrics.json path, used in messages.
        strict: raise when an entry's metric is absent from the run (used when entries were
            requested by name); otherwise the row shows no run value.
        ema: read ``<metric>_ema`` / ``<per_class_key>_ema`` (the EMA model's values).

    Returns:
        ``{"paper", "metrics_file", "section", "run_scale", "rows": [...], "notes": [...]}``; each
        row has entry, metric, class, run_key, run, published (in ``run_scale``), delta, scale,
        published_verbatim, dataset, source, source_type, caveat and note.
    """
    sec = data.get(section)
    if not isinstance(sec, dict):
        raise CompareError(f"{path}: no '{section}' section (top-level keys: {', '.join(sorted(data)) or 'none'})")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    names, names_from = None, None
    suffix = "_ema" if ema else ""
    for entry in entries:
        found = _lookup(sec, entry.metric + suffix)
        if found is None and strict:
            raise CompareError(
                f"{path}: '{section}' has no key {entry.metric + suffix!r} for entry {entry.name!r}; "
                f"keys: {', '.join(sorted(sec))}"
            )
        run_key, run_val = found if found is not None else (None, None)
        if found is not None and _number(run_val) is None and run_val is not None:
            raise CompareError(f"{path}: '{section}.{run_key}' must be a number, got {type(run_val).__name__}")
        rows.append(_row(entry, paper, cls=None, published=entry.value, run_key=run_key, run=_number(run_val)))
        if entry.per_class is None:
            continue
        found_pc = _lookup(sec, entry.per_class_key + suffix)
        if found_pc is None:
            notes.append(f"{entry.name}: per-class values not compared ('{section}' has no {entry.per_class_key + suffix})")
            continue
        pc_key, values = found_pc
        if names is None:
            names, names_from = _class_names(data, sec, paper, Path(path))
        if names is None:
            raise CompareError(f"{path}: {pc_key} needs class_names (none in metrics.json or {paper.paper}.yaml)")
        if not isinstance(values, list) or len(values) != len(names):
            n = len(values) if isinstance(values, list) else type(values).__name__
            raise CompareError(f"{path}: '{section}.{pc_key}' has {n} values but there are {len(names)} class names")
        run_pc = {_norm(c): _number(v) for c, v in zip(names, values)}
        for cls, pub in entry.per_class.items():
            rows.append(_row(entry, paper, cls=cls, published=pub, run_key=pc_key, run=run_pc.get(_norm(cls))))
            if _norm(cls) not in run_pc:
                notes.append(f"{entry.name}: class {cls!r} not among the run's class names")
    if names_from is not None:
        notes.insert(0, f"class names from {names_from}")
    return {
        "paper": paper.paper,
        "metrics_file": str(path),
        "section": section,
        "ema": ema,
        "run_scale": paper.run_scale,
        "rows": rows,
        "notes": notes,
    }


def _fmt(x: float | None, scale: str, *, signed: bool = False) -> str:
    if x is None:
        return "-"
    digits = 4 if scale == "fraction" else 2
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_table(result: dict[str, Any], entries: Sequence[PublishedEntry]) -> str:
    """Render :func:`compare` output as a plain-text table followed by caveats and notes.

    Args:
        result: the dict returned by :func:`compare`.
        entries: the compared entries (for their caveats / notes).

    Returns:
        The text to print.
    """
    scale = result["run_scale"]
    header = ("entry", "metric", "run", "published", "delta", "source")
    body = []
    for r in result["rows"]:
        pub = _fmt(r["published"], scale) if r["published"] is not None else ("n/p" if r["class"] is None else "-")
        src = r["source"] if len(r["source"]) <= 70 else r["source"][:67] + "..."
        body.append((r["entry"] if r["class"] is None else "", r["metric"], _fmt(r["run"], scale), pub,
                     _fmt(r["delta"], scale, signed=True), src if r["class"] is None else ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"{result['paper']}: {result['metrics_file']} [{result['section']}], values as {scale}"
           + (" (n/p = not published)" if any(r["published"] is None for r in result["rows"]) else ""),
           line.format(*header).rstrip(), line.format(*("-" * w for w in widths)).rstrip()]
    out += [line.format(*b).rstrip() for b in body]
    out.append("caveats:")
    out += [f"  {e.name}: {e.note + ' | ' if e.note else ''}{e.caveat}" for e in entries]
    if result["notes"]:
        out.append("notes:")
        out += [f"  {n}" for n in result["notes"]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status (0 ok, 2 on bad input)."""
    parser = ArgumentParser(parents=[get_args_parser()], description=__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    try:
        paper = load_paper(args.paper, args.results_dir)
        data, path = read_metrics(args.run_dir)
        # a run records its data set and whether it selected on the EMA model: use them unless told
        dataset = args.dataset
        if dataset is None and not args.entry and isinstance(data.get("dataset"), str):
            dataset = data["dataset"]
        entries = _select(paper, args.entry, args.all, dataset)
        ema = args.ema or str(data.get("monitor", "")).endswith("_ema")
        result = compare(data, paper, entries=entries, section=args.section, path=path,
                         strict=bool(args.entry), ema=ema)
    except (CompareError, ResultsError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    # protocol notes the run recorded itself (e.g. which split it used and why that matters here)
    protocol = data.get("protocol")
    if isinstance(protocol, dict):
        for warning in protocol.get("warnings") or []:
            print(f"compare: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_table(result, entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
