"""Helpers shared by the xmnet tests."""

from pathlib import Path

TINY = ["--backbone_class", "resnet18", "--crop_size", "64", "--seg_size", "64", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "10", "--max_epoch", "1", "--xgb_n_estimators", "10", "--n_trials", "2",
        "--xgb_nthread", "1"]


def tiny(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]
