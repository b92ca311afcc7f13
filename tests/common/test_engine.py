import csv
import json
import logging

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.dist import DistContext, init_distributed
from common.engine import NonFiniteLossError
from tests.common.toy import Killed, run_toy

CPU = DistContext()


def _weights(task):
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def test_fit_killed_and_resumed_equals_uninterrupted(tmp_path):
    full_task, full_summary = run_toy(tmp_path / "full", ctx=CPU)
    with pytest.raises(Killed):
        run_toy(tmp_path / "resumed", ctx=CPU, stop_after_epoch=1)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pth")["epoch"] == 1
    resumed_task, resumed_summary = run_toy(tmp_path / "resumed", ctx=CPU, resume="auto")

    for k, v in _weights(full_task).items():
        assert torch.equal(v, resumed_task.model.state_dict()[k]), k
    full_ema = load_checkpoint(tmp_path / "full" / "checkpoint_last.pth")["ema"]
    resumed_ema = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pth")["ema"]
    for k, v in full_ema.items():
        assert torch.equal(v, resumed_ema[k]), k
    assert resumed_summary["best"] == full_summary["best"]
    assert resumed_summary["best_epoch"] == full_summary["best_epoch"]

    with open(tmp_path / "resumed" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    with open(tmp_path / "full" / "log.csv") as f:
        full_rows = list(csv.DictReader(f))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]


def test_fit_resume_of_finished_run_trains_nothing(tmp_path):
    run_toy(tmp_path, ctx=CPU, epochs=2)
    before = load_checkpoint(tmp_path / "checkpoint_last.pth")
    _, summary = run_toy(tmp_path, ctx=CPU, epochs=2, resume=str(tmp_path))
    after = load_checkpoint(tmp_path / "checkpoint_last.pth")
    assert after["update"] == before["update"]
    assert summary["epochs_run"] == 2


def test_fit_metrics_json_and_best_checkpoint(tmp_path):
    _, summary = run_toy(tmp_path, ctx=CPU, epochs=3)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["monitor"] == "acc"
    assert set(on_disk["best"]) >= {"acc", "acc_ema", "n"}
    assert on_disk["best"]["n"] == 24  # every validation sample scored once
    best = load_checkpoint(tmp_path / "checkpoint_best.pth")
    assert best["epoch"] == on_disk["best_epoch"]
    assert json.loads((tmp_path / "args.json").read_text()) == {"toy": True}


def test_fit_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 0.*checkpoint_last\.pth"):
        run_toy(tmp_path, ctx=CPU, nan_at_epoch=2)
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.pth")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_fit_resume_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found: .*nope.pth"):
        run_toy(tmp_path, ctx=CPU, resume=str(tmp_path / "nope.pth"))


def test_init_distributed_cuda_without_gpu_falls_back_with_warning(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level(logging.WARNING):
        ctx = init_distributed("cuda")
    assert ctx.device.type == "cpu" and ctx.world_size == 1
    assert "no CUDA device" in caplog.text


def test_fit_early_stopping_on_a_metric_that_stops_improving(tmp_path):
    # "n" (number of validation samples) is constant: best at epoch 0, then no improvement
    _, summary = run_toy(tmp_path, ctx=CPU, epochs=6, monitor="n", patience=2)
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 0


def test_fit_unknown_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="monitored metric 'val_mAP' not among"):
        run_toy(tmp_path, ctx=CPU, epochs=1, monitor="mAP")
