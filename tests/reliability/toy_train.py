"""The toy run of ``tests.reliability.helpers`` as an entry script (for real ``kill -9`` tests).

    python -m tests.reliability.toy_train OUTPUT_DIR EPOCHS [auto]
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.cli import run_main
from tests.reliability.helpers import run_toy


def main(argv: list[str]) -> dict:
    out, epochs = Path(argv[0]), int(argv[1])
    return run_toy(out, epochs=epochs, resume=argv[2] if len(argv) > 2 else None)[1]


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
