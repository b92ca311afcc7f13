#!/usr/bin/env bash
# XMNet segmentation driver, UNet3+ decoder (commit 1fd39980 train_model_seg_unet3plus.sh), over
# shell/runlib.sh:
#
#   bash xmnet/train_model_seg_unet3plus.sh [N] [BACKBONE] [LOCAL] [runlib options] [KEY=VALUE ...]
#
# Cases: --xmnet (the original's --mmanet) --seg_ild --freeze_all --dataparallel --max_epoch 200 --model_path
# $MODEL_PATH (no --unet: UNet3+ decoder), with --att_from 1 (case 1), 2 (3), ..., 6 (11); the even cases
# add --fsds and, commented out in the original, are refused / skipped unless FSDS=1. LOCAL, DATA_DIR and
# MODEL_PATH as in train_model_seg.sh, which holds the shared driver and picks the UNet3+ cases from this
# script's name.
set -euo pipefail
# shellcheck source=train_model_seg.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/train_model_seg.sh"
