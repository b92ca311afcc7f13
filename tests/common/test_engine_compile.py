"""``FitConfig.compile`` / ``--compile``: torch.compile of the training step and evaluation forward."""

from __future__ import annotations

import argparse

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.cli import add_compile_flag
from common.dist import DistContext
from tests.common.toy import run_toy

CPU = DistContext()


def test_compile_flag_forms():
    parser = argparse.ArgumentParser()
    add_compile_flag(parser)
    assert parser.parse_args([]).compile is False
    assert parser.parse_args(["--compile"]).compile is True
    assert parser.parse_args(["--compile", "false"]).compile is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--compile", "maybe"])


def test_fit_compiles_train_and_eval_modules_and_saves_plain_keys(tmp_path, monkeypatch):
    # Recording stand-in for torch.compile: proves what fit compiles without paying for inductor.
    compiled = []

    def fake_compile(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    run_toy(tmp_path / "off", ctx=CPU, epochs=1)
    assert compiled == []
    task, _ = run_toy(tmp_path / "on", ctx=CPU, epochs=1, compile=True)
    # the task (model + loss) for training, the model and the EMA copy for evaluation
    assert compiled == ["ToyTask", "Sequential", "Sequential"]
    ckpt = load_checkpoint(tmp_path / "on" / "checkpoint_last.pth")
    assert list(ckpt["model"]) == list(task.model.state_dict())


def test_fit_with_real_torch_compile_matches_eager(tmp_path):
    # Dropout off: inductor draws its own random numbers, so only a deterministic model can match.
    eager_task, eager = run_toy(tmp_path / "eager", ctx=CPU, epochs=2, dropout=0.0)
    compiled_task, comp = run_toy(tmp_path / "compiled", ctx=CPU, epochs=2, dropout=0.0, compile=True)
    for key, value in eager_task.model.state_dict().items():
        torch.testing.assert_close(compiled_task.model.state_dict()[key], value, atol=1e-5, rtol=1e-4)
    assert comp["best"]["acc"] == pytest.approx(eager["best"]["acc"], abs=1e-6)
    ckpt = load_checkpoint(tmp_path / "compiled" / "checkpoint_last.pth")
    assert not any("_orig_mod" in k for k in ckpt["model"])


def test_channels_last_auto_rule_and_flag():
    from common.cli import add_channels_last_flag
    from common.engine import resolve_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last(None, torch.bfloat16, cpu) is True
    assert resolve_channels_last(None, None, cpu) is False
    assert resolve_channels_last(None, torch.bfloat16, cuda) is False
    assert resolve_channels_last(True, None, cpu) is True
    assert resolve_channels_last(False, torch.bfloat16, cpu) is False
    parser = argparse.ArgumentParser()
    add_channels_last_flag(parser)
    assert parser.parse_args([]).channels_last is None
    assert parser.parse_args(["--channels_last", "auto"]).channels_last is None
    assert parser.parse_args(["--channels_last", "true"]).channels_last is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--channels_last", "nhwc"])


def test_to_device_channels_last_only_touches_4d_float_tensors():
    from common.engine import to_device

    images, masks, target = torch.randn(2, 3, 4, 5), torch.zeros(2, 1, 4, 5, dtype=torch.long), torch.ones(2, 7)
    out = to_device({"x": [images, masks], "y": target}, torch.device("cpu"), channels_last=True)
    assert out["x"][0].is_contiguous(memory_format=torch.channels_last) and not out["x"][0].is_contiguous()
    assert torch.equal(out["x"][0], images)
    assert out["x"][1].is_contiguous() and out["y"].is_contiguous()
    plain = to_device([images], torch.device("cpu"))
    assert plain[0].is_contiguous()
