"""Generic parsers for the list / CSV formats the papers use.

Every error is a :class:`ParseError` formatted ``file:line: what is wrong`` so a bad entry in a
12,800-line split file can be found without a debugger. Paper-specific readers (DvXray split files,
PadChest CSVs, NIH ``Data_Entry_2017.csv``, VeRi XML) live in the paper folders and build on these.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.data.errors import DataError, ParseError

__all__ = [
    "ImageRecord",
    "check_consistent_duplicates",
    "check_field_counts",
    "csv_line",
    "parse_label_vector",
    "parse_multilabel_string",
    "read_csv",
    "read_image_label_list",
    "read_lines",
    "read_name_list",
]


@dataclass(frozen=True)
class ImageRecord:
    """One dataset entry: image path(s), a label vector and where it was listed.

    ``source``/``line`` are the list file and 1-based line the entry came from (``None`` when the
    record was built in code); they are quoted in image-loading errors.
    """

    paths: tuple[str, ...]
    labels: tuple[float, ...]
    source: str | None = None
    line: int | None = None

    @property
    def where(self) -> tuple[str, int] | None:
        """``(list file, line)`` for :func:`common.data.images.load_image`, or None."""
        if self.source is None or self.line is None:
            return None
        return (self.source, self.line)


def read_lines(path: str | Path) -> list[tuple[int, str]]:
    """Read a text list file into ``(line number, stripped text)`` pairs, skipping blank lines.

    LF, CRLF and CR line endings are all accepted, and a UTF-8 byte-order mark is dropped.

    Args:
        path: the list file.

    Returns:
        ``[(lineno, text), ...]`` with 1-based line numbers of the original file.

    Raises:
        DataError: the file does not exist or is a directory.
        ParseError: a line is not valid UTF-8 (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out: list[tuple[int, str]] = []
    # bytes.splitlines splits on \n, \r\n and \r alike, so Windows-edited lists keep their numbering.
    for lineno, chunk in enumerate(raw.splitlines(), start=1):
        try:
            text = chunk.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ParseError(path, lineno, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if text:
            out.append((lineno, text))
    return out


def parse_label_vector(
    text: str, num_classes: int, *, source: str | Path, line: int | None
) -> tuple[int, ...]:
    """Parse ``"0,1,0"`` or ``"0 1 0"`` into a tuple of 0/1 integers.

    Args:
        text: comma-separated or whitespace-separated labels (commas win when both appear).
        num_classes: required number of labels.
        source: file the text came from (for the error message).
        line: 1-based line number in ``source`` (for the error message).

    Returns:
        A tuple of ``num_classes`` ints, each 0 or 1.

    Raises:
        ParseError: wrong count (the message gives the count found) or a value other than 0/1.
    """
    text = text.strip()
    tokens = [t.strip() for t in text.split(",")] if "," in text else text.split()
    if len(tokens) != num_classes:
        raise ParseError(source, line, f"expected {num_classes} labels, found {len(tokens)} in {text!r}")
    values = []
    for k, tok in enumerate(tokens):
        if tok not in ("0", "1"):
            raise ParseError(source, line, f"label {k} is {tok!r}; labels must be 0 or 1")
        values.append(int(tok))
    return tuple(values)


def read_image_label_list(
    path: str | Path, *, num_paths: int, num_classes: int, root: str | Path | None = None
) -> list[ImageRecord]:
    """Read lines ``<path> [<path> ...] <labels>`` (e.g. DvXray's ``OL.png SD.png 0,1,...``).

    Labels follow the paths either as one comma-separated field or as ``num_classes``
    whitespace-separated fields. Paths therefore cannot contain spaces.

    Args:
        path: the list file.
        num_paths: image paths per line (1 for single-image lists, 2 for dual-view pairs).
        num_classes: labels per line.
        root: if given, relative image paths are joined onto it; absolute paths are kept.

    Returns:
        One :class:`ImageRecord` per non-blank line, in file order, carrying the line number.

    Raises:
        DataError: the file is missing or has no entries.
        ParseError: a line has too few fields or a bad label vector.
    """
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    path = Path(path)
    lines = read_lines(path)
    if not lines:
        raise DataError(f"list file has no entries: {path}")
    records = []
    for lineno, text in lines:
        fields = text.split()
        if len(fields) < num_paths + 1:
            raise ParseError(
                path,
                lineno,
                f"expected {num_paths} image path(s) followed by {num_classes} labels, "
                f"found {len(fields)} field(s)",
            )
        image_paths = fields[:num_paths]
        if root is not None:
            image_paths = [str(Path(root) / p) for p in image_paths]
        labels = parse_label_vector(" ".join(fields[num_paths:]), num_classes, source=path, line=lineno)
        records.append(ImageRecord(tuple(image_paths), labels, str(path), lineno))
    return records


def read_name_list(path: str | Path) -> list[str]:
    """Read a one-name-per-line file (``classes.txt``, ``train_val_list.txt``).

    Args:
        path: the file.

    Returns:
        The names in file order (blank lines skipped).

    Raises:
        DataError: the file is missing or empty.
        ParseError: a line holds more than one token, or a name repeats (names both lines).
    """
    path = Path(path)
    lines = read_lines(path)
    if not lines:
        raise DataError(f"name list has no entries: {path}")
    first_seen: dict[str, int] = {}
    names = []
    for lineno, text in lines:
        fields = text.split()
        if len(fields) != 1:
            raise ParseError(
                path, lineno, f"expected one name per line, found {len(fields)} fields: {text!r}"
            )
        name = fields[0]
        if name in first_seen:
            raise ParseError(path, lineno, f"duplicate name {name!r} (first at line {first_seen[name]})")
        first_seen[name] = lineno
        names.append(name)
    return names


def parse_multilabel_string(
    text: str,
    class_names: Sequence[str],
    sep: str = "|",
    *,
    source: str | Path,
    line: int | None,
    empty_names: Iterable[str] = ("No Finding",),
) -> tuple[int, ...]:
    """Turn ``"Atelectasis|Effusion"`` into a 0/1 vector over ``class_names``.

    Names are matched exactly (after stripping spaces), not as substrings.

    Args:
        text: the label string, e.g. ChestX-ray14's ``Finding Labels`` cell.
        class_names: class order of the output vector.
        sep: separator between names.
        source: file the text came from (for the error message).
        line: 1-based line number in ``source`` (for the error message).
        empty_names: names meaning "no positive class" (ChestX-ray14's ``No Finding``) unless they
            are themselves in ``class_names``; they may not be combined with other names.

    Returns:
        A tuple of ``len(class_names)`` ints.

    Raises:
        ParseError: an unknown name (named in the message), an empty string or an empty name, or an
            empty-name combined with real findings.
    """
    index = {name: k for k, name in enumerate(class_names)}
    empties = {n for n in empty_names if n not in index}
    if not text or not text.strip():
        raise ParseError(source, line, "empty label string")
    names = [n.strip() for n in text.split(sep)]
    vector = [0] * len(class_names)
    for name in names:
        if not name:
            raise ParseError(source, line, f"empty class name in {text!r}")
        if name in empties:
            if len(names) > 1:
                raise ParseError(source, line, f"{name!r} combined with other labels in {text!r}")
            continue
        if name not in index:
            raise ParseError(source, line, f"unknown class {name!r} in {text!r}")
        vector[index[name]] = 1
    return tuple(vector)


def csv_line(row_label: int) -> int:
    """CSV line number of a row of a frame returned by :func:`read_csv` (header = line 1).

    Args:
        row_label: the row's index label in that frame.

    Returns:
        ``row_label + 2``.
    """
    return int(row_label) + 2


def _convert_column(path: Path, frame: pd.DataFrame, column: str, dtype: Any) -> pd.Series:
    kind = np.dtype(dtype).kind
    raw = frame[column]
    missing = raw.isna()
    if kind == "O" or kind == "U":
        if missing.any():
            row = raw.index[missing.to_numpy()][0]
            raise ParseError(path, csv_line(row), f"column {column!r}: empty value")
        return raw.astype(str)
    if kind not in "iuf":
        raise ValueError(
            f"read_csv: unsupported dtype {dtype!r} for column {column!r} (use int, float or str)"
        )
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() & ~missing
    if kind in "iu":
        # Integer columns cannot hold NaN, and "1.5" must not silently become 1.
        bad |= missing | (numbers.notna() & (numbers != np.floor(numbers)))
    if bad.any():
        row = raw.index[bad.to_numpy()][0]
        value = raw.loc[row]
        shown = "empty value" if pd.isna(value) else f"{value!r}"
        raise ParseError(
            path, csv_line(row), f"column {column!r}: cannot convert {shown} to {np.dtype(dtype).name}"
        )
    return numbers.astype(dtype)


def check_field_counts(path: str | Path, text: str) -> None:
    """Every CSV record of ``text`` must have as many fields as the header.

    pandas pads a short row with empty cells (so every later value of that row shifts one column and the
    missing cell reads as empty/0) and may take an extra field as the index; both are silent. Blank lines
    are allowed.

    Args:
        path: the file ``text`` came from (for the message).
        text: the CSV content.

    Raises:
        ParseError: a row with fewer or more fields than the header (its first line, both counts), or a
            line the ``csv`` module cannot read (e.g. a NUL byte).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        expected, previous = len(header), reader.line_num
        for row in reader:
            first, previous = previous + 1, reader.line_num
            if not row:
                continue
            if len(row) != expected:
                fewer = "fewer" if len(row) < expected else "more"
                raise ParseError(path, first, f"{len(row)} fields, {fewer} than the {expected} columns of the header "
                                              "(a missing or extra separator would shift every later column)")
    except csv.Error as exc:
        raise ParseError(path, reader.line_num or None, f"cannot parse CSV: {exc}") from None


def check_consistent_duplicates(
    frame: pd.DataFrame, path: str | Path, key_columns: Sequence[str], value_columns: Sequence[str]
) -> None:
    """Rows of a :func:`read_csv` frame that share ``key_columns`` must agree on ``value_columns``.

    A study listed twice with different labels would otherwise be resolved silently by whichever row a
    reader keeps; identical repeats are allowed.

    Args:
        frame: the frame (index labels as returned by :func:`read_csv`).
        path: the CSV file (for the message).
        key_columns: columns identifying an entry (e.g. ``["study_id"]``).
        value_columns: columns that must be equal between repeats (e.g. the label columns).

    Raises:
        ParseError: names the key, the column that differs and both CSV lines.
    """
    keys = list(key_columns)
    repeated = frame[frame.duplicated(subset=keys, keep=False)]
    if repeated.empty:
        return
    for key, group in repeated.groupby(keys, sort=False):
        first = group.iloc[0]
        for label, row in group.iloc[1:].iterrows():
            for column in value_columns:
                a, b = (v.item() if hasattr(v, "item") else v for v in (first[column], row[column]))
                if not ((pd.isna(a) and pd.isna(b)) or a == b):
                    shown = key if not isinstance(key, tuple) or len(key) > 1 else key[0]
                    raise ParseError(
                        path, csv_line(label),
                        f"{'/'.join(keys)} {shown} is listed again with a different {column!r} ({b!r}; "
                        f"{a!r} at line {csv_line(group.index[0])})",
                    )


def read_csv(
    path: str | Path,
    required_columns: Iterable[str],
    *,
    dtype: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Read a CSV with pandas, checking that the required columns exist and values convert.

    Blank lines (and rows whose every field is empty) are dropped but keep their numbers: the returned frame's index label ``i`` is the
    0-based data row, so :func:`csv_line` (``i + 2``) is its line in the file. Quoted fields that
    span several lines would shift this numbering.

    Args:
        path: the CSV file (first line = header).
        required_columns: columns that must be present.
        dtype: optional ``{column: int | float | str | numpy dtype}``; those columns are converted
            and a bad value is reported with its CSV line. Empty cells are errors for int and str
            columns and NaN for float columns. Other columns keep pandas' type inference.

    Returns:
        The DataFrame.

    Raises:
        DataError: the file is missing, empty or not decodable.
        ParseError: a row with fewer or more fields than the header, a row pandas cannot tokenize (line
            from pandas' message), missing column(s) (all named, at line 1) or a value that does not convert.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    dtype = dict(dtype or {})
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot parse CSV {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"CSV file is empty: {path}")
    check_field_counts(path, text)
    try:
        # Columns to be converted are read as text so a bad value can be quoted verbatim.
        frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in dtype}, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file is empty: {path}") from None
    except pd.errors.ParserError as exc:
        message = " ".join(str(exc).split())
        found = re.search(r"line (\d+)", message)
        raise ParseError(
            path, int(found.group(1)) if found else None, f"cannot parse CSV: {message}"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise DataError(f"cannot parse CSV {path}: {message}") from None
    frame = frame.dropna(how="all")
    wanted = list(dict.fromkeys([*required_columns, *dtype]))
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ParseError(path, 1, f"missing column(s) {names}; found {list(frame.columns)}")
    for column, target in dtype.items():
        frame[column] = _convert_column(path, frame, column, target)
    return frame
