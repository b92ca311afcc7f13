#!/usr/bin/env bash
# The main job on embedded demo data: set up, generate small data sets in every native format under
# demo_data/, run each paper's README commands on them with tiny CPU settings (each paper's demo.sh),
# draw each main run's pictures (python -m common.plots), diff it against the published numbers
# (python -m common.compare), run predict.py --explain 4 on it (its <run>/predict/ folder) and end with one
# summary table: paper, status, wall time, command,
# final metrics, published number with delta, outputs and pictures, and what the demo scales down.
#   bash shell/demo.sh                         # every paper that is built
#   bash shell/demo.sh dvxray dcal             # only these (positional names)
#   bash shell/demo.sh --only cxrlt            # the same with a flag (repeatable, or comma-separated)
# A failing paper is reported and the others still run; the exit status is 0 only if all passed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ALL=(dvxray charm_xray cxrlt xmnet dcal)
papers=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) [[ $# -ge 2 ]] || { echo "shell/demo.sh: --only needs a paper name (one of: ${ALL[*]})" >&2; exit 2; }
                IFS=, read -ra _names <<< "$2"; papers+=("${_names[@]}"); shift 2 ;;
        --only=*) IFS=, read -ra _names <<< "${1#--only=}"; papers+=("${_names[@]}"); shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "shell/demo.sh: unknown option $1 (use --only PAPER or positional paper names)" >&2; exit 2 ;;
        *) papers+=("$1"); shift ;;
    esac
done
[[ ${#papers[@]} -gt 0 ]] || papers=("${ALL[@]}")
for paper in "${papers[@]}"; do
    [[ " ${ALL[*]} " == *" $paper "* ]] || { echo "shell/demo.sh: unknown paper '$paper' (one of: ${ALL[*]})" >&2; exit 2; }
done

echo "[demo] set-up: bash shell/setup.sh"
bash shell/setup.sh || { echo "[demo] set-up FAILED (shell/setup.sh)" >&2; exit 1; }
export PATH="$ROOT/.venv/bin:$PATH"
export DEMO_DATA="${DEMO_DATA:-$ROOT/demo_data}" DEMO_OUT="${DEMO_OUT:-$ROOT/demo_runs}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$DEMO_OUT"
STATUS="$DEMO_OUT/demo_status.tsv"
: > "$STATUS"

# the main run of each demo (compared and plotted), its command, and where its overlays find the data
main_run() {
    case "$1" in
        dvxray) echo "$DEMO_OUT/dvxray/CoordAttU_MCBConvex" ;;
        charm_xray) echo "$DEMO_OUT/charm_xray/working/runs/experiment" ;;
        cxrlt) echo "$DEMO_OUT/cxrlt/stage2_db_cas" ;;
        xmnet) echo "$DEMO_OUT/xmnet/output/resnet18/XMNet_Classification" ;;
        dcal) echo "$DEMO_OUT/dcal/train_reid_market" ;;
    esac
}
command_of() {
    case "$1" in
        dvxray) echo "bash dvxray/demo.sh (main_finetune.py, eval_only.py, main.sh --run-specific 2-6)" ;;
        charm_xray) echo "bash charm_xray/demo.sh (train.py, test_checkpoint.py x3, train.py grid)" ;;
        cxrlt) echo "bash cxrlt/demo.sh (train_stage1.py, train_stage2.py x2, export, inference, predict)" ;;
        xmnet) echo "bash xmnet/demo.sh (Train.py cls + seg x2, train_model_*.sh drivers)" ;;
        dcal) echo "bash dcal/demo.sh (train/eval_fgvc.py, train/eval_reid.py, train_reid.py Market)" ;;
    esac
}
# predict.py on the main run's checkpoint (issue 18): predictions CSV and 4 explanation PNGs under <run>/predict/
run_predict() {
    local run="$1" paper="$2" cmd
    local common=(--output "$run/predict/predictions.csv" --device cpu --explain 4 --overwrite)
    case "$paper" in
        dvxray) cmd=(python "$ROOT/dvxray/predict.py" --checkpoint "$run/checkpoint_best.pth"
                     --images annotations/DvXray_test.txt) ;;
        charm_xray) cmd=(python "$ROOT/charm_xray/predict.py"
                         --checkpoint "$DEMO_OUT/charm_xray/working/models/final_experiment.pth" --images data/images_001) ;;
        cxrlt) cmd=(python cxrlt/predict.py --checkpoint "$run/checkpoint_last.pth" --images "$DEMO_DATA/padchest/images") ;;
        xmnet) cmd=(python xmnet/predict.py --checkpoint "$run/best_model.pth" --images "$DEMO_DATA/xmnet/soybean_2_1/test") ;;
        dcal) cmd=(python dcal/scripts/predict.py --checkpoint "$run/checkpoint_best.pth"
                   --query "$DEMO_DATA/market1501/query" --gallery "$DEMO_DATA/market1501/bounding_box_test") ;;
    esac
    echo "[demo] $paper: your own images: ${cmd[*]} ${common[*]}"
    (cd "$(plot_cwd "$paper")" && "${cmd[@]}" "${common[@]}")
}
plot_cwd() {  # charm_xray and dvxray record data paths relative to where training ran
    case "$1" in charm_xray|dvxray) echo "$DEMO_DATA/$1" ;; *) echo "$ROOT" ;; esac
}

failed=()
for paper in "${papers[@]}"; do
    run="$(main_run "$paper")"
    if [[ ! -f "$ROOT/$paper/demo.sh" ]]; then
        echo "[demo] $paper: not built yet (no $paper/demo.sh), skipped"
        printf '%s\tskipped\t0\t%s\t\n' "$paper" "not built" >> "$STATUS"
        continue
    fi
    echo "[demo] $paper: running $(command_of "$paper")"
    start=$SECONDS
    if bash "$ROOT/$paper/demo.sh"; then status=passed; else status=FAILED; failed+=("$paper"); fi
    secs=$((SECONDS - start))
    echo "[demo] $paper: $status in $((secs / 60)) min $((secs % 60)) s"
    if [[ -f "$run/metrics.json" ]]; then
        echo "[demo] $paper: pictures: python -m common.plots $run"
        (cd "$(plot_cwd "$paper")" && python -m common.plots "$run" --paper "$paper") \
            || { echo "[demo] $paper: plots FAILED" >&2; failed+=("plots $paper"); }
        run_predict "$run" "$paper" || { echo "[demo] $paper: predict FAILED" >&2; failed+=("predict $paper"); }
        echo "[demo] $paper: diff with the papers: python -m common.compare $run --paper $paper"
        python -m common.compare "$run" --paper "$paper" || { echo "[demo] $paper: compare FAILED" >&2; failed+=("compare $paper"); }
    elif [[ $status == passed ]]; then
        echo "[demo] $paper: no metrics.json in $run" >&2
        status=FAILED; failed+=("$paper (no metrics.json)")
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$paper" "$status" "$secs" "$(command_of "$paper")" "$run" >> "$STATUS"
done

echo
echo "[demo] every demo run (metrics.json under $DEMO_OUT)"
python -m common.demo_table "$DEMO_OUT"
python -m common.demo_table --summary "$STATUS"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "[demo] FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "[demo] all passed: ${papers[*]}"
