"""The engine's fastai hooks: min_delta in best/early-stopping decisions, one-cycle beta1 per update."""

import torch
from torch import nn

from common.dist import init_distributed
from common.engine import FitConfig, _is_better, build_loader, fit, updates_per_epoch
from common.run import RunDir
from common.schedule import OneCycleSchedule
from tests.common.toy import ToyTask, toy_dataset, toy_metric


def test_min_delta_needs_a_larger_improvement():
    assert _is_better(0.90, 1.0, "min", 0.05) and not _is_better(0.96, 1.0, "min", 0.05)
    assert _is_better(0.96, 1.0, "min", 0.0)
    assert _is_better(1.06, 1.0, "max", 0.05) and not _is_better(1.04, 1.0, "max", 0.05)


def test_one_cycle_sets_lr_and_beta1_every_update(tmp_path):
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    task = ToyTask(model)
    loader = build_loader(toy_dataset(), 8, train=True, ctx=ctx, seed=1)
    total = 2 * updates_per_epoch(loader)
    sched = OneCycleSchedule(1e-2, total, pct_start=0.3, div=5.0)
    seen = []
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, betas=(0.9, 0.99))
    orig_step = opt.step

    def step(*a, **k):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]))
        return orig_step(*a, **k)

    opt.step = step
    config = FitConfig(epochs=2, output_dir=tmp_path, monitor="acc", progress=False)
    fit(task, opt, loader, config=config, ctx=ctx, run=RunDir(tmp_path, None, ctx), schedule=sched,
        data_loader_val=build_loader(toy_dataset(16, seed=3), 8, train=False, ctx=ctx), metric_fn=toy_metric)
    assert len(seen) == total
    for u, (lr, betas) in enumerate(seen):
        assert abs(lr - sched.value(u)) < 1e-12 and abs(betas[0] - sched.momentum_for(u)) < 1e-12 and betas[1] == 0.99
