#!/usr/bin/env bash
# charm_xray demo on synthetic NIH ChestX-ray14 (CPU, tiny settings): `python train.py` (both phases and the
# test, notebook split), the three README test_checkpoint.py forms, and a two-setting grid.
# Data: ${DEMO_DATA:-demo_data}/charm_xray/data (generated once); outputs: ${DEMO_OUT:-demo_runs}/charm_xray/...
# Tiny overrides (the paper: EfficientNetV2-S at 224 px, batch 64/128, 3+20 and 5 epochs): ResNet-18 at 48 px,
# batch 16, lr_find over 30 batches, 1+4 and 1 epochs, fp32.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python; fi
mkdir -p "${DEMO_DATA:-demo_data}/charm_xray" "${DEMO_OUT:-demo_runs}/charm_xray"
WORK="$(cd "${DEMO_DATA:-demo_data}/charm_xray" && pwd)"
OUT="$(cd "${DEMO_OUT:-demo_runs}/charm_xray" && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [[ ! -f "$WORK/data/Data_Entry_2017.csv" ]]; then
    "$PY" -m common.synth chestxray14 "$WORK/data" --n 400 --seed 1
fi
cd "$WORK"   # the original runs `python train.py` next to data/

TINY=(--model_name resnet18 --image_size 48 --batch_size_phase1 16 --batch_size_phase2 16 --batch_size_test 32
      --amp none --num_workers 0)

echo "[charm_xray] step 1/3: python train.py (phase 1 BCE + lr_find + fine_tune, phase 2 ASL one-cycle, test)"
"$PY" "$HERE/train.py" "${TINY[@]}" --output_dir "$OUT/working" --lr_find_iters 30 \
  --freeze_epochs 1 --phase1_epochs 4 --phase2_epochs 1

echo "[charm_xray] step 2/3: test_checkpoint.py, the three README forms"
CKPT="$OUT/working/models/final_experiment.pth"
"$PY" "$HERE/test_checkpoint.py" --checkpoint "$CKPT" --num_workers 0
"$PY" "$HERE/test_checkpoint.py" --checkpoint "$CKPT" --num_samples -1 --num_workers 0
"$PY" "$HERE/test_checkpoint.py" --checkpoint "$CKPT" --batch_size 64 --num_workers 0 --split charm_notebook \
  --output_dir "$OUT/working/test_charm_notebook"

echo "[charm_xray] step 3/3: the notebooks' grid, momentum 0.99 x k {2, 5} x threshold 0.2 (a rerun skips finished settings)"
"$PY" "$HERE/train.py" "${TINY[@]}" --output_dir "$OUT/grid" --lr 2e-3 --freeze_epochs 0 --phase1_epochs 2 \
  --phase2_epochs 1 --momentum_values 0.99 --k_values 2 5 --threshold_values 0.2
echo "[charm_xray] outputs: $OUT/working (runs/experiment: metrics.json, lr_find.png, roc_curves.png), $OUT/grid/parameter_search_results (grid_search_results.csv, heatmap_momentum_0.99.png)"
