"""Errors raised for bad user input, with the file (and line) at fault in the message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file is missing, unreadable or malformed. ``str(err)`` is one line naming the file."""


class ParseError(DataError):
    """A list/CSV/XML file has a bad entry. Formats as ``file:line: what is wrong``."""

    def __init__(self, source: str | Path, line: int | None, message: str):
        self.source = str(source)
        self.line = line
        self.message = message
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {message}")


def read_json(path: str | Path, *, error: type[Exception] = DataError) -> Any:
    """The JSON content of ``path``; invalid JSON raises ``error`` as ``file:line: invalid JSON (why)``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
