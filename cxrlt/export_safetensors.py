"""Export the weights-only safetensors (like the released
``convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors``) from a full training checkpoint.

The EMA weights are exported by default, as the original's ``model_state_dict`` holds EMA weights.
"""

from __future__ import annotations

import argparse
import json
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


def _metadata(ckpt: dict) -> dict[str, str] | None:
    """The training args and preprocessing of our checkpoints, as JSON strings (``predict.py --checkpoint``
    reads them back); None for the original's, which record neither (the exported file stays as theirs)."""
    recorded, prep = ckpt.get("args"), ckpt.get("preprocessing")
    if not isinstance(recorded, dict):
        return None
    meta = {"paper": "cxrlt", "args": json.dumps(recorded)}
    if isinstance(prep, dict):
        meta["preprocessing"] = json.dumps(prep)
    return meta


def main(args: argparse.Namespace) -> Path:
    setup_logging()
    path = Path(args.checkpoint)
    ckpt = load_checkpoint(path)
    state = extract_state_dict(ckpt, path, use_ema=args.use_ema)
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {out}")
    # the training args and preprocessing (for predict.py) and the run's fitted thresholds (python -m
    # common.thresholds) travel with the weights
    thresholds = thresholds_metadata(path.parent)
    export_safetensors(state, out, metadata={**(_metadata(ckpt) or {}), **thresholds} or None)
    _logger.info("wrote %s (%d tensors, %d elements%s)", out, len(state), sum(v.numel() for v in state.values()),
                 ", with the run's thresholds.json in its metadata" if thresholds else "")
    return out


if __name__ == "__main__":
    run_main(main, argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
