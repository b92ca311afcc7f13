"""A tiny DCAL model learns FGVC on real digit glyphs (synthetic CUB layout) well above chance."""

from __future__ import annotations

import argparse

import pytest

from common.synth import cub200
from dcal.scripts import train_fgvc
from tests.dcal.conftest import FGVC_CONFIG, tiny_opts


@pytest.mark.slow
def test_tiny_dcal_learns_fgvc(tmp_path):
    root = tmp_path / "cub"
    cub200.write(root, 400, 1, num_classes=10)  # 200 train / 200 test images
    opts = tiny_opts(root, 10, tmp_path / "run", epochs=6, batch=16) + [
        "training.learning_rate=1e-3", "training.lr_scale_batch=0", "training.weight_decay=0.0",
        "training.scheduler=constant", "model.drop_path_rate=0.0",
    ]
    args = argparse.ArgumentParser(parents=[train_fgvc.get_args_parser()]).parse_args(
        ["--config", str(FGVC_CONFIG), "--opts", *opts])
    res = train_fgvc.main(args)
    # chance is 0.10 on 10 balanced classes; the test split is never trained on
    assert res["best"]["acc1"] > 0.35, res["best"]
    assert res["final"]["acc1"] > 0.3, res["final"]
