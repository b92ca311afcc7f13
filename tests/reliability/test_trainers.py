"""The gaps found on the landed trainers, on their own entry points (tiny models, synthetic data, CPU).

Kills are simulated in-process by raising ``Killed`` (a BaseException nothing catches) right before a
checkpoint write; ``test_kill9.py`` (slow) repeats representative ones with a real ``kill -9``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError
from tests.dvxray.helpers import tiny_args
from tests.reliability.helpers import Killed, ckpt_epoch, csv_epochs, kill_on_save


def _dvxray(argv):
    from dvxray import main_finetune

    parser = argparse.ArgumentParser(parents=[main_finetune.get_args_parser()])
    args = parser.parse_args(argv)
    main_finetune.check_args(parser, args)
    return main_finetune.main(args)


@pytest.fixture(scope="module")
def dvxray_data(tmp_path_factory) -> Path:
    from common.synth.dvxray import write

    root = tmp_path_factory.mktemp("dvxray_data")
    write(root, 24, seed=1)
    return root


def _summary_rows(out: Path) -> list[dict]:
    with open(out / "experiments_summary_test_2.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_dvxray_resuming_a_finished_run_adds_no_second_summary_row(dvxray_data, tmp_path):
    out = tmp_path / "run"
    argv = tiny_args(dvxray_data, out, "--epochs", "1", "--teacher_mode", "false")
    _dvxray(argv)
    assert len(_summary_rows(out)) == 1
    _dvxray([*argv, "--resume", str(out)])
    assert len(_summary_rows(out)) == 1
    # a kill after fit but before the summary row: the resumed (finished) run writes the missing row
    (out / "experiments_summary_test_2.csv").unlink()
    _dvxray([*argv, "--resume", str(out)])
    assert len(_summary_rows(out)) == 1


def test_dvxray_resume_with_another_neck_width_is_one_line_naming_the_flag(dvxray_data, tmp_path):
    out = tmp_path / "run"
    argv = tiny_args(dvxray_data, out, "--epochs", "1", "--teacher_mode", "false")
    _dvxray(argv)
    narrow = [a if a != "32" or argv[i - 1] != "--fpn_out_channels" else "16" for i, a in enumerate(argv)]
    with pytest.raises(CheckpointError) as err:
        _dvxray([*narrow, "--epochs", "2", "--resume", str(out)])
    text = str(err.value)
    assert "\n" not in text and str(out / "checkpoint_last.pth") in text
    assert "fpn_out_channels 32 in the checkpoint, 16 on the command line" in text


def test_dvxray_given_a_checkpoint_of_another_trainer_names_it(dvxray_data, tmp_path):
    """A checkpoint as dcal's train_from_config writes it (trainer + its args) given to dvxray."""
    from common.checkpoint import capture_rng_state, save_checkpoint

    foreign = tmp_path / "dcal_last.pth"
    save_checkpoint(foreign, {"model": {"backbone.cls_token": torch.zeros(1, 1, 8)}, "optimizer": {}, "epoch": 0,
                              "update": 1, "rng": capture_rng_state(), "trainer": "dcal/scripts/train_fgvc.py",
                              "args": {"config": {"task_type": "fgvc", "model": {"embed_dim": 8}}, "gpu": 0}})
    argv = tiny_args(dvxray_data, tmp_path / "run", "--epochs", "1", "--teacher_mode", "false")
    with pytest.raises(CheckpointError, match=r"^--resume.*dcal_last\.pth.*written by dcal/scripts/train_fgvc\.py"):
        _dvxray([*argv, "--resume", str(foreign)])


def test_dvxray_fresh_start_after_a_kill_before_the_first_checkpoint_keeps_one_row_per_epoch(dvxray_data, tmp_path,
                                                                                           monkeypatch):
    out = tmp_path / "run"
    argv = tiny_args(dvxray_data, out, "--epochs", "2", "--teacher_mode", "false", "--sort_training_log", "false")
    kill_on_save(monkeypatch, lambda path, state: state["epoch"] == 0)
    with pytest.raises(Killed):
        _dvxray(argv)
    assert csv_epochs(out / "training_log.csv") == [0]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _dvxray([*argv, "--resume", str(out)])
    _dvxray(argv)
    assert csv_epochs(out / "training_log.csv") == [0, 1]


# ---------------------------------------------------------------- DCAL


