"""Overlap between the splits of a run, at every level the data has.

Usage::

    python -m common.splits check RUN_DIR [--json]
    python -m common.splits check [NAME=]LIST [NAME=]LIST ... [--allow A:B:LEVEL] [--json]

``RUN_DIR`` reads the run's ``split_manifest.json`` (written by every trainer, see
:mod:`common.predictions`); its protocol's allowed overlaps come with it. ``LIST`` is a split list: a
CSV (the id column is the first of ImageID / Image Index / Image_Index / dicom_id / id / path present,
else the first column; patient and study columns are found by name: PatientID / Patient ID /
subject_id, study_id / StudyID), a text list (the first field of each line), or a folder of images (re-ID
``query/``); re-ID names ``<pid>_c<cam>...`` also give the identity and camera. The split's name is
NAME, else the file's stem.

Levels: ``image`` (the sample id), ``study``, ``patient``, ``identity``, and ``identity_camera`` (an
identity seen by the same camera). Every overlap between two splits is forbidden unless the protocol
allows it (it is then counted and shown with its reason): re-ID query and gallery share identities by
design, and their same-camera pairs are dropped by the Market-1501 evaluation rule; CHARM's
``charm_notebook`` protocol trains on patients it later scores. Exit status: 0 no forbidden overlap,
1 a forbidden overlap, 2 bad input.

Library use: :func:`split_overlaps` (``common.data.check`` and the trainers call it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

#: manifest / split keys -> the level name shown
LEVEL_NAMES = {"ids": "image", "study": "study", "patient": "patient", "identity": "identity"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_REID_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_ID_COLUMNS = ("ImageID", "Image Index", "Image_Index", "dicom_id", "id", "path", "image")
_PATIENT_COLUMNS = ("PatientID", "Patient ID", "Patient_ID", "subject_id", "patient")
_STUDY_COLUMNS = ("study_id", "StudyID", "study")
MAX_EXAMPLES = 5


class SplitCheckError(ValueError):
    """Bad input to the split check; one-line message."""


def reid_rules(query: str = "query", gallery: str = "gallery") -> list[dict[str, Any]]:
    """The overlaps the re-ID protocol allows between query and gallery."""
    return [
        {"splits": [query, gallery], "levels": ["identity"], "reason": "by design: queries are searched for in the gallery"},
        {"splits": [query, gallery], "levels": ["identity_camera"],
         "reason": "same identity and camera: dropped from each query's ranking by the Market-1501 evaluation rule"},
    ]


def _allows(rule: Mapping[str, Any], a: str, b: str, level: str) -> bool:
    names = list(rule.get("splits") or ["*", "*"])
    pair_ok = any(x in ("*", a) and y in ("*", b) for x, y in ((names[0], names[1]), (names[1], names[0])))
    return pair_ok and level in rule.get("levels", ())


def _level_values(levels: Mapping[str, Sequence[Any]]) -> dict[str, list[str]]:
    out = {LEVEL_NAMES.get(k, k): [str(v) for v in vals] for k, vals in levels.items()
           if vals is not None and k != "camera"}
    if "identity" in levels and levels.get("camera") is not None:
        out["identity_camera"] = [f"{p}/c{c}" for p, c in zip(levels["identity"], levels["camera"])]
    return out


def split_overlaps(splits: Mapping[str, Mapping[str, Sequence[Any]]], *,
                   allowed: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Overlap between every pair of splits at every level both have.

    Args:
        splits: ``{split: {"ids": [...], "patient": [...], "study": [...], "identity": [...],
            "camera": [...]}}``; level lists are per sample (aligned with ``ids``); any level may be absent.
        allowed: rules ``{"splits": [A, B], "levels": [...], "reason": "..."}`` (``"*"`` matches any
            split); an overlap a rule covers is counted but not forbidden.

    Returns:
        ``{"ok": bool, "pairs": [...], "forbidden": [lines], "allowed": [lines]}``; each pair entry has
        ``splits``, ``level``, ``shared`` (distinct shared values), ``samples`` (samples of the second
        split carrying a shared value), ``examples`` (up to 5), ``status`` (ok / allowed / forbidden)
        and ``reason``.
    """
    values = {name: _level_values(levels) for name, levels in splits.items()}
    pairs, forbidden, allowed_lines = [], [], []
    for a, b in combinations(list(splits), 2):
        for level in [lv for lv in values[a] if lv in values[b]]:
            shared = set(values[a][level]) & set(values[b][level])
            samples = sum(v in shared for v in values[b][level]) if shared else 0
            rule = next((r for r in allowed if _allows(r, a, b, level)), None)
            status = "ok" if not shared else ("allowed" if rule is not None else "forbidden")
            entry = {"splits": [a, b], "level": level, "shared": len(shared), "samples": samples,
                     "examples": sorted(shared)[:MAX_EXAMPLES], "status": status,
                     "reason": rule.get("reason") if rule is not None and shared else None}
            pairs.append(entry)
            if shared:
                line = (f"{a} / {b}: {len(shared)} shared {level}(s) ({samples} {b} sample(s)), e.g. "
                        f"{', '.join(entry['examples'])}")
                if status == "forbidden":
                    forbidden.append(line)
                else:
                    allowed_lines.append(f"{line} [allowed: {entry['reason']}]")
    return {"ok": not forbidden, "pairs": pairs, "forbidden": forbidden, "allowed": allowed_lines,
            "sizes": {name: len(levels["ids"]) for name, levels in splits.items()}}


