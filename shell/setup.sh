#!/usr/bin/env bash
# Idempotent set-up: .venv with Python 3.11 and `pip install -e '.[dev]'`.
# The install is skipped when pyproject.toml and the set of top-level packages have not changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-pyproject.sha256"

step() { printf '[setup] %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
    PY=""
    for cand in python3.11 python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PY="$cand"; break
        fi
    done
    if [[ -z "$PY" ]]; then
        echo "[setup] error: Python 3.11 not found on PATH (needed to create $VENV)" >&2
        exit 1
    fi
    step "creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi

# The editable install maps the package folders that exist at install time, so a new paper package
# must trigger a re-install too: hash pyproject.toml together with the list of package folders.
want="$( (cat pyproject.toml; ls -d */__init__.py 2>/dev/null) | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" == "$have" ]]; then
    step "dependencies up to date (pyproject.toml and package list unchanged), skipping install"
else
    step "installing the project and its dependencies: pip install -e '.[dev]'"
    start=$(date +%s)
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$STAMP"
    step "install finished in $(( $(date +%s) - start )) s"
fi
step "ready: $("$VENV/bin/python" -c 'import torch, timm; print(f"torch {torch.__version__}, timm {timm.__version__}")')"
