"""The READMEs stand on their own: a user of the repository has no notes folder to look quirks up in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/README.md")) + ["README.md"]
# a path into the notes folder, "reference §N", or "<notes file>.md §N"
CITATION = re.compile(r"shared/reference|reference §|\b[\w-]+\.md`? §")


@pytest.mark.parametrize("readme", READMES)
def test_readme_cites_no_notes_outside_the_repository(readme):
    found = [f"{readme}:{n}: {line.strip()[:100]}" for n, line in
             enumerate((ROOT / readme).read_text(encoding="utf-8").splitlines(), start=1) if CITATION.search(line)]
    assert not found, "\n".join(found)


def test_the_pattern_catches_each_citation_form():
    for text in ("see `../shared/reference/dcal.md`", "(reference §9)", "| # | Quirk (dvxray.md §18) |",
                 "from `published_results.md` §4"):
        assert CITATION.search(text), text
    assert not CITATION.search("`models/attention/glca.py` | top-R count")
