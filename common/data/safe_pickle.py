"""A restricted unpickler for data files that must hold only plain values (``labels.pkl`` of the
MGANet / XMNet leaf-vein sets, and any other label pickle).

``pickle.load`` can run arbitrary code: a crafted file names any importable callable (``os.system``)
through the GLOBAL / STACK_GLOBAL opcodes and calls it with REDUCE. This loader resolves no global
except the builtin container types a plain pickle may need (``set`` / ``frozenset`` in protocols
0-3), so such a file is refused before anything is called. After loading, the value is checked to
be built only from dicts, lists, tuples, sets, ints and strings (``allow``), to any depth.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from common.data.errors import DataError

# globals a plain-container pickle may reference (protocols < 4 build sets via REDUCE on these)
_SAFE_GLOBALS = frozenset({("builtins", "set"), ("builtins", "frozenset"),
                           ("__builtin__", "set"), ("__builtin__", "frozenset")})
PLAIN_TYPES: tuple[type, ...] = (dict, list, tuple, set, frozenset, int, str)


class UnsafePickleError(DataError):
    """The pickle names a callable or holds a value that is not a plain container of ints/strings."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: Path):
        super().__init__(io.BytesIO(data))
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refuses to unpickle {module}.{name} (a pickle can run code through such "
            "references; nothing was executed); only plain containers of ints and strings are accepted"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refuses to unpickle persistent ids; only plain containers of ints and strings are accepted")


def _check_plain(value: Any, source: Path, allow: tuple[type, ...], depth: int = 0) -> None:
    if depth > 100:
        raise UnsafePickleError(f"{source}: refuses to unpickle: nesting deeper than 100 levels")
    if type(value) not in allow:
        raise UnsafePickleError(
            f"{source}: refuses to unpickle a {type(value).__name__}; only {', '.join(t.__name__ for t in allow)} are accepted"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, source, allow, depth + 1)
            _check_plain(v, source, allow, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            _check_plain(v, source, allow, depth + 1)


def safe_load_pickle(path: str | Path, *, allow: tuple[type, ...] = PLAIN_TYPES) -> Any:
    """Load a pickle file that may contain only plain containers of ints and strings.

    Args:
        path: the pickle file.
        allow: the exact types a value may have (default dict, list, tuple, set, frozenset, int, str;
            bool and float are refused because label files hold neither).

    Returns:
        The unpickled value.

    Raises:
        DataError: the file is missing or is not a readable pickle (one line naming the file).
        UnsafePickleError: the pickle references any callable or class (nothing is executed: the
            reference is refused when it is resolved, before any call), or holds a value of another type.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pickle file not found: {path}")
    try:
        value = _RestrictedUnpickler(path.read_bytes(), path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as exc:
        raise DataError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    _check_plain(value, path, allow)
    return value
