"""Synthetic data sets written in each paper's native on-disk format.

A format is one module ``common.synth.<name>`` listed in :data:`FORMATS`. The module defines::

    def write(out_dir: Path, n: int, seed: int) -> dict:
        '''Write the data set under out_dir; same (n, seed) -> same bytes. Returns paths and counts.'''
    DEFAULT_N: int   # optional: the CLI's --n default for this format (else DEFAULT_N below)

Modules are imported lazily, so a format whose module is not written yet only fails when asked for.
Pixels come from :mod:`common.synth.render` (real scikit-learn digits, one shared class encoding).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# name -> module path. A new format adds its module and one line here.
FORMATS: dict[str, str] = {
    "dvxray": "common.synth.dvxray",
    "chestxray14": "common.synth.chestxray14",
    "mimic": "common.synth.mimic",
    "padchest": "common.synth.padchest",
    "xmnet": "common.synth.xmnet",
    "cub200": "common.synth.cub200",
    "veri776": "common.synth.veri776",
    "market1501": "common.synth.market1501",
}

# --n default for formats that do not define their own DEFAULT_N.
DEFAULT_N = 200


class FormatError(ValueError):
    """An unknown format name, or a listed format whose module is not available."""


def load_format(name: str) -> ModuleType:
    """Import the generator module of format ``name``.

    Args:
        name: a key of :data:`FORMATS`.

    Returns:
        The module (it defines ``write``).

    Raises:
        FormatError: unknown name (the message lists the valid ones), module missing, or module
            without a ``write`` function.
    """
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose from: {', '.join(FORMATS)}")
    module_name = FORMATS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the format's own module being absent means "not implemented"; a missing
        # dependency inside an existing module must surface as itself.
        if exc.name != module_name:
            raise
        raise FormatError(f"format {name} is not implemented yet (module {module_name} missing)") from None
    if not callable(getattr(module, "write", None)):
        raise FormatError(f"format {name}: module {module_name} defines no write() function")
    return module


def default_n(name: str) -> int:
    """The --n default of format ``name``: its module's ``DEFAULT_N``, else :data:`DEFAULT_N`.

    Args:
        name: a key of :data:`FORMATS`.

    Returns:
        Number of images (or pairs/identities, as the format defines ``n``).
    """
    return int(getattr(load_format(name), "DEFAULT_N", DEFAULT_N))


def generate(name: str, out_dir: str | Path, *, n: int | None = None, seed: int = 0) -> dict:
    """Write synthetic data set ``name`` under ``out_dir``.

    Args:
        name: a key of :data:`FORMATS`.
        out_dir: destination folder (created).
        n: size passed to the module's ``write`` (images, or pairs/identities where the format
            says so), or None for :func:`default_n`.
        seed: seed of the NumPy generator; equal seeds give byte-identical files.

    Returns:
        The dict returned by the module's ``write`` (paths and counts).

    Raises:
        FormatError: see :func:`load_format`.
        ValueError: ``n`` not positive.
    """
    module = load_format(name)
    if n is None:
        n = default_n(name)
    if n <= 0:
        raise ValueError(f"format {name}: n must be positive, got {n}")
    write: Callable[..., dict] = module.write
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write(out, n=n, seed=seed)


def summarize(result: dict, prefix: str = "") -> str:
    """One-line ``key=value`` summary of the numeric entries of a ``write`` result (nested keys dotted).

    Args:
        result: dict returned by a format's ``write``.
        prefix: key prefix used for nested dicts.

    Returns:
        e.g. ``"images=40 patients=10 counts.train=32 counts.test=8"``.
    """
    parts = []
    for key, value in result.items():
        if isinstance(value, dict):
            inner = summarize(value, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{prefix}{key}={value}")
    return " ".join(parts)


__all__ = ["DEFAULT_N", "FORMATS", "FormatError", "default_n", "generate", "load_format", "summarize"]
