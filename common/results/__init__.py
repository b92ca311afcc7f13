"""Published-results registry: one YAML file per paper (values, protocol, source, caveats).

Read with :func:`load_paper`; compare a run against it with ``python -m common.compare``.
"""

from common.results.loader import (
    RESULTS_DIR,
    PaperResults,
    PublishedEntry,
    ResultsError,
    available_papers,
    convert_scale,
    load_paper,
)

__all__ = [
    "RESULTS_DIR",
    "PaperResults",
    "PublishedEntry",
    "ResultsError",
    "available_papers",
    "convert_scale",
    "load_paper",
]
