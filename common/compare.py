"""Compare a run's metrics.json with the published numbers of its paper.

Usage::

    python -m common.compare RUN_DIR [RUN_DIR ...] --paper dvxray [--entry mcbu] [--section best] [--json]
        [--markdown FILE] [--csv FILE] [--tolerance X]

Several RUN_DIRs (repeats of one setting, e.g. the seeds of ``dvxray/main.sh``) are summarised per
row as mean ± std (n) of the runs (sample std, 0 for one run); delta = mean - published.
``--markdown`` / ``--csv`` write the same table to a file. ``--tolerance X`` (in the paper's
``run_scale`` units) makes the exit status 1 when a headline metric's mean falls short of the
published value by more than X (per-class rows are shown, not gated).

Uncertainty (issue 19): when a RUN_DIR holds ``predictions.csv`` (every trainer writes it), each row
whose metric can be recomputed from it (mAP, AUC, acc1, rank-k, their per-class lists) gets a bootstrap
95 % interval (``--bootstrap N`` resamples of the test samples, whole patients where the predictions
carry patient ids, seeded by ``--seed``; ``--bootstrap 0`` turns it off) and the line says whether the
published number lies inside it. Several runs give mean ± std and the Student-t 95 % interval of the mean
instead. Runs whose ``split_manifest.json`` disagree on a split are not averaged: the error names the
split.

Protocol check: registry entries may carry machine-readable ``split`` / ``backbone`` /
``input_size`` fields; each is compared with the run's ``metrics.json`` ``protocol`` dict (or the
same key at its top level) and a mismatch is printed as a warning on stderr, as are the
``protocol.warnings`` the run recorded itself.

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

import csv
import json
import math
import re
import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.bootstrap import bootstrap_predictions, mean_interval
from common.data.errors import read_json
from common.predictions import (
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    PredictionsError,
    read_predictions,
    read_split_manifest,
)
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
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                        help="run folder(s) holding metrics.json; several are summarised as mean ± std (n)")
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
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as Markdown (default: off)")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV (default: off)")
    parser.add_argument(
        "--tolerance", type=float, default=None, metavar="X",
        help="exit 1 when a headline metric falls short of its published value by more than X, in the "
             "paper's run_scale units (default: no gate)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95 %% intervals from predictions.csv; 0 = off (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
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
    data = read_json(path, error=CompareError)
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


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-run :func:`compare` outputs (same entries) into mean ± std (n) rows.

    Args:
        results: one :func:`compare` dict per run, built from the same entries.

    Returns:
        The first result's layout with each row's ``run`` replaced by the mean over the runs that
        have a value, plus ``std`` (sample std; 0.0 for n = 1), ``n``, ``values`` (one per run,
        None where absent) and ``delta`` = mean - published; ``metrics_file`` becomes a list when
        there are several runs.
    """
    first = results[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        values = [r["rows"][i]["run"] for r in results]
        have = [v for v in values if v is not None]
        n = len(have)
        mean = sum(have) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in have) / (n - 1)) if n > 1 else (0.0 if n else None)
        pub = row["published"]
        new = {**row, "run": mean, "std": std, "n": n, "values": values,
               "delta": None if mean is None or pub is None else mean - pub}
        for key in ("ci_low", "ci_high", "ci_method", "published_in_ci"):
            new.pop(key, None)
        mean_ci = mean_interval(have)
        if mean_ci is not None:
            _set_ci(new, mean_ci[0], mean_ci[1], f"t interval of the mean of {n} runs")
        new["run_intervals"] = [(r["rows"][i].get("ci_low"), r["rows"][i].get("ci_high")) for r in results]
        rows.append(new)
    notes: list[str] = []
    for r in results:
        notes += [n for n in r["notes"] if n not in notes]
    files = [r["metrics_file"] for r in results]
    return {**first, "metrics_file": files[0] if len(files) == 1 else files, "n_runs": len(results),
            "rows": rows, "notes": notes}


def _base_key(run_key: str | None) -> str | None:
    return None if run_key is None else (run_key[: -len("_ema")] if run_key.endswith("_ema") else run_key)


def attach_intervals(result: dict[str, Any], boot: dict[str, Any], class_names: Sequence[str]) -> int:
    """Give each row of a single-run :func:`compare` result the bootstrap interval of its metric.

    Returns:
        The number of rows that got one. Rows get ``ci_low``, ``ci_high``, ``ci_method`` and
        ``published_in_ci`` (None when nothing is published).
    """
    scale = 100.0 if result["run_scale"] == "percent" else 1.0
    names = {_norm(c): i for i, c in enumerate(class_names)}
    done = 0
    for row in result["rows"]:
        iv = boot["intervals"].get(_base_key(row["run_key"]) or "")
        if iv is None:
            continue
        if row["class"] is not None:
            i = names.get(_norm(row["class"]))
            iv = iv[i] if isinstance(iv, list) and i is not None and i < len(iv) else None
        elif isinstance(iv, list):
            continue
        if iv is None:
            continue
        _set_ci(row, iv[0] * scale, iv[1] * scale,
                f"bootstrap {boot['n_boot']} x {boot['unit']} (seed {boot['seed']})")
        done += 1
    return done


def _set_ci(row: dict[str, Any], low: float, high: float, method: str) -> None:
    row.update(ci_low=low, ci_high=high, ci_method=method,
               published_in_ci=None if row["published"] is None else bool(low <= row["published"] <= high))


def _split_size(manifest: dict[str, Any], split: str) -> str:
    entry = manifest["splits"].get(split)
    return "absent" if entry is None else f"{entry.get('num_samples')} samples, sha256 {str(entry.get('sha256'))[:12]}"


def manifest_mismatch(manifests: Sequence[tuple[Path, dict[str, Any]]]) -> str | None:
    """Why runs with split manifests must not be averaged (the first differing split), or None."""
    from common.predictions import manifest_digest

    if len(manifests) < 2:
        return None
    (first_path, first), digest0 = manifests[0], manifest_digest(manifests[0][1])
    for path, man in manifests[1:]:
        digest = manifest_digest(man)
        for split in sorted(set(digest0) | set(digest)):
            if digest0.get(split) != digest.get(split):
                return (f"split {split!r} differs between {first_path.parent} ({_split_size(first, split)}) and "
                        f"{path.parent} ({_split_size(man, split)}): runs on different splits are not averaged")
    return None


def protocol_warnings(data: dict[str, Any], entries: Sequence[PublishedEntry], *, run_name: str = "this run") -> list[str]:
    """Compare the entries' protocol fields with what one run recorded.

    Args:
        data: parsed metrics.json; its ``protocol`` dict is read first, then its top level.
        entries: the compared registry entries.
        run_name: how the run is named in the message.

    Returns:
        One warning per (entry, field) whose value differs from the run's, e.g. "charm_best 0.8752
        was measured on the notebook split's 12.5 % subset; this run used the official split". A
        field the run did not record is not checked.
    """
    recorded = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
    out = []
    for e in entries:
        for key, want in e.protocol_fields().items():
            got = recorded.get(key, data.get(key))
            if got is None or _norm(str(got)) == _norm(str(want)):
                continue
            value = "(unpublished)" if e.value is None else f"{e.value:g}"
            if key == "split":
                where = e.split_desc or f"the {want} split"
                out.append(f"{e.name} {value} was measured on {where}; {run_name} used the {got} split")
            else:
                out.append(f"{e.name} {value} was measured with {key} {want}; {run_name} used {key} {got}")
    return out


def tolerance_failures(result: dict[str, Any], tolerance: float) -> list[str]:
    """Headline rows whose run value falls short of the published value by more than ``tolerance``.

    Args:
        result: :func:`compare` or :func:`aggregate` output.
        tolerance: allowed shortfall, in the result's ``run_scale`` units.

    Returns:
        One line per failing row (entry, metric, run, published, shortfall).
    """
    scale = result["run_scale"]
    return [f"{r['entry']} {r['metric']}: run {_fmt(r['run'], scale)} is {_fmt(r['published'] - r['run'], scale)} "
            f"below published {_fmt(r['published'], scale)} (tolerance {tolerance:g})"
            for r in result["rows"]
            if r["class"] is None and r["run"] is not None and r["published"] is not None
            and r["published"] - r["run"] > tolerance]


def _fmt(x: float | None, scale: str, *, signed: bool = False) -> str:
    if x is None:
        return "-"
    digits = 4 if scale == "fraction" else 2
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _run_cell(r: dict[str, Any], scale: str, n_runs: int) -> str:
    if n_runs <= 1 or r["run"] is None:
        return _fmt(r["run"], scale)
    return f"{_fmt(r['run'], scale)} ± {_fmt(r['std'], scale)} (n={r['n']})"


def table_rows(result: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and body cells of the comparison table (shared by the text, Markdown and CSV forms).

    Args:
        result: :func:`compare` or :func:`aggregate` output.

    Returns:
        ``(header, rows)``; the run column is ``mean ± std (n=N)`` when several runs were given.
    """
    scale, n_runs = result["run_scale"], result.get("n_runs", 1)
    with_ci = any(r.get("ci_low") is not None for r in result["rows"])
    header = ("entry", "metric", "run", "published", "delta", "source")
    if with_ci:
        header = ("entry", "metric", "run", "95% CI", "published", "in CI", "delta", "source")
    body = []
    for r in result["rows"]:
        pub = _fmt(r["published"], scale) if r["published"] is not None else ("n/p" if r["class"] is None else "-")
        cells = [r["entry"] if r["class"] is None else "", r["metric"], _run_cell(r, scale, n_runs), pub,
                 _fmt(r["delta"], scale, signed=True), r["source"] if r["class"] is None else ""]
        if with_ci:
            ci = "-" if r.get("ci_low") is None else f"[{_fmt(r['ci_low'], scale)}, {_fmt(r['ci_high'], scale)}]"
            inside = {True: "yes", False: "NO", None: "-"}[r.get("published_in_ci")]
            cells = [*cells[:3], ci, cells[3], inside, *cells[4:]]
        body.append(tuple(cells))
    return header, body


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    """Write the comparison table as a Markdown table (with a title line) to ``path``."""
    header, body = table_rows(result)
    files = result["metrics_file"] if isinstance(result["metrics_file"], list) else [result["metrics_file"]]
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"**{result['paper']}** vs published, {len(files)} run(s) [{result['section']}], "
             f"values as {result['run_scale']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in b) + " |" for b in body]
    if result["notes"]:
        lines += [""] + [f"- {n}" for n in result["notes"]]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def write_csv(result: dict[str, Any], path: str | Path) -> Path:
    """Write the comparison rows as CSV (numbers unformatted: mean, std, n, published, delta)."""
    cols = ("entry", "metric", "class", "run_key", "run", "std", "n", "published", "delta", "scale", "dataset",
            "source", "ci_low", "ci_high", "published_in_ci", "ci_method")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for r in result["rows"]:
            row = {"std": 0.0 if r["run"] is not None else None, "n": int(r["run"] is not None), **r}
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return out


def format_table(result: dict[str, Any], entries: Sequence[PublishedEntry]) -> str:
    """Render :func:`compare` output as a plain-text table followed by caveats and notes.

    Args:
        result: the dict returned by :func:`compare`.
        entries: the compared entries (for their caveats / notes).

    Returns:
        The text to print.
    """
    scale = result["run_scale"]
    header, body = table_rows(result)
    body = [(*b[:-1], b[-1] if len(b[-1]) <= 70 else b[-1][:67] + "...") for b in body]
    files = result["metrics_file"]
    what = files if isinstance(files, str) else f"{len(files)} runs, mean ± std (n)"
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"{result['paper']}: {what} [{result['section']}], values as {scale}"
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
    """Command-line entry point; returns the exit status (0 ok, 1 tolerance gate failed, 2 bad input)."""
    parser = ArgumentParser(parents=[get_args_parser()], description=__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    if args.tolerance is not None and args.tolerance < 0:
        parser.error(f"--tolerance must be >= 0, got {args.tolerance}")
    warnings: list[str] = []
    try:
        paper = load_paper(args.paper, args.results_dir)
        runs = [read_metrics(d) for d in args.run_dir]
        data0 = runs[0][0]
        # a run records its data set and whether it selected on the EMA model: use them unless told
        dataset = args.dataset
        if dataset is None and not args.entry and isinstance(data0.get("dataset"), str):
            dataset = data0["dataset"]
        entries = _select(paper, args.entry, args.all, dataset)
        results = []
        for data, path in runs:
            ema = args.ema or str(data.get("monitor", "")).endswith("_ema")
            results.append(compare(data, paper, entries=entries, section=args.section, path=path,
                                   strict=bool(args.entry), ema=ema))
            name = "this run" if len(runs) == 1 else f"run {path.parent}"
            # protocol notes the run recorded itself (e.g. which split it used and why that matters)
            protocol = data.get("protocol")
            own = (protocol.get("warnings") or []) if isinstance(protocol, dict) else []
            check = data.get("split_check")
            if isinstance(check, dict):  # the overlap check the trainer ran at start
                own = [*own, *(f"{name}: forbidden split overlap: {line}" for line in check.get("forbidden") or [])]
            for w in [*own, *protocol_warnings(data, entries, run_name=name)]:
                if w not in warnings:
                    warnings.append(w)
        if args.bootstrap < 0:
            raise CompareError(f"--bootstrap must be >= 0, got {args.bootstrap}")
        manifests = [(path, read_split_manifest(path.parent)) for _, path in runs
                     if (path.parent / MANIFEST_FILE).is_file()]
        mismatch = manifest_mismatch(manifests)
        if mismatch is not None:
            raise CompareError(mismatch)
        if args.bootstrap > 0:
            for (data, path), res in zip(runs, results):
                if (path.parent / PREDICTIONS_FILE).is_file():
                    preds = read_predictions(path.parent / PREDICTIONS_FILE)
                    boot = bootstrap_predictions(preds, n_boot=args.bootstrap, seed=args.seed)
                    names = getattr(preds, "class_names", None) or data.get("class_names") or []
                    attach_intervals(res, boot, names)
                    res["bootstrap"] = {k: boot[k] for k in ("n_boot", "seed", "unit", "num_units")}
                else:
                    print(f"compare: note: {path.parent} has no {PREDICTIONS_FILE}: no confidence intervals",
                          file=sys.stderr)
        result = aggregate(results) if len(results) > 1 else {**results[0], "n_runs": 1}
        if args.markdown:
            write_markdown(result, args.markdown)
        if args.csv:
            write_csv(result, args.csv)
    except (CompareError, ResultsError, PredictionsError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"compare: error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"compare: warning: {w}", file=sys.stderr)
    result["protocol_warnings"] = warnings
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_table(result, entries))
    if args.tolerance is not None:
        failures = tolerance_failures(result, args.tolerance)
        for f in failures:
            print(f"compare: below tolerance: {f}", file=sys.stderr)
        if failures:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
