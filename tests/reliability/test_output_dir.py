"""Output folders that cannot be used are refused before training, naming the flag."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from common.run import RunDir, prepare_output_dir


def test_output_folder_below_a_regular_file_names_the_flag(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        RunDir(blocker / "run" / "sub", {"a": 1})
    assert str(err.value) == (f"--output_dir {blocker / 'run' / 'sub'}: cannot use it as the output folder: it is "
                              f"below {blocker}, which is a regular file")
    with pytest.raises(NotADirectoryError, match=r"^config key save_dir .*file\.txt: .*it is a regular file$"):
        RunDir(blocker, None, flag="config key save_dir")


def test_unwritable_output_folder_is_detected_before_training(tmp_path, monkeypatch):
    real_write = os.write

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(OSError, match=r"^--output_dir .*out: the output folder is not writable \(No space left on device\)$"):
        prepare_output_dir(tmp_path / "out")
    monkeypatch.setattr(os, "write", real_write)
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the probe file is gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder_is_refused(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            prepare_output_dir(out)
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("err, kind", [(errno.EROFS, OSError), (errno.EACCES, PermissionError)])
def test_output_folder_refusing_new_files_is_refused_even_as_root(tmp_path, monkeypatch, err, kind):
    """The read-only case without permission bits (which root ignores): the file system refuses to create
    files in the folder, as a read-only mount (EROFS) or an ACL/LSM denial (EACCES) would."""
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if Path(path).parent == out and flags & os.O_CREAT:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(kind) as exc:
        RunDir(out, {"a": 1})
    assert str(exc.value) == f"--output_dir {out}: the output folder is not writable ({os.strerror(err)})"
    monkeypatch.setattr(os, "open", real_open)
    assert list(out.iterdir()) == []  # nothing written (no args.json, no log) before the refusal


def test_dcal_save_dir_below_a_file_is_one_line_naming_the_config_key(tmp_path, capsys, monkeypatch):
    import argparse

    from common.cli import run_main
    from dcal.scripts import train_fgvc
    from tests.dcal.conftest import FGVC_CONFIG

    monkeypatch.delenv("TRACEBACK", raising=False)
    (tmp_path / "f").write_text("x")
    args = argparse.ArgumentParser(parents=[train_fgvc.get_args_parser()]).parse_args(
        ["--config", str(FGVC_CONFIG), "--opts", "device=cpu", f"save_dir={tmp_path / 'f' / 'run'}",
         f"data.data_root={tmp_path}"])
    with pytest.raises(SystemExit) as exc:
        run_main(train_fgvc.main, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: config key save_dir ") and "which is a regular file" in err[-1]


def test_disk_full_during_training_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, capsys):
    import common.engine as engine
    from common.cli import run_main
    from tests.reliability.helpers import ckpt_epoch, run_toy

    out = tmp_path / "run"
    run_toy(out, epochs=2)  # an earlier finished attempt in the same folder
    assert (out / "metrics.json").is_file()
    real = engine.save_checkpoint

    def full_disk(path, state):
        if state["epoch"] == 1:
            raise OSError(errno.ENOSPC, f"No space left on device: '{path}'")
        real(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", full_disk)
    monkeypatch.delenv("TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exc:
        run_main(lambda a: run_toy(out, epochs=3), None)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: [Errno 28] No space left on device")
    assert not (out / "metrics.json").exists()
    assert ckpt_epoch(out / "checkpoint_last.pth") == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