def _dcal_fgvc(cub_root: Path, out: Path, epochs: int, *extra: str) -> dict:
    from dcal.scripts import train_fgvc
    from tests.dcal.conftest import FGVC_CONFIG, tiny_opts

    args = argparse.ArgumentParser(parents=[train_fgvc.get_args_parser()]).parse_args(
        ["--config", str(FGVC_CONFIG), *extra, "--opts", *tiny_opts(cub_root, 4, out, epochs=epochs),
         "model.num_sa_blocks=1", "model.num_pwca_blocks=0"])
    return train_fgvc.main(args)


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    from common.synth import cub200

    root = tmp_path_factory.mktemp("cub")
    cub200.write(root, 16, 0, num_classes=4)
    return root


def test_dcal_kill_between_last_and_best_then_resume_keeps_best_and_metrics_consistent(cub_root, tmp_path,
                                                                                       monkeypatch):
    out = tmp_path / "run"
    # kill right before the best file of the final epoch (always best: an epoch-0 run)
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_best.pth")
    with pytest.raises(Killed):
        _dcal_fgvc(cub_root, out, 1)
    assert not (out / "checkpoint_best.pth").exists()
    summary = _dcal_fgvc(cub_root, out, 1, "--resume", "auto")
    assert ckpt_epoch(out / "checkpoint_best.pth") == summary["best_epoch"] == 0
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 0


# ---------------------------------------------------------------- CXR-LT


def test_cxrlt_stage1_phase2_fresh_start_after_a_kill_keeps_one_row_per_epoch(tmp_path, monkeypatch):
    from common.synth import mimic as synth_mimic
    from cxrlt import train_stage1

    root = tmp_path / "mimic"
    synth_mimic.write(root, n=16, seed=0)
    out = tmp_path / "out"
    argv = ["--data_dir", str(root), "--model", "convnextv2_atto", "--pretrained", "false", "--image_size", "32",
            "--num_workers", "0", "--device", "cpu", "--amp", "none", "--batch_size", "8",
            "--warmup_head_epochs", "1", "--finetune_epochs", "1", "--output_dir", str(out)]
    parse = argparse.ArgumentParser(parents=[train_stage1.get_args_parser()]).parse_args
    # phase 1 completes; phase 2 is killed after its epoch-0 row, before its first checkpoint
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_last.pth")
    with pytest.raises(Killed):
        train_stage1.main(parse(argv))
    assert csv_epochs(out / "log.csv") == [0] and not (out / "checkpoint_last.pth").exists()
    stale = out / ".checkpoint_last.pth.abcd1234.tmp"
    stale.write_bytes(b"partial write")
    summary = train_stage1.main(parse([*argv, "--resume", "auto"]))
    assert csv_epochs(out / "log.csv") == [0] and csv_epochs(out / "log_warmup.csv") == [0]
    assert not stale.exists()
    assert ckpt_epoch(out / "best_convnext_model.pth") == summary["best_epoch"] == 0


@pytest.mark.parametrize("value", ["true", "false"])
def test_cxrlt_skip_nonfinite_flag_reaches_both_phases(tmp_path, monkeypatch, value):
    import cxrlt.task
    from common.synth import mimic as synth_mimic
    from cxrlt import train_stage1

    root = tmp_path / "mimic"
    synth_mimic.write(root, n=16, seed=0)
    seen = []

    def fake_fit(*args, config, **kwargs):
        seen.append(config.skip_nonfinite)
        return {"best": {}}

    monkeypatch.setattr(cxrlt.task, "fit", fake_fit)
    argv = ["--data_dir", str(root), "--model", "convnextv2_atto", "--pretrained", "false", "--image_size", "32",
            "--num_workers", "0", "--device", "cpu", "--batch_size", "8", "--output_dir", str(tmp_path / "out"),
            "--skip_nonfinite", value]
    train_stage1.main(argparse.ArgumentParser(parents=[train_stage1.get_args_parser()]).parse_args(argv))
    assert seen == [value == "true"] * 2


def test_dcal_given_a_dvxray_checkpoint_names_the_trainer(cub_root, tmp_path):
    from common.checkpoint import capture_rng_state, save_checkpoint

    foreign = tmp_path / "dvxray_last.pth"
    save_checkpoint(foreign, {"model": {"backbone.stem.0.weight": torch.zeros(8, 3, 4, 4)}, "optimizer": {},
                              "epoch": 0, "update": 1, "rng": capture_rng_state(), "trainer": "dvxray/main_finetune.py",
                              "args": {"model": "convnextv2_atto", "fpn_out_channels": 32, "fuse_mode": "add",
                                       "head_type": "fpn_pan", "batch_size": 8, "lr": 1e-3}})
    with pytest.raises(CheckpointError, match=r"^--resume.*dvxray_last\.pth does not fit this run: written by "
                                              r"dvxray/main_finetune\.py \(its arguments"):
        _dcal_fgvc(cub_root, tmp_path / "run", 1, "--resume", str(foreign))
