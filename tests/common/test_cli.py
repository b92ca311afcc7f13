import argparse

import pytest
import torch

from common.cli import resolve_amp, run_main
from common.data.errors import DataError


def _fails(args):
    raise DataError("list file not found: /x/train.txt")


def test_run_main_turns_user_errors_into_one_line(capsys, monkeypatch):
    monkeypatch.delenv("TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exc:
        run_main(_fails, argparse.Namespace())
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: list file not found: /x/train.txt\n"


def test_run_main_keeps_traceback_when_asked_and_passes_results(monkeypatch):
    monkeypatch.setenv("TRACEBACK", "1")
    with pytest.raises(DataError):
        run_main(_fails, argparse.Namespace())
    assert run_main(lambda a: a.x + 1, argparse.Namespace(x=1)) == 2


def test_run_main_does_not_hide_programming_errors():
    def buggy(args):
        raise TypeError("bug")

    with pytest.raises(TypeError):
        run_main(buggy, argparse.Namespace())


def test_resolve_amp_never_uses_fp16_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("fp16", cpu) is torch.bfloat16
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("none", cpu) is None
    with pytest.raises(ValueError, match="--amp: unknown value 'fp8'"):
        resolve_amp("fp8", cpu)


def test_run_main_unwraps_errors_raised_in_loader_workers(tmp_path, capsys, monkeypatch):
    from torch.utils.data import DataLoader

    from common.data import MultiLabelImageDataset
    from common.data.lists import ImageRecord

    monkeypatch.delenv("TRACEBACK", raising=False)
    missing = tmp_path / "missing.png"
    ds = MultiLabelImageDataset([ImageRecord(paths=(str(missing),), labels=(1.0,), source="list.txt", line=7)])

    def load_all(args):
        for _ in DataLoader(ds, batch_size=1, num_workers=1):
            pass

    with pytest.raises(SystemExit):
        run_main(load_all, argparse.Namespace())
    err = capsys.readouterr().err
    assert err == f"error: image not found: {missing} (listed at list.txt:7)\n"


def test_resolve_amp_auto_on_cpu_uses_bf16_only_with_native_support(monkeypatch):
    import common.cli as cli

    cpu = torch.device("cpu")
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    assert cli.resolve_amp("auto", cpu) is None
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert cli.resolve_amp("auto", cpu) is torch.bfloat16
    # an explicit request is honoured whatever the CPU
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    assert cli.resolve_amp("bf16", cpu) is torch.bfloat16
