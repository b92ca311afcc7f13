#!/usr/bin/env bash
# Convert the official ConvNeXt(-V2) checkpoints in student_weights/ into backbone-only safetensors in
# student_weights_switch_no_head/ (the original convert_all_no_head.sh). Output name: drop the
# extension, then a trailing _ema, then a trailing _1k_224, then add .mapped_to_backbone.safetensors
# (convnextv2_tiny_1k_224_ema.pt -> convnextv2_tiny.mapped_to_backbone.safetensors). Missing inputs are
# skipped with a warning. Paths are relative to the working directory, as in the original.
# Overrides (environment): SOURCE_DIR, DEST_DIR, PYTHON, WEIGHT_FILES (space-separated file names).
set -e
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../shell/runlib.sh
source "$ROOT/shell/runlib.sh"
runlib_help_from_header "$0" "$@"   # --help prints the header above and exits before anything runs
SOURCE_DIR="${SOURCE_DIR:-student_weights}"
DEST_DIR="${DEST_DIR:-student_weights_switch_no_head}"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"; else PYTHON="${PYTHON:-python}"; fi
CONVERTER="$HERE/tools/map_official_v2_weights.py"
DEFAULT_FILES="convnext_tiny_1k_224_ema.pth convnext_small_1k_224_ema.pth convnextv2_femto_1k_224_ema.pt convnextv2_nano_1k_224_ema.pt convnextv2_pico_1k_224_ema.pt convnextv2_tiny_1k_224_ema.pt"
read -r -a FILES <<< "${WEIGHT_FILES:-$DEFAULT_FILES}"

mkdir -p "$DEST_DIR"
for f in "${FILES[@]}"; do
    src="$SOURCE_DIR/$f"
    if [[ ! -f "$src" ]]; then
        echo "[convert] warning: $src not found, skipped" >&2
        continue
    fi
    name="${f%.*}"
    name="${name%_ema}"
    name="${name%_1k_224}"
    dst="$DEST_DIR/${name}.mapped_to_backbone.safetensors"
    "$PYTHON" "$CONVERTER" --input "$src" --output "$dst" --add_prefix "backbone."
done
echo "[convert] done -> $DEST_DIR"
