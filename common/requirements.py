"""A pip requirements file written from ``pyproject.toml``'s ``[project] dependencies``.

The CHARM-Xray original's README says ``pip install -r requirements.txt``; ``charm_xray/requirements.txt``
is this module's output, so the pins live in one place (``pyproject.toml``)::

    python -m common.requirements charm_xray/requirements.txt           # (re)write it
    python -m common.requirements charm_xray/requirements.txt --check   # exit 1 if it is stale

The entry scripts put the repository root on ``sys.path`` themselves, so the third-party packages are
all a requirements-file install needs (``pip install -e .`` installs the same set plus the project).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements_text(target: str = "<file>", pyproject: Path = PYPROJECT, extras: tuple[str, ...] = ()) -> str:
    """The requirements file ``target`` (named in its header) for ``pyproject``'s dependencies (and the
    optional ``extras``), one a line."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project.get("optional-dependencies", {})[extra]
    extra_note = f" and [{', '.join(extras)}]" if extras else ""
    header = (f"# Generated from pyproject.toml ([project] dependencies{extra_note}) by\n"
              f"# `python -m common.requirements {target}`; edit pyproject.toml, not this file.\n")
    return header + "".join(f"{d}\n" for d in deps)


def _display(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it (the header then reads the same
    whichever folder the command ran in)."""
    try:
        return path.resolve().relative_to(PYPROJECT.parent).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m common.requirements", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="requirements file to write (or compare with --check)")
    parser.add_argument("--extras", nargs="*", default=[], help="optional-dependency groups to add (default: none)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = requirements_text(_display(args.output), extras=tuple(args.extras))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != text:
            print(f"error: {args.output} is {'missing' if current is None else 'stale'}: regenerate it with "
                  f"`python -m common.requirements {args.output}`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({text.count(chr(10)) - 2} requirements from {PYPROJECT.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