# ----------------------------------------------------------------------------------------------
# reading split lists


def _reid_levels(ids: list[str]) -> dict[str, list[str]]:
    matches = [_REID_NAME.match(Path(i).name) for i in ids]
    if ids and all(matches):
        return {"identity": [str(int(m.group(1))) for m in matches], "camera": [str(int(m.group(2))) for m in matches]}
    return {}


def read_split_list(path: str | Path) -> dict[str, list[str]]:
    """One split's levels from a CSV, a text list or a folder of images (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        ids = sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not ids:
            raise SplitCheckError(f"{path}: no image file in the folder")
        return {"ids": ids, **_reid_levels(ids)}
    if not path.is_file():
        raise SplitCheckError(f"split list not found: {path}")
    if path.suffix.lower() == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise SplitCheckError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
        if frame.empty:
            raise SplitCheckError(f"{path}: no rows")
        id_col = next((c for c in _ID_COLUMNS if c in frame.columns), frame.columns[0])
        out = {"ids": frame[id_col].tolist()}
        for level, names in (("patient", _PATIENT_COLUMNS), ("study", _STUDY_COLUMNS)):
            col = next((c for c in names if c in frame.columns), None)
            if col is not None:
                out[level] = frame[col].tolist()
        return out
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise SplitCheckError(f"{path}: not a UTF-8 text list") from None
    ids = [ln.replace(",", " ").split()[0] for ln in lines if ln.strip()]
    if not ids:
        raise SplitCheckError(f"{path}: empty list")
    return {"ids": ids, **_reid_levels(ids)}


def format_report(report: Mapping[str, Any], *, title: str) -> str:
    out = [title, "  sizes: " + ", ".join(f"{k} {v}" for k, v in report["sizes"].items())]
    for p in report["pairs"]:
        a, b = p["splits"]
        text = f"  {p['level']:<15} {a} / {b}: {p['shared']} shared"
        if p["shared"]:
            text += f" ({p['samples']} {b} sample(s); e.g. {', '.join(p['examples'])})"
        text += {"ok": "", "allowed": f"  ALLOWED: {p['reason']}", "forbidden": "  FORBIDDEN"}[p["status"]]
        out.append(text)
    out.append("result: " + ("no forbidden overlap" if report["ok"] else f"{len(report['forbidden'])} forbidden overlap(s)"))
    return "\n".join(out)


def check_paths(paths: Sequence[str], allow: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """The report and its title for ``check`` arguments (a run folder, or split lists)."""
    rules: list[dict[str, Any]] = []
    for spec in allow:
        parts = spec.split(":")
        if len(parts) != 3:
            raise SplitCheckError(f"--allow {spec!r}: expected A:B:LEVEL")
        rules.append({"splits": parts[:2], "levels": [parts[2]], "reason": "--allow on the command line"})
    if len(paths) == 1 and Path(paths[0]).is_dir() and (Path(paths[0]) / "split_manifest.json").is_file():
        from common.predictions import PredictionsError, manifest_levels, read_split_manifest

        try:
            manifest = read_split_manifest(paths[0])
            splits = manifest_levels(manifest)
        except PredictionsError as exc:
            raise SplitCheckError(str(exc)) from None
        rules = list(manifest.get("allowed_overlaps") or []) + rules
        title = f"split check of {paths[0]} (protocol {manifest.get('protocol') or 'unnamed'})"
        return split_overlaps(splits, allowed=rules), title
    if len(paths) < 2:
        raise SplitCheckError(f"{paths[0] if paths else 'nothing'}: give a run folder holding split_manifest.json "
                              "or at least two split lists")
    splits: dict[str, dict[str, list[str]]] = {}
    for spec in paths:
        name, _, file = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or Path(file).stem
        if name in splits:
            raise SplitCheckError(f"{spec}: split name {name!r} given twice (use NAME=PATH)")
        splits[name] = read_split_list(file)
    if "query" in splits and "gallery" in splits:
        rules = reid_rules() + rules
    return split_overlaps(splits, allowed=rules), f"split check of {', '.join(splits)}"


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m common.splits`` parser (subcommand ``check``)."""
    parser = argparse.ArgumentParser("python -m common.splits", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="report overlaps between splits; exit 1 on a forbidden one")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR|LIST", help="a run folder, or [NAME=]split list files")
    p.add_argument("--allow", action="append", default=[], metavar="A:B:LEVEL",
                   help="also allow this overlap (repeatable; default: the protocol's rules only)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (default: a table)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        report, title = check_paths(args.paths, args.allow)
    except SplitCheckError as exc:
        print(f"splits: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report, title=title))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
