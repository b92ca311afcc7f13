#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite on 2 worker processes, 1 torch thread each.
# Extra arguments go to pytest (e.g. `bash shell/test.sh tests/common -k metrics`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
cd "$ROOT"
bash shell/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
workers="${PYTEST_WORKERS:-2}"
# pytest's folders live in $TMPDIR (default /tmp): at most about 2 GiB at once, as each passed test's
# folder is deleted when it ends. A full disk shows up as dozens of unrelated ENOSPC errors, so say it first.
tmp_root="${TMPDIR:-/tmp}"
free_mib=$(df -Pm "$tmp_root" | awk 'NR == 2 {print $4}')
if [[ -n "$free_mib" ]] && (( free_mib < 3072 )); then
    echo "[test] warning: $tmp_root has only $free_mib MiB free; the suite needs about 2 GiB there (set TMPDIR to a roomier folder)" >&2
fi
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
