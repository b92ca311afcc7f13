"""XMNet's XGBoost + Optuna stage on scikit-learn's digit features as an entry script (for real
``kill -9`` tests of a study without training a network first).

    python -m tests.reliability.xgb_study_run OUTPUT_DIR N_TRIALS
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.cli import run_main
from tests.xmnet.test_xgb import digits_features
from xmnet.xgb_stage import run_study


def main(argv: list[str]) -> dict:
    train, val, test = digits_features()
    return run_study(train, test, val=val, num_class=10, output_dir=Path(argv[0]), n_trials=int(argv[1]),
                     n_estimators=5, nthread=1)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
