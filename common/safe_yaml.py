"""YAML safe loading that rejects a key given twice in one mapping.

PyYAML's ``SafeLoader`` keeps the later of two equal keys silently, so a config with ``lr: 1e-3`` on
line 4 and ``lr: 1e-4`` on line 30 trains with the second value and nobody notices. ``UniqueKeyLoader``
raises instead, naming the key and both lines. Merge keys (``<<: *base``) may still be overridden by an
explicit key: only keys written in the same mapping count as duplicates.

Every place of the project that reads YAML uses this loader (or a subclass, e.g. DCAL's loader that
also reads ``1e-6`` as a float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

__all__ = ["UniqueKeyLoader", "YamlError", "load_yaml_file", "safe_load"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A YAML file is malformed or repeats a key; ``str(err)`` is ``file:line: what is wrong``."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises ``ConstructorError`` on a duplicate mapping key."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first_line
                except TypeError:  # an unhashable key (a list or mapping used as a key)
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           "found an unhashable key", key_node.start_mark) from None
                if seen:
                    raise ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first given at line {first_line[key] + 1})", key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str, loader: type[yaml.SafeLoader] = UniqueKeyLoader) -> Any:
    """``yaml.load(text, Loader=loader)``: safe tags only, duplicate keys rejected (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=loader)


def load_yaml_file(path: str | Path, loader: type[yaml.SafeLoader] = UniqueKeyLoader) -> Any:
    """Read a YAML file with ``loader``.

    Args:
        path: the file.
        loader: ``UniqueKeyLoader`` or a subclass.

    Returns:
        The parsed document (None for an empty file).

    Raises:
        YamlError: the file is missing, not UTF-8, not valid YAML or repeats a key (``file:line: ...``).
    """
    path = Path(path)
    if not path.is_file():
        raise YamlError(f"YAML file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return safe_load(text, loader)
    except yaml.YAMLError as exc:
        raise YamlError(format_yaml_error(path, exc)) from None


def format_yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    """One line ``file:line: problem`` for a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else problem
    return f"{where}: invalid YAML: {' '.join(str(text).split())}"
