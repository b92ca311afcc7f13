#!/usr/bin/env bash
# CXR-LT 2026 Task 1 demo: the README commands on synthetic MIMIC-CXR-JPG and PadChest data, CPU, tiny
# settings (ConvNeXt-V2 atto at 64 px, 1 + 1 epochs). Outputs under ${DEMO_OUT:-demo_runs}/cxrlt/.
#   bash cxrlt/demo.sh [--dry-run] [--run-specific 1,2] [EPOCHS=2 ...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
RUNLIB_DESCRIPTION="CXR-LT 2026 Task 1 demo: stage 1 (MIMIC), stage 2 (PadChest, DB loss + CAS / ASL), inference"
runlib_parse_args "$@"
runlib_var PY "${PY:-python}"
runlib_var DEMO_DATA "demo_data"
runlib_var DEMO_OUT "demo_runs"
runlib_var EPOCHS 1
runlib_var MODEL convnextv2_atto
runlib_var SIZE 64

MIMIC="$DEMO_DATA/mimic"
PADCHEST="$DEMO_DATA/padchest"
OUT="$DEMO_OUT/cxrlt"
if runlib_will_execute; then
    [[ -d "$MIMIC" ]] || "$PY" -m common.synth mimic "$MIMIC" --n 160 --seed 0 || exit 1
    [[ -d "$PADCHEST" ]] || "$PY" -m common.synth padchest "$PADCHEST" --n 240 --seed 0 || exit 1
    mkdir -p "$OUT"
    (echo ImageID; ls "$PADCHEST/images" | grep -v corrupt | head -8) > "$OUT/test.csv"
fi
TINY=(--model "$MODEL" --pretrained false --image_size "$SIZE" --num_workers 0 --device cpu --amp bf16)

runlib_add stage1_mimic "$OUT/stage1" -- "$PY" cxrlt/train_stage1.py --data_dir "$MIMIC" "${TINY[@]}" \
    --batch_size 16 --warmup_head_epochs "$EPOCHS" --finetune_epochs "$EPOCHS" --output_dir "$OUT/stage1"
runlib_add stage2_padchest_db_cas "$OUT/stage2_db_cas" -- "$PY" cxrlt/train_stage2.py --data_dir "$PADCHEST" \
    "${TINY[@]}" --batch_size 16 --warmup_head_epochs "$EPOCHS" --finetune_epochs "$EPOCHS" \
    --pretrained_checkpoint "$OUT/stage1/checkpoint_last.pth" --output_dir "$OUT/stage2_db_cas"
runlib_add stage2_padchest_asl "$OUT/stage2_asl" -- "$PY" cxrlt/train_stage2.py --data_dir "$PADCHEST" \
    "${TINY[@]}" --batch_size 16 --warmup_head_epochs "$EPOCHS" --finetune_epochs "$EPOCHS" --loss asl \
    --sampler random --pretrained_checkpoint "$OUT/stage1/checkpoint_last.pth" --output_dir "$OUT/stage2_asl"
runlib_add export_safetensors "$OUT/export" -- "$PY" cxrlt/export_safetensors.py \
    --checkpoint "$OUT/stage2_db_cas/checkpoint_last.pth" --output "$OUT/export/weights.safetensors"
runlib_add inference_tta_ensemble "$OUT/inference" -- "$PY" cxrlt/inference.py \
    --checkpoints "$OUT/stage2_db_cas/checkpoint_last.pth" "$OUT/stage2_asl/checkpoint_last.pth" --weights 0.6 0.4 \
    --test_csv "$OUT/test.csv" --image_dir "$PADCHEST/images" --output "$OUT/inference/submission.csv" \
    --image_size "$SIZE" --num_workers 0 --model "$MODEL" --use_tta --tta_config flip_scale --device cpu
runlib_add predict_top5 "$OUT/predict" -- env CXRLT2026_WEIGHTS="$OUT/export/weights.safetensors" "$PY" \
    cxrlt/predict.py "$PADCHEST/images/$(ls "$PADCHEST/images" 2>/dev/null | grep -v corrupt | head -1)" \
    --model "$MODEL" --image_size "$SIZE" --device cpu
runlib_run
