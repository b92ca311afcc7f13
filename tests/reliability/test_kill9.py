"""Real ``kill -9`` at the bookkeeping moments of ``fit``, then resume: the finished run equals an
uninterrupted one (bit-identical weights, same best checkpoint and metrics, one CSV row per epoch) and
no temporary file is left. The toy cases run in CI; every trainer is covered by the slow ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import csv_epochs, run_killer, same_weights, was_killed

POINTS = ("before_last", "before_best", "during_last")


def _run(point: str, epoch: int, module: str, argv: list[str], *, kill_files: str = "") -> subprocess.CompletedProcess:
    return run_killer(point, epoch, module, argv, timeout=600, KILL_FILES=kill_files)


_killed = was_killed


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_run(full: Path, resumed: Path, *, last: str, best: str | None, csvs: dict[str, int]) -> None:
    a, b = _load(full / last), _load(resumed / last)
    assert a["epoch"] == b["epoch"] and a["update"] == b["update"]
    assert same_weights(a["model"], b["model"]), "weights differ from the uninterrupted run"
    if a.get("ema") is not None:
        assert same_weights(a["ema"], b["ema"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, resumed))
    assert ma["best_epoch"] == mb["best_epoch"] and ma["best"] == mb["best"] and ma["final"] == mb["final"]
    if best is not None and ma["best_epoch"] is not None:
        assert _load(resumed / best)["epoch"] == mb["best_epoch"]
        assert same_weights(_load(full / best)["model"], _load(resumed / best)["model"])
    for name, n in csvs.items():
        assert csv_epochs(resumed / name) == list(range(n)), name
    assert not [p.name for p in resumed.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- toy (CI)

TOY = "tests.reliability.toy_train"


@pytest.fixture(scope="module")
def toy_full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_full")
    proc = _run("none", 0, TOY, [str(out), "4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("point", [pytest.param(p, marks=[] if p == "before_best" else [pytest.mark.slow])
                                   for p in POINTS])
def test_toy_kill9_at_bookkeeping_moment_then_resume_equals_uninterrupted(tmp_path, toy_full, point):
    out = tmp_path / "run"
    proc = _run(point, 1, TOY, [str(out), "4"])  # epoch 1 is the toy's best epoch
    assert _killed(proc), proc.stderr[-2000:]
    if point == "during_last":
        assert any(p.name.endswith(".tmp") for p in out.iterdir())
    proc = _run("none", 0, TOY, [str(out), "4", "auto"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_run(toy_full, out, last="checkpoint_last.pth", best="checkpoint_best.pth", csvs={"log.csv": 4})


# ---------------------------------------------------------------- trainers (slow)


@pytest.fixture(scope="module")
def dvxray_data(tmp_path_factory) -> Path:
    from common.synth.dvxray import write

    root = tmp_path_factory.mktemp("dvxray_data")
    write(root, 24, seed=1)
    return root


def _dvxray_argv(data: Path, out: Path) -> list[str]:
    from tests.dvxray.helpers import tiny_args

    return tiny_args(data, out, "--epochs", "3", "--sort_training_log", "false", "--ema_decay", "0.5")


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_dvxray_kill9_then_resume_equals_uninterrupted(tmp_path, dvxray_data, point):
    full, out = tmp_path / "full", tmp_path / "run"
    mod = "dvxray.main_finetune"
    assert _run("none", 0, mod, _dvxray_argv(dvxray_data, full)).returncode == 0
    best_epoch = json.loads((full / "metrics.json").read_text())["best_epoch"]
    assert _killed(_run(point, best_epoch, mod, _dvxray_argv(dvxray_data, out)))
    # dvxray refuses --resume DIR without a checkpoint (no silent fresh start): the user restarts fresh
    resume = ["--resume", str(out)] if (out / "checkpoint_last.pth").exists() else []
    proc = _run("none", 0, mod, [*_dvxray_argv(dvxray_data, out), *resume])
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_run(full, out, last="checkpoint_last.pth", best="checkpoint_best.pth",
                     csvs={"training_log.csv": 3})
    rows = (out / "experiments_summary_test_2.csv").read_text().splitlines()
    assert len(rows) == 2  # header + one run


def _cxrlt_argv(data: Path, out: Path) -> list[str]:
    return ["--data_dir", str(data), "--model", "convnextv2_atto", "--pretrained", "false", "--image_size", "32",
            "--num_workers", "0", "--device", "cpu", "--amp", "none", "--batch_size", "8",
            "--warmup_head_epochs", "1", "--finetune_epochs", "3", "--output_dir", str(out), "--ema_decay", "0.5"]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_cxrlt_stage1_kill9_in_phase2_then_resume_equals_uninterrupted(tmp_path, point):
    from common.synth import mimic as synth_mimic

    data = tmp_path / "mimic"
    synth_mimic.write(data, n=24, seed=0)
    full, out = tmp_path / "full", tmp_path / "run"
    mod = "cxrlt.train_stage1"
    assert _run("none", 0, mod, _cxrlt_argv(data, full)).returncode == 0
    best_epoch = json.loads((full / "metrics.json").read_text())["best_epoch"]
    proc = _run(point, best_epoch, mod, _cxrlt_argv(data, out),
                kill_files="checkpoint_last.pth,best_convnext_model.pth")
    assert _killed(proc), proc.stderr[-2000:]
    proc = _run("none", 0, mod, [*_cxrlt_argv(data, out), "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_run(full, out, last="checkpoint_last.pth", best="best_convnext_model.pth",
                     csvs={"log.csv": 3, "log_warmup.csv": 1})


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_dcal_fgvc_kill9_then_resume_equals_uninterrupted(tmp_path, point):
    from common.synth import cub200
    from tests.dcal.conftest import FGVC_CONFIG, tiny_opts

    data = tmp_path / "cub"
    cub200.write(data, 16, 0, num_classes=4)
    full, out = tmp_path / "full", tmp_path / "run"

    def argv(save: Path) -> list[str]:
        return ["--config", str(FGVC_CONFIG), "--opts", *tiny_opts(data, 4, save, epochs=3),
                "model.num_sa_blocks=1", "model.num_pwca_blocks=0"]

    mod = "dcal.scripts.train_fgvc"
    proc = _run("none", 0, mod, argv(full))
    assert proc.returncode == 0, proc.stderr[-2000:]
    best_epoch = json.loads((full / "metrics.json").read_text())["best_epoch"]
    assert _killed(_run(point, best_epoch, mod, argv(out)))
    proc = _run("none", 0, mod, [*argv(out)[:2], "--resume", "auto", *argv(out)[2:]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_run(full, out, last="checkpoint_last.pth", best="checkpoint_best.pth", csvs={"log.csv": 3})


@pytest.mark.slow
def test_dcal_reid_kill9_between_last_and_best_then_resume_equals_uninterrupted(tmp_path):
    from common.synth import veri776
    from tests.dcal.conftest import REID_CONFIG, tiny_opts

    data = tmp_path / "veri"
    veri776.write(data, 48, 0)
    full, out = tmp_path / "full", tmp_path / "run"

    def argv(save: Path, *resume: str) -> list[str]:
        return ["--config", str(REID_CONFIG), *resume, "--opts", *tiny_opts(data, 4, save, epochs=2, batch=8),
                "model.num_sa_blocks=1", "model.num_pwca_blocks=0"]

    mod = "dcal.scripts.train_reid"
    proc = _run("none", 0, mod, argv(full))
    assert proc.returncode == 0, proc.stderr[-2000:]
    best_epoch = json.loads((full / "metrics.json").read_text())["best_epoch"]
    assert _killed(_run("before_best", best_epoch, mod, argv(out)))
    proc = _run("none", 0, mod, argv(out, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_run(full, out, last="checkpoint_last.pth", best="checkpoint_best.pth", csvs={"log.csv": 2})
