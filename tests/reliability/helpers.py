"""Helpers of the reliability tests: a configurable toy run and simulated kills at chosen moments."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import common.engine as engine
from common.dist import DistContext
from common.ema import ModelEma
from common.engine import FitConfig, build_loader, fit, updates_per_epoch
from common.optim import build_optimizer
from common.run import RunDir
from common.schedule import WarmupCosineSchedule
from tests.common.toy import ToyTask, toy_dataset, toy_metric

CPU = DistContext()


class Killed(BaseException):
    """Raised where a ``kill -9`` would stop the process (a BaseException: no handler catches it)."""


def run_toy(out: Path, *, epochs: int = 4, resume: str | None = None, hidden: int = 16, trainer: str | None = None,
            skip_nonfinite: bool = False, task_cls: type = ToyTask, monitor: str = "acc",
            monitor_mode: str = "max", lr: float = 1e-2) -> tuple[ToyTask, dict[str, Any]]:
    """Train the toy model of ``tests/common/toy.py`` (with EMA and a best checkpoint) in ``out``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 3))
    task = task_cls(model)
    loader = build_loader(toy_dataset(), 8, train=True, ctx=CPU, seed=1)
    val = build_loader(toy_dataset(24, seed=5), 8, train=False, ctx=CPU)
    opt = build_optimizer("adamw", task.parameters(), lr=lr, weight_decay=0.05)
    sched = WarmupCosineSchedule(lr, epochs * updates_per_epoch(loader), warmup_updates=3, min_lr=1e-4)
    ema = ModelEma(model, decay=0.9)
    config = FitConfig(epochs=epochs, output_dir=out, monitor=monitor, monitor_mode=monitor_mode, eval_ema=True,
                       resume=resume, progress=False, trainer=trainer, skip_nonfinite=skip_nonfinite)
    args = {"hidden": hidden, "epochs": epochs, "output_dir": str(out), "lr": lr}
    run = RunDir(out, args, CPU)
    summary = fit(task, opt, loader, config=config, ctx=CPU, run=run, schedule=sched, data_loader_val=val,
                  metric_fn=toy_metric, ema=ema, args=args)
    return task, summary


def kill_on_save(monkeypatch, when: Callable[[Path, dict], bool]) -> None:
    """Make ``fit``'s checkpoint writes raise ``Killed`` just before the first write for which ``when(path,
    state)`` is true (the file is not written: the kill lands before it)."""
    real = engine.save_checkpoint

    def save(path, state):
        if when(Path(path), state):
            monkeypatch.setattr(engine, "save_checkpoint", real)
            raise Killed(f"killed before writing {path}")
        real(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", save)


def csv_epochs(path: Path, column: str = "epoch") -> list[int]:
    with open(path, newline="") as f:
        return [int(float(r[column])) for r in csv.DictReader(f)]


def ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ROOT = Path(__file__).resolve().parents[2]
# spawned trainers get one thread each (the machine is shared), and the repository on their path
KILL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_killer(point: str, epoch: int, module: str, argv: list[str], *, timeout: float = 900,
               **env: str) -> subprocess.CompletedProcess:
    """``python -m tests.reliability.killer POINT EPOCH MODULE ARGV`` (see ``killer.py``); ``env`` adds
    ``KILL_FILES``/``KILL_DIR``."""
    return subprocess.run([sys.executable, "-m", "tests.reliability.killer", point, str(epoch), module, *argv],
                          cwd=ROOT, env={**os.environ, **KILL_ENV, **env}, capture_output=True, text=True,
                          timeout=timeout)


def was_killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL
