"""Check a real data folder before training: ``python -m common.data.check FORMAT ROOT``.

Usage::

    python -m common.data.check FORMAT ROOT [--opt KEY=VALUE ...] [--decode] [--max-files N]
                                [--workers N] [--show N] [--json] [--no-progress]

FORMAT is one of the names ``python -m common.synth`` writes (dvxray, chestxray14, mimic, padchest,
xmnet, cub200, veri776, market1501). The folder is read with the trainer's own parser (declared by
the paper in the ``xray_papers.data_formats`` entry-point group, see :mod:`common.data.description`),
so a malformed list stops the check with the message the trainer would stop with. Then:

* every listed file is checked: it exists, is not empty, PIL identifies it from its header, and a
  PNG ends with its IEND chunk / a JPEG with its end-of-image marker (a truncated copy fails here);
  ``--decode`` also decodes every pixel (what the data loader will do; slower). ``--max-files N``
  opens only a random sample of N files (seed 0); existence and size are still checked for all;
* counts per split (samples, files, patients / studies / identities) and per class;
* overlap between the splits at every level the data has (image, study, patient, identity), by
  :func:`common.splits.split_overlaps`, with the overlaps the protocol allows (re-ID query / gallery)
  shown as allowed.

Exit status: 0 clean, 1 problems found (missing or unreadable files, a forbidden overlap, a list the
parser rejects), 2 bad usage (unknown format or option, ROOT not a folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import entry_points
from common.data.description import DatasetDescription, OptionError
from common.data.errors import DataError

#: entry-point group in which each format's ``describe(root, **opts) -> DatasetDescription`` is declared
DATA_FORMAT_GROUP = "xray_papers.data_formats"
#: classes shown one per row up to this many; more are summarised (min / median / max, empty ones)
MAX_CLASS_ROWS = 40
_REGISTERED: dict[str, Callable[..., DatasetDescription]] = {}
_TAIL = 64
_PLURAL = {"patient": "patients", "study": "studies", "identity": "identities"}


class UsageError(ValueError):
    """Bad command: unknown format or option, ROOT not a folder (exit status 2)."""


def register_format(name: str, func: Callable[..., DatasetDescription]) -> None:
    """Register ``func(root, **opts) -> DatasetDescription`` as format ``name`` (before any declared one)."""
    _REGISTERED[name] = func


def declared_formats() -> dict[str, str]:
    """format -> "module:function" declared in :data:`DATA_FORMAT_GROUP`."""
    return entry_points.declared(DATA_FORMAT_GROUP)


def format_names() -> list[str]:
    return sorted({*declared_formats(), *_REGISTERED})


def describe(fmt: str, root: str | Path, **opts: str) -> DatasetDescription:
    """The description of ``root`` in format ``fmt``, from the format's declared reader.

    Raises:
        UsageError: unknown format, ROOT not a folder, or an option the reader does not take.
        DataError: the reader's own error (a missing or malformed list file).
    """
    func = _REGISTERED.get(fmt)
    if func is None:
        spec = declared_formats().get(fmt)
        func = entry_points.load(spec) if spec else None
    if func is None:
        raise UsageError(f"unknown format {fmt!r}; choose from: {', '.join(format_names())}")
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"ROOT is not a folder: {root}")
    try:
        return func(root, **opts)
    except OptionError as exc:
        raise UsageError(f"{fmt}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class FileProblem:
    """A listed file that the data loader would fail on: ``kind`` is missing / empty / unreadable."""

    path: str
    kind: str
    reason: str
    split: str
    where: str | None = None


def _open_problem(path: str, decode: bool) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt = img.format
            if decode:
                img.load()
        if fmt in ("PNG", "JPEG"):
            with open(path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - _TAIL))
                tail = fh.read()
            if fmt == "PNG" and not tail.endswith(b"IEND\xaeB`\x82"):
                return "truncated: the PNG does not end with its IEND chunk"
            if fmt == "JPEG" and b"\xff\xd9" not in tail:
                return "truncated: the JPEG has no end-of-image marker"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}".replace(f" {path!r}", "").replace(path, "")
    return None


def check_file(path: str, *, open_it: bool = True, decode: bool = False) -> tuple[str, str] | None:
    """``(kind, reason)`` of what is wrong with one file, or None.

    Args:
        path: the file.
        open_it: also identify it by its header (and check a PNG / JPEG is not truncated).
        decode: also decode every pixel.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ("missing", "not found")
    if not os.path.isfile(path):
        return ("missing", "not a regular file")
    if st.st_size == 0:
        return ("empty", "0 bytes")
    if open_it:
        reason = _open_problem(path, decode)
        if reason is not None:
            return ("unreadable", reason)
    return None


def listed_files(desc: DatasetDescription) -> list[tuple[str, str, str | None]]:
    """``(path, split, where)`` of every distinct file the splits need, in split order."""
    seen: dict[str, tuple[str, str, str | None]] = {}
    for split, samples in desc.splits.items():
        for k, files in enumerate(samples.files):
            where = samples.sources[k] if samples.sources is not None else None
            for path in files:
                seen.setdefault(path, (path, split, where))
    return list(seen.values())


def check_files(desc: DatasetDescription, *, decode: bool = False, max_files: int | None = None,
                workers: int = 4, progress: bool = True) -> tuple[list[FileProblem], dict[str, int]]:
    """Check every listed file (see the module docstring); returns the problems and the counts."""
    from tqdm import tqdm

    files = listed_files(desc)
    opened = set(range(len(files)))
    if max_files is not None and max_files < len(files):
        opened = set(random.Random(0).sample(range(len(files)), max_files))

    def one(i: int) -> tuple[str, str] | None:
        return check_file(files[i][0], open_it=i in opened, decode=decode)

    problems: list[FileProblem] = []
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(files), desc="checking files", unit="file", disable=None if progress else True,
                 file=sys.stderr) as bar:
        for i, result in enumerate(pool.map(one, range(len(files)), chunksize=64)):
            bar.update()
            if result is not None:
                path, split, where = files[i]
                problems.append(FileProblem(path, result[0], result[1], split, where))
    counts = {"files": len(files), "opened": len(opened)}
    for kind in ("missing", "empty", "unreadable"):
        counts[kind] = sum(p.kind == kind for p in problems)
    return problems, counts


# ----------------------------------------------------------------------------------------------
# counts and the report


def class_counts(desc: DatasetDescription) -> dict[str, list[int]]:
    """split -> samples per class (positives; single-label: the class), for splits with labels."""
    n = len(desc.class_names or ())
    out = {}
    for split, samples in desc.splits.items():
        if samples.labels is None:
            continue
        counts = [0] * max(n, 1 + max((k for lab in samples.labels for k in lab), default=-1))
        for lab in samples.labels:
            for k in lab:
                counts[k] += 1
        out[split] = counts
    return out


def run_check(fmt: str, root: str | Path, opts: Mapping[str, str] | None = None, *, decode: bool = False,
              max_files: int | None = None, workers: int = 4, progress: bool = True) -> dict[str, Any]:
    """Describe, check and report ``root`` (a JSON-able dict; ``ok`` False when a problem was found).

    Raises:
        UsageError: see :func:`describe`.
    """
    from common.splits import split_overlaps

    start = time.perf_counter()
    report: dict[str, Any] = {"format": fmt, "root": str(root), "problems": [], "warnings": [], "notes": []}
    try:
        desc = describe(fmt, root, **dict(opts or {}))
    except DataError as exc:
        report["problems"].append(f"the reader stops (as the trainer would): {exc}")
        report.update(ok=False, seconds=time.perf_counter() - start)
        return report
    report["notes"] = list(desc.notes)
    report["class_names"] = list(desc.class_names) if desc.class_names is not None else None
    report["splits"] = {
        name: {"samples": len(s.ids), "files": sum(len(f) for f in s.files),
               **{_PLURAL.get(level, level): len(set(v)) for level, v in s.levels.items() if level != "camera"}}
        for name, s in desc.splits.items()}
    counts = class_counts(desc)
    report["class_counts"] = counts
    names = report["class_names"] or []
    for split, per_class in counts.items():
        empty = [names[k] if k < len(names) else str(k) for k, c in enumerate(per_class) if c == 0]
        if empty:
            report["warnings"].append(f"{split}: {len(empty)} class(es) without a sample: {', '.join(empty[:10])}"
                                      + (", ..." if len(empty) > 10 else ""))
    problems, file_counts = check_files(desc, decode=decode, max_files=max_files, workers=workers, progress=progress)
    report["files"] = {**file_counts, "mode": "decode" if decode else "header",
                       "problems": [vars(p) for p in problems]}
    for kind in ("missing", "empty", "unreadable"):
        if file_counts[kind]:
            report["problems"].append(f"{file_counts[kind]} {kind} file(s)")
    levels = {name: {"ids": s.ids, **s.levels} for name, s in desc.splits.items()}
    overlap = split_overlaps(levels, allowed=desc.allowed_overlaps)
    report["overlap"] = overlap
    report["problems"] += [f"forbidden overlap: {line}" for line in overlap["forbidden"]]
    report.update(ok=not report["problems"], seconds=time.perf_counter() - start)
    return report


def _class_table(report: Mapping[str, Any]) -> list[str]:
    counts: dict[str, list[int]] = report.get("class_counts") or {}
    if not counts:
        return []
    names = report.get("class_names") or []
    splits = list(counts)
    width = max([len(str(n)) for n in names] + [8])
    n = max(len(c) for c in counts.values())

    def label(k: int) -> str:
        return names[k] if k < len(names) else f"class {k}"

    if n <= MAX_CLASS_ROWS:
        out = ["samples per class:", "  " + "class".ljust(width) + "".join(f"{s:>12}" for s in splits)]
        for k in range(n):
            out.append("  " + label(k).ljust(width) + "".join(f"{counts[s][k]:>12,}" for s in splits))
        return out
    out = [f"samples per class ({n} classes):"]
    for s in splits:
        c = counts[s]
        lo, hi = min(range(n), key=c.__getitem__), max(range(n), key=c.__getitem__)
        out.append(f"  {s}: min {c[lo]} ({label(lo)}), median {statistics.median(c):g}, max {c[hi]} ({label(hi)})")
    return out


def format_report(report: Mapping[str, Any], *, show: int = 10) -> str:
    """The report as the terminal shows it; ``show`` file problems are listed by name."""
    from common.splits import format_report as format_overlap

    out = [f"data check: {report['format']} {report['root']}"]
    out += [f"  note: {n}" for n in report.get("notes", ())]
    if "splits" in report:
        out.append("splits:")
        for name, s in report["splits"].items():
            extra = "".join(f", {v:,} {k}" for k, v in s.items() if k not in ("samples", "files"))
            out.append(f"  {name:<10} {s['samples']:>9,} samples, {s['files']:,} files{extra}")
        out += _class_table(report)
    if "files" in report:
        f = report["files"]
        how = "decoded" if f["mode"] == "decode" else "opened (header and end marker)"
        out.append(f"files: {f['files']:,} checked for existence and size, {f['opened']:,} {how}: "
                   f"{f['missing']:,} missing, {f['empty']:,} empty, {f['unreadable']:,} unreadable")
        for kind in ("missing", "empty", "unreadable"):
            listed = [p for p in f["problems"] if p["kind"] == kind]
            for p in listed[:show]:
                where = f" (listed at {p['where']})" if p["where"] else ""
                out.append(f"  {kind}: {p['path']}{where}: {p['reason']}")
            if len(listed) > show:
                out.append(f"  ... and {len(listed) - show:,} more {kind} file(s) (--show N lists more)")
    if "overlap" in report:
        out.append(format_overlap(report["overlap"], title="overlap between splits:"))
    out += [f"warning: {w}" for w in report.get("warnings", ())]
    if report["ok"]:
        out.append(f"OK: no problem found ({report['seconds']:.1f} s)")
    else:
        out += [f"problem: {p}" for p in report["problems"]]
        out.append(f"FAILED: {len(report['problems'])} problem(s) ({report['seconds']:.1f} s)")
    return "\n".join(out)


def _parse_opts(pairs: Sequence[str]) -> dict[str, str]:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--opt {pair!r}: expected KEY=VALUE")
        opts[key] = value
    return opts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m common.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("format", metavar="FORMAT", help="dvxray, chestxray14, mimic, padchest, xmnet, cub200, "
                                                         "veri776 or market1501 (the common.synth names)")
    parser.add_argument("root", metavar="ROOT", help="the data folder (the trainer's --data_dir / data_root)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a reader option of the format (repeatable), e.g. dvxray num_classes=15, padchest "
                             "val_split=0.1 seed=42, mimic uncertain_policy=ones; see the format's describe()")
    parser.add_argument("--decode", action="store_true",
                        help="decode every image fully (default: header and end-marker read only)")
    parser.add_argument("--max-files", type=int, default=None, metavar="N",
                        help="open only a random sample of N files (existence and size are checked for all)")
    parser.add_argument("--workers", type=int, default=4, help="threads reading files (default: 4)")
    parser.add_argument("--show", type=int, default=10, metavar="N",
                        help="missing / unreadable files listed by name, per kind (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for flag, value, low in (("--max-files", args.max_files, 1), ("--workers", args.workers, 1), ("--show", args.show, 0)):
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    try:
        report = run_check(args.format, args.root, _parse_opts(args.opt), decode=args.decode,
                           max_files=args.max_files, workers=args.workers, progress=not args.no_progress)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report, show=args.show))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
