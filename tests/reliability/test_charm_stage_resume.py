"""A CHARM-Xray stage (one fastai ``fit_one_cycle``) killed after the checkpoint that ends it, then run
again: the same best epoch, weights, optimizer state and stage files as a stage that was never killed.
In-process kills (``Killed``) on a tiny linear model, so these run in CI; ``test_kill9_charm_xmnet.py``
repeats the first case with a real ``kill -9`` of ``charm_xray/train.py`` (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import common.engine as engine
from charm_xray.engine_charm import CharmTask, StageSettings, build_fastai_adam, fit_one_cycle
from common.checkpoint import load_checkpoint
from common.dist import DistContext
from common.engine import build_loader
from tests.reliability.helpers import Killed, csv_epochs, kill_on_save, same_weights

CPU = DistContext()


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.backbone(x)))


def _stage(out: Path, *, valid_agrees: bool, patience: int | None) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = (x[:, :3] > 0).float()
    train = build_loader(TensorDataset(x, y), 16, train=True, ctx=CPU)
    # agreeing labels: the valid loss falls every epoch (the final epoch is the best); flipped labels: it
    # rises after the first epochs (early stopping)
    valid = build_loader(TensorDataset(x[:32], y[:32] if valid_agrees else 1 - y[:32]), 16, train=False, ctx=CPU)
    model = _Tiny()
    optimizer = build_fastai_adam(model, 1e-2)
    settings = StageSettings(patience=patience, min_delta=0.0, class_names=["a", "b", "c"], progress=False)
    summary = fit_one_cycle(out, CharmTask(model, nn.BCEWithLogitsLoss()), optimizer, train, valid, epochs=4,
                            lr=3e-2, settings=settings, ctx=CPU)
    return model, optimizer, summary


def _assert_same_stage(full: Path, resumed: Path, ref: tuple, got: tuple) -> None:
    assert same_weights(ref[0].state_dict(), got[0].state_dict())
    assert ref[1].state_dict()["state"].keys() == got[1].state_dict()["state"].keys()
    for k, s in ref[1].state_dict()["state"].items():
        assert all(torch.equal(s[n], got[1].state_dict()["state"][k][n]) for n in s)
    a, b = load_checkpoint(full / "checkpoint_best.pth"), load_checkpoint(resumed / "checkpoint_best.pth")
    assert a["epoch"] == b["epoch"] and same_weights(a["model"], b["model"])
    # metrics.json holds validation and training means only (no wall-clock values): equal as a whole
    assert json.loads((full / "metrics.json").read_text()) == json.loads((resumed / "metrics.json").read_text())
    assert csv_epochs(resumed / "log.csv") == csv_epochs(full / "log.csv")
    assert json.loads((resumed / "stage_done.json").read_text()) == json.loads((full / "stage_done.json").read_text())
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in full.iterdir())


def test_charm_stage_killed_between_last_and_best_of_its_final_epoch_reruns_to_the_uninterrupted_result(
        tmp_path, monkeypatch):
    ref = _stage(tmp_path / "full", valid_agrees=True, patience=None)
    assert ref[2]["best_epoch"] == 3  # the case under test: the final epoch is the best one
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_best.pth" and state["epoch"] == 3)
    with pytest.raises(Killed):
        _stage(tmp_path / "run", valid_agrees=True, patience=None)
    # the kill left checkpoint_last at the final epoch and checkpoint_best one epoch behind
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pth")["epoch"] == 2
    got = _stage(tmp_path / "run", valid_agrees=True, patience=None)
    _assert_same_stage(tmp_path / "full", tmp_path / "run", ref, got)


def test_charm_stage_killed_after_its_early_stopping_checkpoint_trains_nothing_on_rerun(tmp_path, monkeypatch):
    ref = _stage(tmp_path / "full", valid_agrees=False, patience=1)
    assert ref[2]["stopped_early"] and ref[2]["epochs_run"] < 4
    stop_epoch = ref[2]["epochs_run"] - 1
    real = engine.save_checkpoint

    def save_then_die(path, state):
        real(path, state)
        if state["epoch"] == stop_epoch:  # the stopping epoch is not a best one: only checkpoint_last
            raise Killed("killed after the last checkpoint")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _stage(tmp_path / "run", valid_agrees=False, patience=1)
    monkeypatch.setattr(engine, "save_checkpoint", real)
    assert not (tmp_path / "run" / "metrics.json").exists()
    got = _stage(tmp_path / "run", valid_agrees=False, patience=1)
    _assert_same_stage(tmp_path / "full", tmp_path / "run", ref, got)
    assert got[2]["epochs_run"] == ref[2]["epochs_run"] and got[2]["stopped_early"]
