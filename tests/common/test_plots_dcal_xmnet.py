"""dcal and xmnet overlays from a run folder (tiny CPU runs of the real trainers), written by
``python -m common.plots RUN_DIR`` and by the trainers' end-of-training hooks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from common.plots import main, overlay_function

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


def _dcal_train(script, config: Path, data: Path, num_classes: int, save_dir: Path, *extra: str) -> None:
    from tests.dcal.conftest import tiny_opts

    # the eval resize equal to the input size: the pictures show whole images, not a centre crop of 550 px
    opts = [*tiny_opts(data, num_classes, save_dir), "data.resize_size=[32,32]"]
    script.main(argparse.ArgumentParser(parents=[script.get_args_parser()]).parse_args(
        ["--config", str(config), *extra, "--opts", *opts]))


@pytest.fixture(scope="module")
def xm_data(tmp_path_factory) -> Path:
    from common.synth.xmnet import write

    data_dir = tmp_path_factory.mktemp("xmnet_data")
    write(data_dir / "soybean_2_1", 45, seed=0, num_classes=3)
    return data_dir


def _xmnet_train(data: Path, out: Path, *extra: str) -> dict:
    from tests.xmnet.helpers import tiny
    from xmnet import Train

    return Train.main(Train.parse_args([*tiny(data, out), "--no-xgb_stage", "--save_masks", "0", *extra]))


def test_dcal_fgvc_training_draws_rollout_and_glca_overlays(tmp_path, capsys):
    from common.synth import cub200
    from dcal.scripts import train_fgvc
    from tests.dcal.conftest import FGVC_CONFIG

    cub200.write(tmp_path / "cub", 16, 0, num_classes=4)
    run = tmp_path / "fgvc"
    _dcal_train(train_fgvc, FGVC_CONFIG, tmp_path / "cub", 4, run)  # the hook of dcal/scripts/cli.py
    out = capsys.readouterr()
    assert f"plots: wrote {run / 'rollout_glca_overlays.png'}" in out.out, out.err[-2000:]
    assert _png(run / "rollout_glca_overlays.png")
    assert "not implemented" not in out.err
    # redrawn from the folder alone; without its data the overlay is skipped with one line, not an error
    (run / "rollout_glca_overlays.png").unlink()
    assert overlay_function("dcal")(run, n_images=2) == [run / "rollout_glca_overlays.png"]
    assert _png(run / "rollout_glca_overlays.png")
    (tmp_path / "cub").rename(tmp_path / "moved")
    capsys.readouterr()
    assert overlay_function("dcal")(run, n_images=2) == []
    assert f"dcal overlays skipped: data.data_root {tmp_path / 'cub'} not found" in capsys.readouterr().err


def test_dcal_reid_overlays_from_a_run_folder(tmp_path, capsys):
    from common.synth import veri776
    from dcal.scripts import train_reid
    from tests.dcal.conftest import REID_CONFIG

    veri776.write(tmp_path / "veri", 48, 0)
    run = tmp_path / "reid"
    _dcal_train(train_reid, REID_CONFIG, tmp_path / "veri", 4, run, "--no_plots")
    assert not (run / "rollout_glca_overlays.png").exists()  # --no_plots: nothing drawn at the end
    capsys.readouterr()
    assert main([str(run), "--paper", "dcal", "--n_images", "3"]) == 0
    assert capsys.readouterr().out.split()[-1] == str(run / "rollout_glca_overlays.png")
    assert _png(run / "rollout_glca_overlays.png")


def test_xmnet_classification_run_draws_attention_overlay_at_the_end(xm_data, tmp_path, capsys):
    run = tmp_path / "cls"
    _xmnet_train(xm_data, run, "--xmnet", "--cls_included")
    out = capsys.readouterr()
    assert f"plots: wrote {run / 'attention_overlays.png'}" in out.out, out.err[-2000:]
    assert _png(run / "attention_overlays.png") and _png(run / "curves_log.png")
    assert not (run / "vein_mask_overlays.png").exists()  # no segmentation decoder in this run


def test_xmnet_segmentation_overlay_from_a_run_folder_and_plots_false(xm_data, tmp_path, capsys):
    run = tmp_path / "seg"
    _xmnet_train(xm_data, run, "--xmnet", "--seg_included", "--unet", "--att_from", "5", "--plots", "false")
    assert not list(run.glob("*.png"))  # --plots false: no pictures at the end
    capsys.readouterr()
    assert main([str(run), "--paper", "xmnet", "--n_images", "3"]) == 0
    # segmentation only: the classifier and its attention were not trained, so only the vein masks
    assert capsys.readouterr().out.split() == [str(run / "curves_log.png"), str(run / "vein_mask_overlays.png")]
    assert _png(run / "vein_mask_overlays.png")


def test_xmnet_overlays_skip_without_attention_or_checkpoint(xm_data, tmp_path, capsys):
    run = tmp_path / "original"
    _xmnet_train(xm_data, run, "--cls_included", "--plots", "false")  # "Original": no attention module
    capsys.readouterr()
    assert overlay_function("xmnet")(run, n_images=2) == []
    assert "has no attention module" in capsys.readouterr().err
    args = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**args, "data_dir": str(tmp_path / "nowhere")}))
    assert overlay_function("xmnet")(run, n_images=2) == []
    assert "(--data_dir, --dataset) not found" in capsys.readouterr().err


@pytest.mark.parametrize("paper", ["dcal", "xmnet"])
def test_overlays_skip_cleanly_without_checkpoint(tmp_path, paper, capsys):
    assert overlay_function(paper)(tmp_path, n_images=2) == []
    assert f"plots: {paper} overlays skipped: no " in capsys.readouterr().err
