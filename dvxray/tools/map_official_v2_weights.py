"""Convert an official ConvNeXt(-V2) checkpoint into backbone-only safetensors (MCB-U
``tools/map_official_v2_weights.py``, ``dvxray.md`` §7.2).

Steps for official files (``convnextv2_*_1k_224_ema.pt``, ``convnext_*_1k_224_ema.pth``), in order:
1. take the ``model`` entry if present;
2. drop every key that *starts with* ``head.`` -- tested on the raw keys, before ``module.`` is
   stripped, so a ``module.head.*`` key survives (quirk 11, kept: such keys are shape-skipped at load);
3. strip a leading ``module.``; ``head.norm.`` -> ``norm.``; ``head.fc.`` -> ``head.``;
4. reshape 1-D ``.grn.gamma``/``.grn.beta`` to (1, 1, 1, C) (a no-op for official dense checkpoints);
5. prefix every key with ``--add_prefix`` (default ``backbone.``) and save contiguous tensors.

Also accepted: timm-format state dicts (``stem.0.*``, ``stages.i.blocks.j.*``, ``head.norm.*``), mapped
back to the official names (the inverse of timm's ``checkpoint_filter_fn``; 1x1-conv MLP weights of
the atto..nano variants are reshaped to Linear weights, GRN ``weight``/``bias`` become
``gamma``/``beta`` of shape (1, 1, 1, C)); the classifier ``head.fc`` is dropped and ``head.norm``
becomes ``norm``. FCMAE pre-training checkpoints (sparse encoder: ``encoder.*`` keys, MinkowskiEngine
``kernel`` tensors, ``decoder``/``mask_token``) are refused with a message: fine-tune them with the
official code first (the converted layout of sparse kernels cannot be checked without the originals).

Files are read with ``torch.load(weights_only=True)``; a checkpoint that needs arbitrary unpickling
is refused (``common.checkpoint``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from common.checkpoint import CheckpointError, export_safetensors, load_checkpoint
from common.cli import run_main


def load_raw_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Step 1: the checkpoint's ``model`` sub-dict, or the dict itself."""
    obj = load_checkpoint(path)
    if isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """"official", "timm" or "fcmae" (sparse pre-training encoder)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
    if any(k.startswith(("encoder.", "decoder", "mask_token")) or k.endswith(".kernel") for k in keys):
        return "fcmae"
    if any(k.startswith("stem.") or ".blocks." in k or k.startswith("head.norm.") for k in keys):
        return "timm"
    return "official"


_TIMM_RULES = (
    (re.compile(r"^stem\.(\d)\."), r"downsample_layers.0.\1."),
    (re.compile(r"^stages\.(\d+)\.downsample\.(\d)\."), r"downsample_layers.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.conv_dw\."), ".dwconv."),
    (re.compile(r"\.mlp\.fc(\d)\."), r".pwconv\1."),
    (re.compile(r"\.mlp\.grn\.weight$"), ".grn.gamma"),
    (re.compile(r"\.mlp\.grn\.bias$"), ".grn.beta"),
    (re.compile(r"^head\.norm\."), "norm."),
)


def timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm ConvNeXt(-V2) state dict to the official key names (classifier dropped)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("head.fc.") or key.startswith("head.pre_logits."):
            continue
        for pattern, repl in _TIMM_RULES:
            key = pattern.sub(repl, key)
        if ".pwconv" in key and key.endswith(".weight") and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])  # conv_mlp 1x1 conv -> Linear
        if ".grn." in key:
            value = value.reshape(1, 1, 1, -1)
        out[key] = value
    return out


def convert_state_dict(sd: Mapping[str, torch.Tensor], add_prefix: str = "backbone.", *,
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Steps 2-5 on a raw state dict (official or timm layout; FCMAE is refused).

    Args:
        sd: the raw state dict (after step 1).
        add_prefix: prefix added to every key ("" disables).
        source: file name quoted in errors.

    Returns:
        Backbone-only state dict ready for ``ConvNeXtV2Dual`` (``backbone.*`` keys by default).

    Raises:
        CheckpointError: an FCMAE sparse pre-training checkpoint.
    """
    layout = detect_layout(sd)
    if layout == "fcmae":
        raise CheckpointError(
            f"{source}: FCMAE pre-training checkpoint (sparse encoder keys such as 'encoder.*' / '*.kernel'); "
            "not supported: fine-tune it with the official ConvNeXt-V2 code, or use the released "
            "*_1k_224_ema.pt / *_22k_224_ema.pt fine-tuned checkpoints"
        )
    if layout == "timm":
        sd = timm_to_official(sd)
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    out = {}
    for key, value in sd.items():
        if key.startswith("module."):
            key = key[len("module."):]
        key = key.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        if (".grn.gamma" in key or ".grn.beta" in key) and value.ndim == 1:
            value = value.reshape(1, 1, 1, -1)
        out[add_prefix + key] = value.contiguous()
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Map official ConvNeXt(-V2) weights to backbone-only safetensors", add_help=False)
    parser.add_argument("--input", required=True, help="official checkpoint (.pt/.pth); required")
    parser.add_argument("--output", required=True, help="output .safetensors file; required")
    parser.add_argument("--add_prefix", default="backbone.",
                        help="prefix added to every key; '' disables (default: backbone.)")
    return parser


def main(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    if not str(args.output).endswith(".safetensors"):
        raise SystemExit(f"--output must end with .safetensors, got {args.output}")
    sd = load_raw_state_dict(args.input)
    out = convert_state_dict(sd, args.add_prefix, source=str(args.input))
    export_safetensors(out, args.output)
    print(f"[map] {args.input} ({detect_layout(sd)} layout): {len(sd)} keys in, {len(out)} keys out -> {args.output}")
    return out


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(parents=[get_args_parser()])
    run_main(main, _parser.parse_args())
