#!/usr/bin/env bash
# XMNet segmentation driver (commit 1fd39980 train_model_seg_unet3plus.sh), over shell/runlib.sh.
#
#   bash xmnet/train_model_seg_unet3plus.sh [N] [BACKBONE] [LOCAL] [runlib options] [KEY=VALUE ...]
#
# Cases: --mmanet --seg_ild --freeze_all --dataparallel --max_epoch 200 --model_path $MODEL_PATH (no --unet:
# UNet3+ decoder), with
#   --att_from 1 (cases 1/2), ..., 6 (11/12); even cases add --fsds (commented out in the original,
#   available here).
# LOCAL `true`: DATA_DIR ./data, MODEL_PATH ./checkpoint/file.pth, --local_train 1; otherwise the
# original's /work/MGANet/data and /mnt/mywork/all_backbones/checkpoint/densenet161_MGANet_Classification_03:55-21-12-2023.pth
# with --local_train 0. Override with DATA_DIR=... MODEL_PATH=...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=_driver_lib.sh
source "$HERE/_driver_lib.sh"
xm_split_args "$@"
TOTAL=12
if (( ${#XM_POSITIONALS[@]} >= 1 )); then
    xm_check_case "${XM_POSITIONALS[0]}" "$TOTAL"
    XM_RUNLIB_ARGS=(--run-specific "$((10#${XM_POSITIONALS[0]}))" "${XM_RUNLIB_ARGS[@]}")
fi
RUNLIB_DESCRIPTION="XMNet segmentation, UNet3+ decoder (train_model_seg_unet3plus.sh): att_from 1-6, without / with --fsds"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_parse_args "${XM_RUNLIB_ARGS[@]}"

if [[ -x "$ROOT/.venv/bin/python" ]]; then _py="$ROOT/.venv/bin/python"; else _py=python; fi
LOCAL="${XM_POSITIONALS[2]:-false}"
if [[ "$LOCAL" == true ]]; then
    _data=./data; _model=./checkpoint/file.pth; _local=1
else
    _data=/work/MGANet/data; _model=/mnt/mywork/all_backbones/checkpoint/densenet161_MGANet_Classification_03:55-21-12-2023.pth; _local=0
fi
runlib_var PYTHON "$_py"
runlib_var BACKBONE "${XM_POSITIONALS[1]:-densenet161}"
runlib_var DATA_DIR "$_data"
runlib_var MODEL_PATH "$_model"
runlib_var OUT_ROOT ./output
runlib_var EXTRA_ARGS ""

base=("$PYTHON" -u "$HERE/Train.py" --mmanet --seg_ild --freeze_all --dataparallel --max_epoch 200
      --backbone_class "$BACKBONE" --data_dir "$DATA_DIR" --model_path "$MODEL_PATH" --local_train "$_local")
xm_seg_cases train_model_seg_unet3plus.sh seg_unet3plus "${base[@]}"
runlib_run
