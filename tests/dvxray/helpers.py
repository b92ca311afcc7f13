"""Helpers shared by the dvxray tests."""

from pathlib import Path


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    """Flags of a fast CPU run of main_finetune.py on the synthetic set."""
    return [
        "--model", "convnextv2_atto", "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
        "--input_size", "32", "--batch_size", "8", "--epochs", "2", "--lr", "1e-3", "--amp", "none",
        "--train_list", str(data / "annotations/DvXray_train.txt"),
        "--val_list", str(data / "annotations/DvXray_val.txt"),
        "--classes_file", str(data / "annotations/classes.txt"), "--data_root", str(data),
        "--fuse_mode", "add", "--head_type", "fpn_pan", "--attention_config", '{"N3":"coordatt_u"}',
        "--base_loss", "mcb_convex", "--fpn_out_channels", "32", *extra,
    ]
