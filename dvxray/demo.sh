#!/usr/bin/env bash
# dvxray demo on synthetic DvXray data (CPU, tiny settings): weight conversion, the README "paper
# setting" command, eval_only.py on the test list, and `main.sh --run-specific 2-6`.
# Data: ${DEMO_DATA:-demo_data}/dvxray (generated once); outputs: ${DEMO_OUT:-demo_runs}/dvxray/...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python; fi
mkdir -p "${DEMO_DATA:-demo_data}" "${DEMO_OUT:-demo_runs}"
DATA="$(cd "${DEMO_DATA:-demo_data}" && pwd)/dvxray"
OUT="$(cd "${DEMO_OUT:-demo_runs}" && pwd)/dvxray"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [[ ! -f "$DATA/annotations/DvXray_train.txt" ]]; then
    "$PY" -m common.synth dvxray "$DATA" --n 320 --seed 0
fi
cd "$DATA"   # the original commands use paths relative to the working directory

# Step 1: a stand-in "official" checkpoint (random ConvNeXt-V2 atto with a 1000-class head), converted
# by the original script into student_weights_switch_no_head/convnextv2_atto.mapped_to_backbone.safetensors
if [[ ! -f student_weights/convnextv2_atto_1k_224_ema.pt ]]; then
    mkdir -p student_weights
    "$PY" -c "
import torch
from dvxray.models.convnextv2 import create_model
torch.manual_seed(0)
torch.save({'model': create_model('convnextv2_atto', num_classes=1000).state_dict()},
           'student_weights/convnextv2_atto_1k_224_ema.pt')"
fi
WEIGHT_FILES="convnextv2_atto_1k_224_ema.pt convnextv2_tiny_1k_224_ema.pt" bash "$HERE/convert_all_no_head.sh"

# Step 2: the README paper-setting command, shrunk for a CPU demo: atto at 32 px, 8 epochs, lr 1e-3 and
# EMA decay 0.9 (the paper's 0.9999 barely moves the evaluated EMA copy in a few hundred steps);
# --device cuda falls back to CPU with a warning
"$PY" -u "$HERE/main_finetune.py" \
  --model convnextv2_atto \
  --finetune ./student_weights_switch_no_head/convnextv2_atto.mapped_to_backbone.safetensors \
  --output_dir "$OUT/CoordAttU_MCBConvex" \
  --dual_view true \
  --train_list annotations/DvXray_train.txt \
  --val_list annotations/DvXray_val.txt \
  --classes_file annotations/classes.txt \
  --num_classes 15 \
  --input_size 32 \
  --batch_size 16 \
  --epochs 8 \
  --lr 1e-3 \
  --ema_decay 0.9 \
  --weight_decay 0.05 \
  --warmup_epochs 5 \
  --drop_path 0.2 \
  --num_workers 0 \
  --seed 42 \
  --device cuda \
  --fuse_mode add \
  --head_type fpn_pan \
  --attention_config '{"N3":"coordatt_u"}' \
  --base_loss mcb_convex \
  --mcb_tau 1.0 \
  --mcb_momentum 0.9 \
  --mcb_wmin 1e-3 \
  --patience 25

# Step 3: test-set evaluation of the best checkpoint
"$PY" "$HERE/eval_only.py" --checkpoint "$OUT/CoordAttU_MCBConvex/checkpoint_best.pth" \
  --val_list annotations/DvXray_test.txt --device cpu --num_workers 0 \
  --output_csv "$OUT/CoordAttU_MCBConvex/eval_test.csv"

# Step 4: the batch driver, experiments 2-6 (a second call skips them as completed)
bash "$HERE/main.sh" --run-specific 2-6 EPOCHS=1 INPUT_SIZE=32 BATCH_SIZE=16 NUM_WORKERS=0 DEVICE=cpu \
  STUDENT_MODEL=convnextv2_atto OMP_NUM_THREADS="$OMP_NUM_THREADS" MKL_NUM_THREADS="$OMP_NUM_THREADS" \
  PRETRAINED_WEIGHTS=./student_weights_switch_no_head/convnextv2_atto.mapped_to_backbone.safetensors \
  BASE_OUT_TEMPLATE="$OUT/main_sh/shishi1"
