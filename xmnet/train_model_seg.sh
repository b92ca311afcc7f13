#!/usr/bin/env bash
# XMNet segmentation drivers over shell/runlib.sh: this file is train_model_seg.sh (ad0afa8d; absent
# at HEAD, U-Net decoder) and, sourced by train_model_seg_unet3plus.sh, that driver too (commit 1fd39980,
# UNet3+ decoder); the variant follows the name the script was invoked as.
#
#   bash xmnet/train_model_seg.sh [N] [BACKBONE] [LOCAL] [runlib options] [KEY=VALUE ...]
#
# All 12 cases: --xmnet --seg_ild --freeze_all --dataparallel --model_path $MODEL_PATH, plus --unet
# (train_model_seg.sh) or --max_epoch 200 (train_model_seg_unet3plus.sh: no --unet, UNet3+), with
#   --att_from 1 (cases 1/2), 2 (3/4), 3 (5/6), 4 (7/8), 5 (9/10), 6 (11/12); even cases add --fsds
#   (commented out in the UNet3+ original: skipped there unless FSDS=1).
# The original passes --mmanet, which in its (ad0afa8d) Train.py is the learned [mean, max] attention,
# HEAD's --xmnet: so --xmnet here (ATTENTION=... to change), the attention of train_model_cls.sh case 1.
# LOCAL `true`: DATA_DIR ./data, MODEL_PATH = train_model_cls.sh case 1's best_model.pth
# ($OUT_ROOT/$BACKBONE/cls_1_$ATTENTION/; the original: a ./checkpoint/file.pth of its author's), --local_train 1;
# otherwise the original's /work/MGANet/data and
# /mnt/mywork/all_backbones/checkpoint/densenet161_MGANet_Classification_03:55-21-12-2023.pth with
# --local_train 0. Override with DATA_DIR=... MODEL_PATH=...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=_driver_lib.sh
source "$HERE/_driver_lib.sh"
xm_split_args "$@"
TOTAL=12
xm_select_case "$TOTAL"
if [[ "$(basename -- "$0")" == train_model_seg_unet3plus.sh ]]; then
    _driver=train_model_seg_unet3plus.sh; _tag=seg_unet3plus; _decoder=(--max_epoch 200); _name="UNet3+ decoder"
else
    _driver=train_model_seg.sh; _tag=seg_unet; _decoder=(--unet); _name="U-Net decoder"
fi
RUNLIB_DESCRIPTION="XMNet segmentation, $_name ($_driver): att_from 1-6, without / with --fsds"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_parse_args "${XM_RUNLIB_ARGS[@]}"

if [[ -x "$ROOT/.venv/bin/python" ]]; then _py="$ROOT/.venv/bin/python"; else _py=python; fi
LOCAL="${XM_POSITIONALS[2]:-false}"
runlib_var PYTHON "$_py"
runlib_var BACKBONE "${XM_POSITIONALS[1]:-densenet161}"
runlib_var OUT_ROOT ./output
runlib_var ATTENTION xmnet
if [[ "$LOCAL" == true ]]; then
    _data=./data; _model="$OUT_ROOT/$BACKBONE/cls_1_$ATTENTION/best_model.pth"; _local=1
else
    _data=/work/MGANet/data; _model=/mnt/mywork/all_backbones/checkpoint/densenet161_MGANet_Classification_03:55-21-12-2023.pth; _local=0
fi
runlib_var DATA_DIR "$_data"
runlib_var MODEL_PATH "$_model"
runlib_var FSDS 0          # train_model_seg_unet3plus.sh: 1 runs the --fsds cases the original comments out
runlib_var EXTRA_ARGS ""

base=("$PYTHON" -u "$HERE/Train.py" --"$ATTENTION" --seg_ild --freeze_all --dataparallel "${_decoder[@]}"
      --backbone_class "$BACKBONE" --data_dir "$DATA_DIR" --model_path "$MODEL_PATH" --local_train "$_local")
xm_seg_cases "$_driver" "$_tag" "${base[@]}"
runlib_run
