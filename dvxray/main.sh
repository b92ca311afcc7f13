#!/usr/bin/env bash
# MCB-U batch driver (the original main.sh) over shell/runlib.sh.
#
# The original defined one configuration x 5 repeats (all seed 42), so --run-specific 2-6 selected
# almost nothing. The table here is explicit (bash main.sh --dry-run prints it):
#    1-5  paper setting, repeats 1..5: conditional aug, add fusion, fpn_pan, N3 = coordatt_u,
#         mcb_convex  -> ${BASE_OUT_TEMPLATE}_<k>/tiny_conditional_add_8_CoordAtt_loss-mcb_convex
#    6    baseline without attention ({}), mcb_convex
#    7    plain CoordAtt at N3 ({"N3":"coordatt"}), mcb_convex
#    8    CoordAtt-U at N3 with plain BCE              (MCB-Convex vs BCE)
#    9    CoordAtt-U at N3 with MCB (no convex clamp)  (MCB-Convex vs MCB)
#   10    Arch4_HierarchicalExpert {"N3":"coordatt_u","N4":"cbam","N5":"eca"}, mcb_convex
#   11    baseline without attention with plain BCE
# Ablations 6-11 write to ${BASE_OUT_TEMPLATE}_ablation/tiny_<aug>_<fuse>_<arch>_loss-<loss>.
# So `bash main.sh --run-specific 2-6` runs repeats 2-5 and the no-attention baseline.
#
# Fixed settings as in the original (override with KEY=VALUE arguments or the environment, e.g.
# `bash main.sh --run-specific 2-6 EPOCHS=1 INPUT_SIZE=32 STUDENT_MODEL=convnextv2_atto DEVICE=cpu`).
# Like the original, main_finetune.py is called with --teacher_mode false and relative paths
# (annotations/..., ./student_weights_switch_no_head/...) resolve against the working directory.
# REPEAT_SEED_STEP=0 keeps seed 42 for every repeat (original; repeats then differ only through GPU
# non-determinism); REPEAT_SEED_STEP=1 gives repeat k the seed SEED + k - 1.
# PRETRAINED_WEIGHTS must exist (exit 1 otherwise, as in the original); PRETRAINED_WEIGHTS= (empty)
# trains from scratch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNLIB_DESCRIPTION="MCB-U (dvxray): 5 repeats of the paper setting + 6 ablations"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_parse_args "$@"

if [[ -x "$ROOT/.venv/bin/python" ]]; then _default_python="$ROOT/.venv/bin/python"; else _default_python=python; fi
runlib_var PYTHON "$_default_python"
runlib_var BATCH_SIZE 32
runlib_var EPOCHS 180
runlib_var LR 1e-4            # the original also lists 8e-5 (commented out)
runlib_var WEIGHT_DECAY 0.05
runlib_var WARMUP_EPOCHS 5
runlib_var DROP_PATH 0.2
runlib_var HEAD_TYPE fpn_pan
runlib_var PATIENCE 25
runlib_var NUM_WORKERS 8
runlib_var SEED 42
runlib_var REPEAT_SEED_STEP 0
runlib_var INPUT_SIZE 224
runlib_var STUDENT_MODEL convnextv2_tiny
runlib_var DEVICE cuda
runlib_var PRETRAINED_WEIGHTS ./student_weights_switch_no_head/convnextv2_tiny.mapped_to_backbone.safetensors
runlib_var BASE_OUT_TEMPLATE ./shishi1
runlib_var TRAIN_LIST annotations/DvXray_train.txt
runlib_var VAL_LIST annotations/DvXray_val.txt
runlib_var EXTRA_ARGS ""      # extra main_finetune.py flags, split on spaces (e.g. "--amp none")

export PYTORCH_ALLOC_CONF="expandable_segments:True,max_split_size_mb:512"
export TORCH_DATALOADER_USE_SHMEM=1 PYTORCH_USE_SHM=1 TORCH_SHARED_MEMORY_PATH=/dev/shm
export CUDA_LAUNCH_BLOCKING=0 TORCH_CUDNN_V8_API_ENABLED=1
export TORCH_DATALOADER_PERSISTENT_WORKERS=1 TORCH_DATALOADER_PREFETCH_FACTOR=2
runlib_var OMP_NUM_THREADS 8
runlib_var MKL_NUM_THREADS 8
export OMP_NUM_THREADS MKL_NUM_THREADS
export PYTHONWARNINGS=ignore::FutureWarning
unset TORCH_USE_CUDA_DSA

