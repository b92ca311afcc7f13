#!/usr/bin/env bash
# DCAL demo: the seed README's two training commands (plus evaluation with --visualize, and Market-1501)
# on synthetic CUB-200-2011 / VeRi-776 / Market-1501 layouts, CPU, tiny settings (2-block DeiT-Tiny /
# DeiT-Small shapes, 32 px images with 8 px patches, 1 epoch). Outputs under ${DEMO_OUT:-demo_runs}/dcal/.
#   bash dcal/demo.sh [--dry-run] [--run-specific 1,2] [EPOCHS=2 ...]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
RUNLIB_DESCRIPTION="DCAL demo: train/eval FGVC (CUB), re-ID (VeRi-776, Market-1501) on synthetic data"
runlib_parse_args "$@"
runlib_var PY "${PY:-python}"
runlib_var DEMO_DATA "demo_data"
runlib_var DEMO_OUT "demo_runs"
runlib_var EPOCHS 1

CUB="$DEMO_DATA/cub200"
VERI="$DEMO_DATA/veri776"
MARKET="$DEMO_DATA/market1501"
OUT="$DEMO_OUT/dcal"
if runlib_will_execute; then
    [[ -d "$CUB" ]] || "$PY" -m common.synth cub200 "$CUB" --n 200 --seed 0 || exit 1      # 10 species
    [[ -d "$VERI" ]] || "$PY" -m common.synth veri776 "$VERI" --n 96 --seed 0 || exit 1    # 8 train ids
    [[ -d "$MARKET" ]] || "$PY" -m common.synth market1501 "$MARKET" --n 96 --seed 0 || exit 1  # 8 train ids
fi
TINY=(device=cpu model.patch_size=8 model.num_sa_blocks=2 model.num_pwca_blocks=2 data.num_workers=0
      "training.num_epochs=$EPOCHS" training.warmup_epochs=0)
FGVC=(dcal/configs/fgvc/cub200.yaml --opts "${TINY[@]}" "data.data_root=$CUB" model.num_classes=10
      model.img_size=32 "data.image_size=[32,32]" data.batch_size=16 training.lr_scale_batch=0
      training.learning_rate=0.001)
VERI_OPTS=(dcal/configs/reid/veri776.yaml --opts "${TINY[@]}" "data.data_root=$VERI" model.num_classes=8
           "model.img_size=[32,32]" "data.image_size=[32,32]" data.batch_size=16)
MARKET_OPTS=(dcal/configs/reid/market1501.yaml --opts "${TINY[@]}" "data.data_root=$MARKET" model.num_classes=8
             "model.img_size=[64,32]" "data.image_size=[64,32]" data.batch_size=16)

runlib_add train_fgvc_cub200 "$OUT/train_fgvc" -- "$PY" dcal/scripts/train_fgvc.py --config "${FGVC[@]}" \
    "save_dir=$OUT/train_fgvc"
runlib_add eval_fgvc_cub200 "$OUT/eval_fgvc" -- "$PY" dcal/scripts/eval_fgvc.py \
    --checkpoint "$OUT/train_fgvc/checkpoint_best.pth" --visualize --output_dir "$OUT/eval_fgvc" --config "${FGVC[@]}"
runlib_add train_reid_veri776 "$OUT/train_reid" -- "$PY" dcal/scripts/train_reid.py --config "${VERI_OPTS[@]}" \
    "save_dir=$OUT/train_reid"
runlib_add eval_reid_veri776 "$OUT/eval_reid" -- "$PY" dcal/scripts/eval_reid.py \
    --checkpoint "$OUT/train_reid/checkpoint_best.pth" --visualize --distance_metric euclidean \
    --output_dir "$OUT/eval_reid" --config "${VERI_OPTS[@]}"
runlib_add train_reid_market1501 "$OUT/train_reid_market" -- "$PY" dcal/scripts/train_reid.py \
    --config "${MARKET_OPTS[@]}" "save_dir=$OUT/train_reid_market"
runlib_run
