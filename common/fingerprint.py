"""Fingerprints of reused artefacts: a rerun reuses a result only when what produced it is the same.

A fingerprint is the canonical JSON of the arguments that determine an artefact (each reuse point names
the flags it leaves out, e.g. ``--device`` or ``--num_workers``, which do not change the result) plus the
SHA-256 of the input files that determine it (data lists, CSVs, the checkpoint it starts from). It is
written atomically beside the artefact (``fingerprint.json``, or an Optuna study's user attributes). A rerun
reuses the artefact only when the fingerprints are equal; otherwise :func:`check` raises
:class:`FingerprintMismatch` (a ``ValueError``: entry scripts print it as one ``error:`` line) naming the
differing flags with their old and new values and the two ways on (``--overwrite``, or another folder).
An artefact without a fingerprint (written before fingerprints existed) is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.checkpoint import atomic_write_text

FINGERPRINT_FILE = "fingerprint.json"
_FORMAT = "common.fingerprint/1"
_SHOWN_DIFFERENCES = 6

# (resolved path, size, mtime_ns) -> sha256: a grid hashes the same data lists and weights once per process
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


class FingerprintMismatch(ValueError):
    """A reused artefact was produced by other arguments or inputs (message: one line)."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, cached in this process by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _SHA256_CACHE[key] = h.hexdigest()
    return digest


def listing_sha256(folder: str | Path) -> str | None:
    """SHA-256 of a folder's file list (relative names and sizes, sorted), None when it is not a folder: a cheap
    stand-in for an image folder whose bytes are too many to hash on every run."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(folder).as_posix()}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe, canonical value (tuples as lists, paths as text, numpy/torch scalars as numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    return str(value)


@dataclass
class Fingerprint:
    """What determines one artefact.

    Attributes:
        args: flag name (without dashes) -> value, the flags that determine the artefact.
        inputs: label (e.g. ``--pretrained_weights`` or ``--data_dir Data_Entry_2017.csv``) -> SHA-256 of
            the file, or None when the file is absent.
    """

    args: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "args": _plain(self.args), "inputs": _plain(self.inputs)}

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON (sorted keys, no spaces)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=True)
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, obj: Any) -> Fingerprint | None:
        """The fingerprint in ``obj``, or None when ``obj`` is not one (e.g. a corrupt file)."""
        if not isinstance(obj, Mapping) or not isinstance(obj.get("args"), Mapping) \
                or not isinstance(obj.get("inputs"), Mapping):
            return None
        return cls(dict(obj["args"]), dict(obj["inputs"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and self.to_dict() == other.to_dict()

    def without(self, names: Iterable[str]) -> Fingerprint:
        """A copy without the flags ``names``."""
        drop = set(names)
        return Fingerprint({k: v for k, v in self.args.items() if k not in drop}, dict(self.inputs))


def make_fingerprint(args: Any, *, exclude: Iterable[str] = (), inputs: Mapping[str, str | Path | None] = (),
                     values: Mapping[str, Any] | None = None,
                     digests: Mapping[str, str | None] | None = None) -> Fingerprint:
    """The fingerprint of ``args`` (a Namespace or mapping) minus ``exclude``, with ``values`` put over them
    (resolved values, e.g. a grid setting's momentum) and the SHA-256 of each file in ``inputs``.

    Args:
        args: the parsed flags.
        exclude: flag names that do not change the artefact (where it goes, devices, worker counts) or that
            stand for a file hashed in ``inputs`` instead (so a moved data folder is still the same input).
        inputs: label -> file path (None or a missing file is recorded as None).
        values: flag name -> value that replaces (or adds to) the parsed one.
        digests: label -> digest computed otherwise (e.g. :func:`listing_sha256` of an image folder).
    """
    items = dict(vars(args) if not isinstance(args, Mapping) else args)
    drop = set(exclude)
    flags = {k: _plain(v) for k, v in items.items() if k not in drop}
    flags.update({k: _plain(v) for k, v in (values or {}).items()})
    hashed: dict[str, str | None] = {}
    for label, path in dict(inputs).items():
        hashed[label] = file_sha256(path) if path is not None and Path(path).is_file() else None
    hashed.update(digests or {})
    return Fingerprint(flags, hashed)


_MISSING = object()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + " ".join(_show(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) and (value == "" or " " in value) else str(value)


def differences(old: Fingerprint, new: Fingerprint) -> list[str]:
    """``--flag old -> new`` for each differing flag, then each differing input file."""
    out = []
    for k in sorted(old.args.keys() | new.args.keys()):
        a, b = old.args.get(k, _MISSING), new.args.get(k, _MISSING)
        if a != b:
            out.append(f"--{k} {_show(a)} -> {_show(b)}")
    for k in sorted(old.inputs.keys() | new.inputs.keys()):
        a, b = old.inputs.get(k, _MISSING), new.inputs.get(k, _MISSING)
        if a != b:
            out.append(f"{k} (file) {_show(a)} -> {_show(b)}")
    return out


def describe_differences(old: Fingerprint, new: Fingerprint) -> str:
    diffs = differences(old, new)
    text = "; ".join(diffs[:_SHOWN_DIFFERENCES])
    if len(diffs) > _SHOWN_DIFFERENCES:
        text += f" (and {len(diffs) - _SHOWN_DIFFERENCES} more)"
    return text


def check(recorded: Fingerprint | None, current: Fingerprint, *, what: str, ways: str) -> None:
    """Raise :class:`FingerprintMismatch` unless ``recorded`` equals ``current``.

    Args:
        recorded: the artefact's fingerprint, None when it has none.
        current: this run's.
        what: the artefact, as the message names it (``charm_xray run folder working/runs/experiment``).
        ways: the two ways on, e.g. "pass --overwrite to discard it, or choose another --exp_name".
    """
    if recorded is None:
        raise FingerprintMismatch(f"{what} has no fingerprint (written before fingerprints were recorded), so it "
                                  f"cannot be checked against these flags and is not reused: {ways}")
    if recorded != current:
        raise FingerprintMismatch(f"{what} was produced with other flags or inputs "
                                  f"({describe_differences(recorded, current)}) and is not reused: {ways}")


def read_fingerprint(path: str | Path) -> Fingerprint | None:
    """The fingerprint stored in ``path``, or None when the file is missing or not a fingerprint."""
    path = Path(path)
    try:
        return Fingerprint.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def write_fingerprint(path: str | Path, fingerprint: Fingerprint) -> None:
    """Write ``fingerprint`` to ``path`` atomically (temporary file + rename)."""
    atomic_write_text(json.dumps(fingerprint.to_dict(), indent=2, sort_keys=True) + "\n", Path(path))


def overwrite_ways(place: str) -> str:
    """The standard 'ways on' text: ``--overwrite`` or another ``place`` (e.g. ``--exp_name or --output_dir``)."""
    return f"pass --overwrite to discard it and start again, or choose another {place}"


def remove_paths(paths: Iterable[str | Path]) -> None:
    """Delete files and folders (what ``--overwrite`` discards); missing ones are ignored."""
    import shutil

    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            os.unlink(p)
