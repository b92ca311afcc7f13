#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite on 2 worker processes, 1 torch thread each.
# Extra arguments go to pytest (e.g. `bash shell/test.sh tests/common -k metrics`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash shell/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
workers="${PYTEST_WORKERS:-2}"
echo "[test] ruff check"
.venv/bin/ruff check .
echo "[test] pytest -n $workers $*"
set +e
.venv/bin/python -m pytest -n "$workers" --durations=15 "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "[test] error: pytest collected no test" >&2
fi
exit $status
