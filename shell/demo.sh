#!/usr/bin/env bash
# The main job on embedded demo data: set up, generate small data sets in every native format under
# demo_data/, run each paper's README commands on them with tiny CPU settings (each paper's demo.sh),
# and end with a table of the runs' metrics.
#   bash shell/demo.sh                 # every paper that is built
#   bash shell/demo.sh dvxray dcal     # only these
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash shell/setup.sh || exit 1
export PATH="$ROOT/.venv/bin:$PATH"
export DEMO_DATA="${DEMO_DATA:-$ROOT/demo_data}" DEMO_OUT="${DEMO_OUT:-$ROOT/demo_runs}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
papers=("$@")
[[ ${#papers[@]} -gt 0 ]] || papers=(dvxray charm_xray cxrlt xmnet dcal)

failed=()
for paper in "${papers[@]}"; do
    if [[ ! -f "$ROOT/$paper/demo.sh" ]]; then
        echo "[demo] $paper: not built yet (no $paper/demo.sh), skipped"
        continue
    fi
    echo "[demo] ===== $paper ====="
    if ! bash "$ROOT/$paper/demo.sh"; then
        echo "[demo] $paper: FAILED" >&2
        failed+=("$paper")
    fi
done

echo
echo "[demo] results (metrics.json of every demo run under $DEMO_OUT)"
python -m common.demo_table "$DEMO_OUT"

# How a run is diffed against the published numbers (demo runs are tiny, so the deltas are large)
for pair in "dvxray/CoordAttU_MCBConvex:dvxray" "charm_xray/working/runs/experiment:charm_xray" "cxrlt/stage2_db_cas:cxrlt" "xmnet/output/resnet18/XMNet_Classification:xmnet" "dcal/train_reid_market:dcal"; do
    run="$DEMO_OUT/${pair%%:*}"
    [[ -f "$run/metrics.json" ]] || continue
    echo
    echo "[demo] python -m common.compare $run --paper ${pair##*:}"
    python -m common.compare "$run" --paper "${pair##*:}" || failed+=("compare ${pair##*:}")
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "[demo] failed: ${failed[*]}" >&2
    exit 1
fi
