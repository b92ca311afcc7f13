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
# Every case adds --backbone_class $BACKBONE --dataset $DATASET. As HEAD, no --data_dir is passed (HEAD
# defined DATA_DIR but did not use it), so Train.py's default ./data applies; DATA_DIR=... passes one
# (LOCAL is accepted and, as at HEAD, has no effect). The ad0afa8d version also passed --dataparallel
# (DATAPARALLEL=1 adds it). ATTENTION=xmnet is also the ad0afa8d version's --mmanet (its learned
# [mean, max] attention; its --manet was the mean attention, ATTENTION=mmanet here).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=_driver_lib.sh
source "$HERE/_driver_lib.sh"
xm_split_args "$@"
TOTAL=6
xm_select_case "$TOTAL"
RUNLIB_DESCRIPTION="XMNet classification (train_model_cls.sh): cases 1-3 of HEAD, 4-6 = 1-3 with --amp"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_parse_args "${XM_RUNLIB_ARGS[@]}"

if [[ -x "$ROOT/.venv/bin/python" ]]; then _py="$ROOT/.venv/bin/python"; else _py=python; fi
runlib_var PYTHON "$_py"
runlib_var BACKBONE "${XM_POSITIONALS[1]:-densenet161}"
runlib_var DATA_DIR ""     # empty: no --data_dir (HEAD), Train.py's ./data
runlib_var DATASET soybean_2_1
runlib_var ATTENTION xmnet
runlib_var DATAPARALLEL 0
runlib_var OUT_ROOT ./output
runlib_var EXTRA_ARGS ""   # extra Train.py flags, split on spaces (e.g. "--max_epoch 2 --device cpu")

base=("$PYTHON" -u "$HERE/Train.py" --backbone_class "$BACKBONE" --dataset "$DATASET")
[[ -n "$DATA_DIR" ]] && base+=(--data_dir "$DATA_DIR")
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
