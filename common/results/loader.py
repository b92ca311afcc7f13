"""Loader for the published-results registry (one YAML file per paper in this folder).

File layout (every key is validated; an unknown or missing key is an error naming file and entry)::

    paper: dvxray                  # must equal the file stem
    title: "..."
    run_scale: fraction            # unit of this paper's metrics.json values: fraction | percent
    class_order: [Gun, ...]        # optional: label-vector order of the runs
    entries:
      - name: mcbu                 # unique within the file
        metric: mAP                # key as it appears in a run's metrics.json
        value: 0.9334              # null = not published (then `note` is required)
        scale: fraction            # unit of value and per_class: fraction | percent
        published: "mAP of 0.9334" # optional: the number verbatim as the source prints it
        dataset, protocol, source, caveat: str
        source_type: P | S | R | C | Code   (legend in published_results.md)
        note: str                  # optional
        per_class_key: per_class_ap          # with per_class: the metrics.json list to compare
        per_class: {Gun: 0.972, ...}         # optional: class name -> value
        show_by_default: true      # optional: false hides the entry unless --entry/--all
        split: charm_notebook      # optional, machine-readable protocol fields that `compare` checks
        split_desc: "..."          #   against the run's metrics.json `protocol` dict (or its top
        backbone: efficientnetv2_s #   level); a mismatch is a printed warning. split_desc is the
        input_size: 224            #   human wording of `split` used in that warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from common.safe_yaml import safe_load

RESULTS_DIR = Path(__file__).resolve().parent
SCALES = {"fraction": 1.0, "percent": 100.0}
SOURCE_TYPES = ("P", "S", "R", "C", "Code")

_FILE_KEYS = {"paper", "title", "run_scale", "class_order", "entries"}
_FILE_REQUIRED = {"paper", "title", "run_scale", "entries"}
_ENTRY_KEYS = {
    "name", "metric", "value", "scale", "published", "dataset", "protocol", "source", "source_type",
    "caveat", "note", "per_class_key", "per_class", "show_by_default",
    "split", "split_desc", "backbone", "input_size",
}
#: registry fields compared with what a run recorded (metrics.json ``protocol`` dict or top level)
PROTOCOL_KEYS = ("split", "backbone", "input_size")
_ENTRY_REQUIRED = {"name", "metric", "value", "scale", "dataset", "protocol", "source", "source_type", "caveat"}


class ResultsError(ValueError):
    """A registry file is missing or malformed, or a paper/entry name is unknown (one-line message)."""


@dataclass(frozen=True)
class PublishedEntry:
    """One published number (or a documented gap when ``value`` is None)."""

    name: str
    metric: str
    value: float | None
    scale: str
    dataset: str
    protocol: str
    source: str
    source_type: str
    caveat: str
    published: str | None = None
    note: str | None = None
    per_class_key: str | None = None
    per_class: dict[str, float] | None = None
    show_by_default: bool = True
    split: str | None = None
    split_desc: str | None = None
    backbone: str | None = None
    input_size: int | None = None

    def protocol_fields(self) -> dict[str, str | int]:
        """The machine-readable protocol fields this entry sets (``split``, ``backbone``, ``input_size``)."""
        return {k: getattr(self, k) for k in PROTOCOL_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class PaperResults:
    """All registry entries of one paper, in file order."""

    paper: str
    title: str
    run_scale: str
    entries: tuple[PublishedEntry, ...]
    class_order: tuple[str, ...] | None = None
    path: Path | None = None

    def entry(self, name: str) -> PublishedEntry:
        """Return the entry called ``name``; raise ResultsError listing the valid names otherwise."""
        for e in self.entries:
            if e.name == name:
                return e
        raise ResultsError(
            f"unknown entry {name!r} for paper {self.paper!r}; valid: {', '.join(e.name for e in self.entries)}"
        )


def convert_scale(value: float, from_scale: str, to_scale: str) -> float:
    """Convert a rate between ``"fraction"`` ([0, 1]) and ``"percent"`` ([0, 100]).

    Args:
        value: the number to convert.
        from_scale: unit of ``value``.
        to_scale: unit wanted.

    Returns:
        ``value`` expressed in ``to_scale``.
    """
    for s in (from_scale, to_scale):
        if s not in SCALES:
            raise ResultsError(f"unknown scale {s!r}; valid: {', '.join(SCALES)}")
    return value * SCALES[to_scale] / SCALES[from_scale]


def available_papers(results_dir: str | Path | None = None) -> list[str]:
    """Names of the papers that have a registry file.

    Args:
        results_dir: folder holding ``<paper>.yaml`` files; defaults to this package's folder.

    Returns:
        Sorted paper names (file stems).
    """
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    if not folder.is_dir():
        raise ResultsError(f"results folder not found: {folder}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _text(raw: dict, key: str, where: str, *, optional: bool = False) -> str | None:
    val = raw.get(key)
    if val is None and optional:
        return None
    if not isinstance(val, str) or not val.strip():
        raise ResultsError(f"{where}: '{key}' must be a non-empty string, got {val!r}")
    return val


def _parse_entry(raw: object, where: str) -> PublishedEntry:
    if not isinstance(raw, dict):
        raise ResultsError(f"{where}: must be a mapping, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']})"
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise ResultsError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    missing = sorted(_ENTRY_REQUIRED - set(raw))
    if missing:
        raise ResultsError(f"{where}: missing key(s) {', '.join(missing)}")
    scale = raw["scale"]
    if scale not in SCALES:
        raise ResultsError(f"{where}: scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if raw["source_type"] not in SOURCE_TYPES:
        raise ResultsError(f"{where}: source_type must be one of {', '.join(SOURCE_TYPES)}, got {raw['source_type']!r}")
    value = raw["value"]
    if value is not None and not _is_number(value):
        # PyYAML reads '1e-3' (no dot) as a string; say so rather than fail later.
        raise ResultsError(f"{where}: value must be a number or null, got {value!r}")
    if value is None and not raw.get("note"):
        raise ResultsError(f"{where}: value is null, so a 'note' saying why is required")
    per_class = raw.get("per_class")
    if per_class is not None:
        if not isinstance(per_class, dict) or not per_class:
            raise ResultsError(f"{where}: per_class must be a non-empty mapping class -> number")
        bad = [k for k, v in per_class.items() if not _is_number(v)]
        if bad:
            raise ResultsError(f"{where}: per_class values must be numbers (bad: {', '.join(map(str, bad))})")
        if not raw.get("per_class_key"):
            raise ResultsError(f"{where}: per_class needs per_class_key (the metrics.json list, e.g. per_class_ap)")
        per_class = {str(k): float(v) for k, v in per_class.items()}
    elif raw.get("per_class_key") is not None:
        raise ResultsError(f"{where}: per_class_key given without per_class")
    show = raw.get("show_by_default", True)
    if not isinstance(show, bool):
        raise ResultsError(f"{where}: show_by_default must be true or false, got {show!r}")
    input_size = raw.get("input_size")
    if input_size is not None and (not isinstance(input_size, int) or isinstance(input_size, bool) or input_size <= 0):
        raise ResultsError(f"{where}: input_size must be a positive integer, got {input_size!r}")
    if raw.get("split_desc") is not None and raw.get("split") is None:
        raise ResultsError(f"{where}: split_desc given without split")
    return PublishedEntry(
        name=_text(raw, "name", where),
        metric=_text(raw, "metric", where),
        value=None if value is None else float(value),
        scale=scale,
        dataset=_text(raw, "dataset", where),
        protocol=_text(raw, "protocol", where),
        source=_text(raw, "source", where),
        source_type=raw["source_type"],
        caveat=_text(raw, "caveat", where),
        published=_text(raw, "published", where, optional=True),
        note=_text(raw, "note", where, optional=True),
        per_class_key=_text(raw, "per_class_key", where, optional=True),
        per_class=per_class,
        show_by_default=show,
        split=_text(raw, "split", where, optional=True),
        split_desc=_text(raw, "split_desc", where, optional=True),
        backbone=_text(raw, "backbone", where, optional=True),
        input_size=input_size,
    )


def load_paper(paper: str, results_dir: str | Path | None = None) -> PaperResults:
    """Load and validate one paper's registry file.

    Args:
        paper: paper name (``dvxray``, ``charm_xray``, ``cxrlt``, ``xmnet``, ``dcal``).
        results_dir: folder holding ``<paper>.yaml``; defaults to this package's folder.

    Returns:
        The parsed :class:`PaperResults`.

    Raises:
        ResultsError: unknown paper (message lists the valid ones) or a malformed file (message
            names the file, the entry and the key).
    """
    valid = available_papers(results_dir)
    if paper not in valid:
        raise ResultsError(f"unknown paper {paper!r}; valid: {', '.join(valid)}")
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{paper}.yaml"
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))  # duplicate keys are errors
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ResultsError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}: top level must be a mapping")
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise ResultsError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FILE_KEYS))}")
    missing = sorted(_FILE_REQUIRED - set(raw))
    if missing:
        raise ResultsError(f"{path}: missing top-level key(s) {', '.join(missing)}")
    if raw["paper"] != paper:
        raise ResultsError(f"{path}: 'paper' is {raw['paper']!r} but the file is named {paper}.yaml")
    if raw["run_scale"] not in SCALES:
        raise ResultsError(f"{path}: run_scale must be one of {', '.join(SCALES)}, got {raw['run_scale']!r}")
    if not isinstance(raw["entries"], list) or not raw["entries"]:
        raise ResultsError(f"{path}: 'entries' must be a non-empty list")
    entries = tuple(_parse_entry(e, f"{path}: entries[{i}]") for i, e in enumerate(raw["entries"]))
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ResultsError(f"{path}: duplicate entry name {e.name!r}")
        seen.add(e.name)
    class_order = raw.get("class_order")
    if class_order is not None and (
        not isinstance(class_order, list) or not all(isinstance(c, str) for c in class_order)
    ):
        raise ResultsError(f"{path}: class_order must be a list of class names")
    return PaperResults(
        paper=paper,
        title=str(raw["title"]),
        run_scale=raw["run_scale"],
        entries=entries,
        class_order=tuple(class_order) if class_order is not None else None,
        path=path,
    )
