#!/usr/bin/env bash
# xmnet demo on synthetic leaf-vein data (CPU, tiny settings): README step 1 (classification + XGBoost /
# Optuna), both README step-2 segmentation commands from the step-1 checkpoint, and one case of each
# driver. Data: ${DEMO_DATA:-demo_data}/xmnet/soybean_2_1 (generated once); outputs: ${DEMO_OUT:-demo_runs}/xmnet
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python; fi
mkdir -p "${DEMO_DATA:-demo_data}" "${DEMO_OUT:-demo_runs}/xmnet"
DATA="$(cd "${DEMO_DATA:-demo_data}" && pwd)/xmnet"
OUT="$(cd "${DEMO_OUT:-demo_runs}" && pwd)/xmnet"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [[ ! -f "$DATA/soybean_2_1/labels.pkl" ]]; then
    "$PY" -m common.synth xmnet "$DATA/soybean_2_1" --n 150 --seed 0
fi
cd "$OUT"              # the original commands use ./data and ./best_model.pth relative to the working directory
ln -sfn "$DATA" data
TINY=(--crop_size 64 --seg_size 64 --batch_size 16 --num_workers 0 --device cpu)

# Step 1 (README): classification, then the XGBoost + Optuna stage (30 trials instead of 150: most
# trials of the original search space (eta down to 1e-8) do not learn, so a handful is not enough)
"$PY" -u "$HERE/Train.py" --xmnet --cls_included --backbone_class resnet18 --dataset soybean_2_1 \
  "${TINY[@]}" --max_epoch 3 --lr 0.01 --n_trials 30 --xgb_n_estimators 30
cp output/resnet18/XMNet_Classification/best_model.pth best_model.pth

# Step 2 (README, both versions): segmentation on the frozen classification network (batch 4: the
# U-Net decoder, without BatchNorm, needs a few dozen updates before its IoU leaves 0)
"$PY" -u "$HERE/Train.py" --xmnet --seg_ild --freeze_all --dataparallel --data_dir ./data --backbone_class 'resnet18' \
  --model_path best_model.pth --unet --transfer_to 0.250 "${TINY[@]}" --batch_size 4 --max_epoch 6 --att_from 4 --save_masks 4
"$PY" -u "$HERE/Train.py" --xmnet --seg_ild --freeze_all --dataparallel --data_dir ./data --backbone_class 'resnet18' \
  --model_path ./best_model.pth --unet --att_from 1 --unet --dataset soybean_2_1 "${TINY[@]}" --batch_size 4 --max_epoch 2 \
  --save_masks 4 --output_dir output/resnet18/XMNet_Segmentation_Unet_att_from1

# The drivers (one case each; a second call would skip them as completed)
EXTRA="${TINY[*]} --batch_size 4 --max_epoch 2 --n_trials 3 --xgb_n_estimators 10 --save_masks 2"
# (the README's pair: the segmentation drivers read case 1's best_model.pth by default)
bash "$HERE/train_model_cls.sh" 1 resnet18 true OUT_ROOT=drivers EXTRA_ARGS="$EXTRA"
bash "$HERE/train_model_seg.sh" 10 resnet18 true OUT_ROOT=drivers EXTRA_ARGS="$EXTRA"
bash "$HERE/train_model_seg_unet3plus.sh" 9 resnet18 true OUT_ROOT=drivers EXTRA_ARGS="$EXTRA"
