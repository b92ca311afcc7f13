"""Export the weights-only safetensors (like the released
``convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors``) from a full training checkpoint.

The EMA weights are exported by default, as the original's ``model_state_dict`` holds EMA weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.checkpoint import export_safetensors, load_checkpoint
from common.cli import run_main
from common.run import setup_logging
from common.thresholds import thresholds_metadata
from cxrlt.model import extract_state_dict

_logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("export CXR-LT weights to safetensors", add_help=False)
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (ours or the original's); required")
    parser.add_argument("--output", required=True, help="destination .safetensors file; required")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                        help="export the EMA weights of our checkpoints (default: true)")
    return parser


def main(args: argparse.Namespace) -> Path:
    setup_logging()
    path = Path(args.checkpoint)
    state = extract_state_dict(load_checkpoint(path), path, use_ema=args.use_ema)
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {out}")
    # the run's fitted thresholds (python -m common.thresholds) travel with the weights, for predict.py
    metadata = thresholds_metadata(path.parent) or None
    export_safetensors(state, out, metadata=metadata)
    _logger.info("wrote %s (%d tensors, %d elements%s)", out, len(state), sum(v.numel() for v in state.values()),
                 ", with the run's thresholds.json in its metadata" if metadata else "")
    return out


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
