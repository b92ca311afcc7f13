"""A run's output folder: resolved arguments, human log, per-epoch CSV and JSON metrics.

Only the primary rank writes. Logging goes through the ``logging`` module (no patched print).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.checkpoint import atomic_write_text, remove_stale_temp_files
from common.dist import DistContext

_logger = logging.getLogger(__name__)
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, *, is_primary: bool = True, level: int = logging.INFO) -> None:
    """Console logging on the primary rank (warnings only elsewhere) and an optional log file.

    Calling it again replaces the handlers it (or a :class:`RunDir`) installed before (safe in tests and in-process
    reruns).
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_common_run", False):
            root.removeHandler(h)
            h.close()
    _OPEN_RUN_DIRS.clear()
    _install_console(is_primary=is_primary, level=level)
    if log_file is not None and is_primary:
        root.addHandler(_file_handler(log_file))


def _install_console(*, is_primary: bool, level: int = logging.INFO) -> None:
    """(Re)place the console handler; bound to the current ``sys.stderr`` (pytest swaps it per test)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_common_run", False) and getattr(h, "_common_console", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level if is_primary else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%H:%M:%S"))
    console._common_run = True
    console._common_console = True
    root.addHandler(console)


def _file_handler(log_file: str | Path) -> logging.FileHandler:
    fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter(_LOG_FORMAT))
    fh._common_run = True
    return fh


def to_plain(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples to plain JSON/checkpoint-safe types."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return to_plain(obj.item())
    if hasattr(obj, "tolist"):
        return to_plain(obj.tolist())
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def args_to_dict(args: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any]:
    if args is None:
        return {}
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return to_plain(items)


class CsvLog:
    """Append-only per-epoch CSV that stays correct across resumes.

    ``truncate_from(epoch)`` drops rows whose ``epoch`` column is >= ``epoch`` (rows written after the
    checkpoint a run resumed from), so a resumed run appends without duplicates. The file is rewritten
    atomically on every append (the file is small: one row per epoch).
    """

    def __init__(self, path: Path, columns: Sequence[str] | None = None, *, enabled: bool = True):
        self.path = Path(path)
        self.columns = list(columns) if columns is not None else None
        self.enabled = enabled

    def read_rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if self.columns is None and reader.fieldnames:
                self.columns = list(reader.fieldnames)
            return list(reader)

    def _write(self, rows: list[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in self.columns})
        atomic_write_text(buf.getvalue(), self.path)

    def truncate_from(self, epoch: int) -> None:
        if not self.enabled:
            return
        rows = self.read_rows()
        kept = [r for r in rows if "epoch" not in r or r["epoch"] == "" or int(float(r["epoch"])) < epoch]
        if len(kept) != len(rows):
            self._write(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rows = self.read_rows()
        if self.columns is None:
            self.columns = list(row.keys())
        self._write([*rows, row])

    def reset(self) -> None:
        """Remove the file (a fresh start: rows of an earlier attempt must not be continued)."""
        if self.enabled and self.path.is_file():
            self.path.unlink()

    def rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        if self.enabled:
            self._write(rows)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return value


def prepare_output_dir(path: str | Path, *, flag: str = "--output_dir") -> Path:
    """Create ``path`` (with parents) and check that files can be written into it, before any training.

    Args:
        path: the output folder.
        flag: how the user set it, quoted in errors (``--output_dir``, ``config key save_dir``).

    Raises:
        OSError: one line naming ``flag``, the folder and the cause (a parent that is a regular file, a
            regular file at ``path``, no write permission, read-only or full file system).
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a regular file" if parent == path else f"is below {parent}, which is a regular file"
            raise NotADirectoryError(f"{flag} {path}: cannot use it as the output folder: it {where}")
        if parent.is_dir():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(f"{flag} {path}: cannot create the output folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", suffix=".tmp", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise type(exc)(f"{flag} {path}: the output folder is not writable ({exc.strerror or exc})") from None
    return path


# RunDirs whose log file handler is installed, outermost first
_OPEN_RUN_DIRS: list[RunDir] = []


class RunDir:
    """The output folder of one run.

    Args:
        output_dir: folder to create (all outputs go under it).
        args: resolved arguments, written to ``args.json``.
        ctx: distributed context; only the primary rank writes files.
        log_name: human log file name inside ``output_dir``.
        flag: how the user set ``output_dir`` (quoted in errors; ``--output_dir`` by default).

    The folder is created and checked for writability here, before training (``prepare_output_dir``),
    and temporary files left by an interrupted atomic write are removed.

    Logging: opening a run folder adds a handler for its log file to the root logger and keeps the
    handlers of the caller (its console, its own log file). A run folder inside another open one nests (a
    stage's lines reach the stage's log and the experiment's); a run folder elsewhere (the next stage, the
    next in-process run) first closes the open ones it is not inside. ``close()`` (or leaving a ``with``
    block) removes only this folder's handler.
    """

    def __init__(self, output_dir: str | Path, args: argparse.Namespace | Mapping[str, Any] | None,
                 ctx: DistContext | None = None, *, log_name: str = "log.txt", flag: str = "--output_dir"):
        self.path = Path(output_dir)
        self.is_primary = ctx is None or ctx.is_primary
        if self.is_primary:
            prepare_output_dir(self.path, flag=flag)
            for stale in remove_stale_temp_files(self.path):
                _logger.info("removed %s, left by an interrupted write", stale)
        self._handler: logging.Handler | None = None
        _install_console(is_primary=self.is_primary)
        if self.is_primary:
            self._open_log(self.path / log_name)
        self.args = args_to_dict(args)
        if self.is_primary and self.args:
            self.write_json("args.json", self.args)

    def _open_log(self, log_file: Path) -> None:
        here = self.path.resolve()
        for other in reversed(list(_OPEN_RUN_DIRS)):
            if here == other.path.resolve() or not here.is_relative_to(other.path.resolve()):
                other.close()
        self._handler = _file_handler(log_file)
        logging.getLogger().addHandler(self._handler)
        _OPEN_RUN_DIRS.append(self)

    def close(self) -> None:
        """Remove this folder's log file handler (the caller's handlers stay)."""
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self in _OPEN_RUN_DIRS:
            _OPEN_RUN_DIRS.remove(self)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def csv(self, name: str, columns: Sequence[str] | None = None) -> CsvLog:
        return CsvLog(self.path / name, columns, enabled=self.is_primary)

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_primary:
            atomic_write_text(json.dumps(to_plain(obj), indent=2) + "\n", self.path / name)

    def append_jsonl(self, name: str, obj: Any) -> None:
        if self.is_primary:
            with open(self.path / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(to_plain(obj)) + "\n")
