"""Kills aimed at the bookkeeping moments of ``common.engine.fit`` (toy model, in-process kills)."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import CheckpointError
from common.engine import NonFiniteLossError
from tests.common.toy import ToyTask
from tests.reliability.helpers import Killed, ckpt_epoch, csv_epochs, kill_on_save, run_toy, same_weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    task, summary = run_toy(out)
    assert summary["best_epoch"] == 1  # the scenario below needs a best epoch after epoch 0
    return out, task, summary


def test_kill_between_last_and_best_leaves_a_consistent_pair_after_resume(tmp_path, monkeypatch, uninterrupted):
    full_out, full_task, full_summary = uninterrupted
    out = tmp_path / "run"
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_best.pth" and state["epoch"] == 1)
    with pytest.raises(Killed):
        run_toy(out)
    # the kill window: last names epoch 1 as best, the best file still holds epoch 0
    assert ckpt_epoch(out / "checkpoint_last.pth") == 1 and ckpt_epoch(out / "checkpoint_best.pth") == 0
    task, summary = run_toy(out, resume="auto")
    best = torch.load(out / "checkpoint_best.pth", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] == json.loads((out / "metrics.json").read_text())["best_epoch"] == 1
    full_best = torch.load(full_out / "checkpoint_best.pth", weights_only=True)
    assert same_weights(best["model"], full_best["model"])
    assert same_weights(task.model.state_dict(), full_task.model.state_dict())
    assert summary == full_summary | {"final": summary["final"], "best": summary["best"]}
    assert csv_epochs(out / "log.csv") == [0, 1, 2, 3]


def test_kill_between_last_and_best_of_the_final_epoch_is_repaired_by_resuming_the_finished_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    # epoch 0 is the best of a 1-epoch run; kill before its best file is written
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_best.pth")
    with pytest.raises(Killed):
        run_toy(out, epochs=1)
    assert not (out / "checkpoint_best.pth").exists()
    _, summary = run_toy(out, epochs=1, resume="auto")
    assert ckpt_epoch(out / "checkpoint_best.pth") == summary["best_epoch"] == 0


@pytest.mark.parametrize("resume", [None, "auto"])
def test_kill_after_the_first_csv_row_before_any_checkpoint_leaves_no_duplicate_row(tmp_path, monkeypatch, resume):
    out = tmp_path / "run"
    kill_on_save(monkeypatch, lambda path, state: state["epoch"] == 0)
    with pytest.raises(Killed):
        run_toy(out, epochs=2)
    assert csv_epochs(out / "log.csv") == [0] and not (out / "checkpoint_last.pth").exists()
    run_toy(out, epochs=2, resume=resume)  # nothing to resume from: a fresh start
    assert csv_epochs(out / "log.csv") == [0, 1]


def test_kill_during_a_later_checkpoint_write_then_resume_keeps_one_row_per_epoch(tmp_path, monkeypatch):
    out = tmp_path / "run"
    kill_on_save(monkeypatch, lambda path, state: path.name == "checkpoint_last.pth" and state["epoch"] == 2)
    with pytest.raises(Killed):
        run_toy(out)
    assert csv_epochs(out / "log.csv") == [0, 1, 2]
    run_toy(out, resume="auto")
    assert csv_epochs(out / "log.csv") == [0, 1, 2, 3]


def test_stale_temp_files_of_an_interrupted_save_are_removed_at_start(tmp_path):
    out = tmp_path / "run"
    run_toy(out, epochs=1)
    stale = [out / ".checkpoint_last.pth.ab3_xy9z.tmp", out / ".log.csv.k2j4h5g6.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    keep = out / ".notes.tmp"  # not the atomic-write pattern: left alone
    keep.write_text("mine")
    run_toy(out, epochs=2, resume="auto")
    assert not any(p.exists() for p in stale) and keep.exists()


def test_resume_with_another_architecture_is_one_line_naming_the_checkpoint_and_the_argument(tmp_path):
    out = tmp_path / "run"
    run_toy(out, epochs=1, hidden=32)
    with pytest.raises(CheckpointError) as err:
        run_toy(out, epochs=2, hidden=16, resume="auto")
    text = str(err.value)
    assert "\n" not in text
    assert str(out / "checkpoint_last.pth") in text
    assert "hidden 32 in the checkpoint, 16 on the command line" in text
    assert "was written with other arguments" in text and "another output folder" in text


def test_resume_with_another_learning_rate_is_refused_before_any_work(tmp_path):
    # a killed run resumed with another value of a flag that changes the result would finish as neither
    # setting: refused, naming the flag (epochs, output folders and speed-only flags may differ)
    out = tmp_path / "run"
    run_toy(out, epochs=1, lr=0.1)
    before = (out / "log.csv").read_text()
    with pytest.raises(CheckpointError) as err:
        run_toy(out, epochs=2, lr=0.05, resume="auto")
    assert "lr 0.1 in the checkpoint, 0.05 on the command line" in str(err.value)
    assert (out / "log.csv").read_text() == before
    run_toy(out, epochs=2, lr=0.1, resume="auto")  # the same flags and more epochs: resumes
    assert csv_epochs(out / "log.csv") == [0, 1]


def test_resume_of_another_trainers_checkpoint_names_the_trainer(tmp_path):
    out = tmp_path / "run"
    run_toy(out, epochs=1, trainer="dcal/scripts/train_fgvc.py")
    with pytest.raises(CheckpointError, match=r"^--resume: .*checkpoint_last\.pth does not fit this run: written by "
                                              r"dcal/scripts/train_fgvc\.py, not dvxray/main_finetune\.py$"):
        run_toy(out, epochs=2, trainer="dvxray/main_finetune.py", resume="auto")


def test_unreadable_last_checkpoint_names_the_previous_good_one(tmp_path):
    out = tmp_path / "run"
    run_toy(out, epochs=2)
    data = (out / "checkpoint_last.pth").read_bytes()
    (out / "checkpoint_last.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        run_toy(out, epochs=3, resume="auto")
    text = str(err.value)
    assert "truncated or corrupted" in text and "\n" not in text
    assert f"the previous good checkpoint is {out / 'checkpoint_best.pth'}, epoch 1" in text


class _NanAt(ToyTask):
    """Loss NaN at a few chosen global steps (8 batches per epoch)."""

    bad_steps = {3, 12}
    step = 0

    def forward(self, batch):
        out = super().forward(batch)
        if self.training:
            if type(self).step in self.bad_steps:
                out["loss"] = out["loss"] * float("nan")
            type(self).step += 1
        return out


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    _NanAt.step = 0
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        run_toy(out, task_cls=_NanAt)
    text = str(err.value)
    assert "epoch 0, iteration 3 of 8 (global step 3, after optimizer update 3)" in text
    assert "none written yet" in text
    _NanAt.step, _NanAt.bad_steps = 0, {12}
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 4 of 8 \(global step 12.*Last good checkpoint: "
                                                 r".*checkpoint_last\.pth"):
        run_toy(out, task_cls=_NanAt)
    assert ckpt_epoch(out / "checkpoint_last.pth") == 0
    _NanAt.bad_steps = {3, 12}


def test_skip_nonfinite_skips_and_counts_the_batches(tmp_path):
    _NanAt.step = 0
    out = tmp_path / "run"
    task, summary = run_toy(out, epochs=2, task_cls=_NanAt, skip_nonfinite=True)
    assert all(torch.isfinite(p).all() for p in task.parameters())
    assert csv_epochs(out / "log.csv", "train_nonfinite_skipped") == [1, 1]
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["update"] == 2 * 8 - 2