loss_extra_flags() {  # per-loss flags exactly as the original appends them
    case "$1" in
        mcb_convex) echo "--mcb_tau 1.0 --mcb_momentum 0.9 --mcb_wmin 1e-3" ;;
        mcb) echo "--mcb_tau 1.0 --mcb_momentum 0.9" ;;
        bce|mlsm) echo "" ;;
        focal) echo "--focal_gamma 2.0 --focal_alpha 0.25" ;;
        fals) echo "--fals_eps 0.1 --fals_gamma 2.0" ;;
        gebce) echo "--ge_lambda 0.1 --ge_pos_only true --ge_alpha 0.75 --ge_ema true --ge_momentum 0.9 --ge_band 0.0 --ge_trainable true" ;;
        dals) echo "--dals_eps 0.1 --dals_gamma 2.0" ;;
        *) return 1 ;;
    esac
}

add_experiment() {  # NAME BASE_OUT AUG ARCH ATTN FUSE LOSS SEED
    local name="$1" base_out="$2" aug="$3" arch="$4" attn="$5" fuse="$6" loss="$7" seed="$8"
    local extra fuse_mode="$fuse" out
    if ! extra="$(loss_extra_flags "$loss")"; then
        echo "main.sh: warning: unknown loss '$loss', experiment $name skipped" >&2
        return 0
    fi
    local -a cmd=("$PYTHON" -u "$HERE/main_finetune.py" --aug_mode "$aug" --patience "$PATIENCE"
        --model "$STUDENT_MODEL")
    [[ -n "$PRETRAINED_WEIGHTS" ]] && cmd+=(--finetune "$PRETRAINED_WEIGHTS")
    out="${base_out}/tiny_${aug}_${fuse}_${arch}_loss-${loss}"
    cmd+=(--output_dir "$out" --model_prefix '' --batch_size "$BATCH_SIZE" --epochs "$EPOCHS" --lr "$LR"
        --weight_decay "$WEIGHT_DECAY" --warmup_epochs "$WARMUP_EPOCHS" --drop_path "$DROP_PATH"
        --input_size "$INPUT_SIZE")
    if [[ "$fuse" == *@* ]]; then
        fuse_mode="${fuse%%@*}"
        cmd+=(--fuse_mode "$fuse_mode" --ahcr_mode "${fuse#*@}")
    else
        cmd+=(--fuse_mode "$fuse_mode")
    fi
    cmd+=(--head_type "$HEAD_TYPE" --attention_config "$attn" --dual_view true --teacher_mode false
        --num_workers "$NUM_WORKERS" --seed "$seed" --device "$DEVICE" --base_loss "$loss"
        --train_list "$TRAIN_LIST" --val_list "$VAL_LIST")
    # shellcheck disable=SC2206  # word splitting of the flag strings is intended
    local -a more=($extra $EXTRA_ARGS)
    runlib_add "$name" "$out" -- "${cmd[@]}" "${more[@]}"
}

for k in 1 2 3 4 5; do
    add_experiment "repeat${k}_CoordAttU_MCBConvex" "${BASE_OUT_TEMPLATE}_${k}" conditional 8_CoordAtt \
        '{"N3":"coordatt_u"}' add mcb_convex "$((SEED + (k - 1) * REPEAT_SEED_STEP))"
done
ABL="${BASE_OUT_TEMPLATE}_ablation"
add_experiment baseline_NoAttention_MCBConvex "$ABL" conditional Arch1_Baseline_NoAttention '{}' add mcb_convex "$SEED"
add_experiment plainCoordAtt_N3_MCBConvex "$ABL" conditional 8_PlainCoordAtt '{"N3":"coordatt"}' add mcb_convex "$SEED"
add_experiment CoordAttU_BCE "$ABL" conditional 8_CoordAtt '{"N3":"coordatt_u"}' add bce "$SEED"
add_experiment CoordAttU_MCB "$ABL" conditional 8_CoordAtt '{"N3":"coordatt_u"}' add mcb "$SEED"
add_experiment Arch4_HierarchicalExpert_MCBConvex "$ABL" conditional Arch4_HierarchicalExpert \
    '{"N3":"coordatt_u","N4":"cbam","N5":"eca"}' add mcb_convex "$SEED"
add_experiment baseline_NoAttention_BCE "$ABL" conditional Arch1_Baseline_NoAttention '{}' add bce "$SEED"

if runlib_will_execute && [[ -n "$PRETRAINED_WEIGHTS" && ! -f "$PRETRAINED_WEIGHTS" ]]; then
    echo "main.sh: pretrained weights not found: $PRETRAINED_WEIGHTS (run convert_all_no_head.sh, or set PRETRAINED_WEIGHTS= to train from scratch)" >&2
    exit 1
fi
runlib_run
