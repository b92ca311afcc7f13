"""common.schedule.EpochCosineSchedule against torch's CosineAnnealingLR stepped once per epoch."""

import math

import pytest
import torch

from common.schedule import EpochCosineSchedule


def _torch_per_epoch(base_lr: float, t_max: int, epochs: int, eta_min: float = 0.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("base_lr,t_max,per_epoch,eta_min", [(0.05, 150, 7, 0.0), (0.02, 5, 3, 0.0), (0.1, 10, 1, 1e-3)])
def test_matches_cosine_annealing_lr_stepped_per_epoch(base_lr, t_max, per_epoch, eta_min):
    ref = _torch_per_epoch(base_lr, t_max, t_max, eta_min)
    s = EpochCosineSchedule(base_lr, t_max, per_epoch, min_lr=eta_min)
    for epoch, lr in enumerate(ref):
        for update in range(epoch * per_epoch, (epoch + 1) * per_epoch):  # constant within the epoch
            assert s.lr_for(update, {}) == pytest.approx(lr, rel=1e-9, abs=1e-12)


def test_closed_form_lr_scale_and_fixed_lr():
    s = EpochCosineSchedule(0.05, 4, updates_per_epoch=10)
    assert s.value(0) == 0.05 and s.value(9) == 0.05
    assert s.value(20) == pytest.approx(0.05 * (1 + math.cos(math.pi * 2 / 4)) / 2)
    assert s.lr_for(20, {"lr_scale": 0.1}) == pytest.approx(0.1 * s.value(20))
    assert s.lr_for(20, {"fixed_lr": 1e-4}) == 1e-4
    assert EpochCosineSchedule(0.05, 4, updates_per_epoch=0).value(3) == s.value(30)  # 0 updates/epoch -> 1


def test_rejects_non_positive_t_max():
    with pytest.raises(ValueError):
        EpochCosineSchedule(0.05, 0, 10)
