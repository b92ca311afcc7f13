"""A tiny regression/classification task used to test the shared loop (importable by subprocesses)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.ema import ModelEma
from common.engine import FitConfig, Task, build_loader, fit, updates_per_epoch
from common.optim import build_optimizer, param_groups
from common.run import RunDir
from common.schedule import WarmupCosineSchedule


class ToyTask(Task):
    def forward(self, batch):
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        return {"loss": loss, "acc": ((logits > 0).float() == y).float().mean()}


def toy_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    y = (x @ w > 0).float()
    return TensorDataset(x, y)


def toy_metric(out):
    pred = (out["logits"] > 0).float()
    return {"acc": (pred == out["target"]).float().mean().item(), "n": out["logits"].shape[0]}


def run_toy(output_dir, *, ctx, epochs=4, batch_size=8, resume=None, ema=True, stop_after_epoch=None,
            nan_at_epoch=None, dropout=0.2, num_workers=0, monitor="acc", patience=None, compile=False):
    """Train the toy model; returns (task, summary). ``stop_after_epoch`` simulates a kill."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3)).to(ctx.device)
    task = ToyTask(model)
    ds = toy_dataset()
    loader = build_loader(ds, batch_size, train=True, ctx=ctx, seed=1, num_workers=num_workers)
    val = build_loader(toy_dataset(24, seed=5), 8, train=False, ctx=ctx)
    opt = build_optimizer("adamw", param_groups(task, 0.05, no_weight_decay_norm_bias=True), lr=1e-2,
                          weight_decay=0.05)
    sched = WarmupCosineSchedule(1e-2, epochs * updates_per_epoch(loader), warmup_updates=3, min_lr=1e-4)
    model_ema = ModelEma(model, decay=0.9) if ema else None
    callbacks = []
    if stop_after_epoch is not None:
        callbacks.append(_Kill(stop_after_epoch))
    if nan_at_epoch is not None:
        task.nan_at_epoch = nan_at_epoch
        callbacks.append(_PoisonLoss(nan_at_epoch))
    config = FitConfig(epochs=epochs, output_dir=output_dir, monitor=monitor, eval_ema=ema, resume=resume,
                       patience=patience, progress=False, compile=compile)
    run = RunDir(output_dir, {"toy": True}, ctx)
    summary = fit(task, opt, loader, config=config, ctx=ctx, run=run, schedule=sched, data_loader_val=val,
                  metric_fn=toy_metric, ema=model_ema, callbacks=callbacks)
    return task, summary


class Killed(Exception):
    pass


class _Kill:
    """Raises after the checkpoint of ``epoch`` is written (next epoch start), like a killed job."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch + 1:
            raise Killed()


class _PoisonLoss:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            with torch.no_grad():
                state.task.model[0].weight.fill_(float("nan"))
