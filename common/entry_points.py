"""The ``[project.entry-points]`` groups through which the papers plug into ``common``.

``common`` never imports a paper by name: a paper declares its functions in pyproject.toml (group
``xray_papers.overlays`` for :mod:`common.plots`, ``xray_papers.data_formats`` for
:mod:`common.data.check`) and common imports them only when asked for one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared(group: str) -> dict[str, str]:
    """name -> "module:function" declared in entry-point ``group``.

    Read from the installed package metadata; in a checkout whose editable install predates the
    declaration (``shell/setup.sh`` re-installs when pyproject.toml changes), from the pyproject.toml
    next to this package.
    """
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
    if not found and _PYPROJECT.is_file():
        import tomllib

        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8")).get("project", {})
        found = dict(project.get("entry-points", {}).get(group, {}))
    return found


def load(spec: str) -> Callable[..., Any] | None:
    """Import ``"module:function"``; None when the module itself is absent (a dependency missing
    inside it raises as itself) or defines no such function."""
    module, _, func = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return None
        raise
    return getattr(mod, func, None)
