"""What a data set holds, as its trainer reads it: the input of ``python -m common.data.check``.

A paper (or a reader in :mod:`common.data.formats`) builds a :class:`DatasetDescription` from its own
parsers and declares the function that does so in the ``xray_papers.data_formats`` entry-point group
of pyproject.toml: ``<format> = "<module>:<function>"`` with ``function(root: Path, **opts) ->
DatasetDescription``. Malformed list files raise the parser's own :class:`common.data.DataError`
(the message the trainer would stop with); files that are listed but missing or unreadable are the
check's business and must not stop the description.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SplitSamples:
    """One split: per sample its id, the files it needs, its positive classes and its group ids.

    Args:
        ids: sample ids (image name, DICOM id, listed path); the ``image`` level of the overlap check.
        files: the files each sample needs (one image, an OL/SD pair, an image and its mask).
        labels: per sample the indices of its positive classes (single-label: one index), or None
            when the split has no class labels (re-ID galleries).
        levels: group ids aligned with ``ids``: ``patient``, ``study``, ``identity``, ``camera``.
        sources: per sample where it is listed (``file:line``), or None.
    """

    ids: list[str]
    files: list[tuple[str, ...]]
    labels: list[tuple[int, ...]] | None = None
    levels: dict[str, list[str]] = field(default_factory=dict)
    sources: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, values in (("files", self.files), ("labels", self.labels), ("sources", self.sources),
                             *self.levels.items()):
            if values is not None and len(values) != n:
                raise ValueError(f"SplitSamples: {len(values)} {name} for {n} ids")


@dataclass
class DatasetDescription:
    """A data folder as the trainer reads it.

    Args:
        format: the format name (``dvxray``, ``chestxray14``, ...).
        root: the folder described.
        splits: split name -> :class:`SplitSamples`, in the order to report them.
        class_names: names of the label indices, or None.
        allowed_overlaps: rules for :func:`common.splits.split_overlaps` (overlaps the protocol
            allows, each with its reason).
        notes: lines the report shows as they are (rows a reader dropped, the protocol used).
    """

    format: str
    root: Path
    splits: dict[str, SplitSamples]
    class_names: Sequence[str] | None = None
    allowed_overlaps: Sequence[Mapping[str, Any]] = ()
    notes: list[str] = field(default_factory=list)


class OptionError(ValueError):
    """An option (``--opt KEY=VALUE``) the format does not take, or a value it cannot read."""


def take_options(opts: Mapping[str, str], allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """``opts`` converted by ``allowed`` (name -> type); OptionError on an unknown name or a bad value."""
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "none"
        raise OptionError(f"unknown option(s) {', '.join(unknown)} (options: {takes})")
    out = {}
    for name, value in opts.items():
        try:
            out[name] = allowed[name](value)
        except ValueError:
            raise OptionError(f"option {name}={value!r}: not a valid {getattr(allowed[name], '__name__', 'value')}") from None
    return out


def positives(vector: Sequence[float]) -> tuple[int, ...]:
    """Indices of the entries > 0.5 of a multi-hot label vector (uncertain -1 entries are not positive)."""
    return tuple(k for k, v in enumerate(vector) if v > 0.5)


__all__ = ["DatasetDescription", "OptionError", "SplitSamples", "positives", "take_options"]
