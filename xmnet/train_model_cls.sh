#!/usr/bin/env bash
# XMNet classification driver (original train_model_cls.sh), over shell/runlib.sh.
#
#   bash xmnet/train_model_cls.sh [N] [BACKBONE] [LOCAL] [runlib options] [KEY=VALUE ...]
#
# Cases (HEAD 3563a4e numbering; 4-6 are the ad0afa8d version's --amp cases):
#   1  --xmnet --cls_included                   (ATTENTION=mmanet gives the ad0afa8d version's --mmanet)
#   2  case 1 + --maskguided
#   3  --cls_included only ("Original", no attention)
#   4, 5, 6  cases 1, 2, 3 + --amp
# Every case adds --backbone_class $BACKBONE --dataset $DATASET --data_dir $DATA_DIR. DATA_DIR is
# ./data when LOCAL is `true`, else /mnt/mywork/data (ad0afa8d; HEAD defined it but did not pass it).
# The ad0afa8d version also passed --dataparallel (DATAPARALLEL=1 adds it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=_driver_lib.sh
source "$HERE/_driver_lib.sh"
xm_split_args "$@"
TOTAL=6
if (( ${#XM_POSITIONALS[@]} >= 1 )); then
    xm_check_case "${XM_POSITIONALS[0]}" "$TOTAL"
    XM_RUNLIB_ARGS=(--run-specific "$((10#${XM_POSITIONALS[0]}))" "${XM_RUNLIB_ARGS[@]}")
fi
RUNLIB_DESCRIPTION="XMNet classification (train_model_cls.sh): cases 1-3 of HEAD, 4-6 = 1-3 with --amp"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_parse_args "${XM_RUNLIB_ARGS[@]}"

if [[ -x "$ROOT/.venv/bin/python" ]]; then _py="$ROOT/.venv/bin/python"; else _py=python; fi
LOCAL="${XM_POSITIONALS[2]:-false}"
if [[ "$LOCAL" == true ]]; then _data=./data; else _data=/mnt/mywork/data; fi
runlib_var PYTHON "$_py"
runlib_var BACKBONE "${XM_POSITIONALS[1]:-densenet161}"
runlib_var DATA_DIR "$_data"
runlib_var DATASET soybean_2_1
runlib_var ATTENTION xmnet
runlib_var DATAPARALLEL 0
runlib_var OUT_ROOT ./output
runlib_var EXTRA_ARGS ""   # extra Train.py flags, split on spaces (e.g. "--max_epoch 2 --device cpu")

base=("$PYTHON" -u "$HERE/Train.py" --backbone_class "$BACKBONE" --dataset "$DATASET" --data_dir "$DATA_DIR")
[[ "$DATAPARALLEL" == 1 ]] && base+=(--dataparallel)
# shellcheck disable=SC2206
extra=($EXTRA_ARGS)
att=(--"$ATTENTION" --cls_included)
add() {  # NAME FLAGS...
    local name="$1"; shift
    runlib_add "$name" "$OUT_ROOT/$BACKBONE/cls_$name" -- "${base[@]}" "$@" --output_dir "$OUT_ROOT/$BACKBONE/cls_$name" "${extra[@]}"
}
add "1_${ATTENTION}" "${att[@]}"
add "2_${ATTENTION}_maskguided" "${att[@]}" --maskguided
add "3_Original" --cls_included
add "4_${ATTENTION}_amp" "${att[@]}" --amp
add "5_${ATTENTION}_maskguided_amp" "${att[@]}" --maskguided --amp
add "6_Original_amp" --cls_included --amp
runlib_run
