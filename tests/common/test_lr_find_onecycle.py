"""fastai's one-cycle schedule, lr_find and its valley suggestion (charm_xray.md §14), hand-computed."""

import math

import pytest
import torch
from torch import nn

from common.engine import Task
from common.lr_find import lr_find, minimum, suggest, valley
from common.schedule import OneCycleSchedule


def test_one_cycle_hand_computed_points():
    s = OneCycleSchedule(1.0, 8, pct_start=0.25, div=25.0, div_final=1e5)
    assert s.value(0) == pytest.approx(0.04)
    # pos 1/8 = half of the warm-up: 0.04 + (1 + cos(pi/2)) * 0.96 / 2
    assert s.value(1) == pytest.approx(0.52)
    assert s.value(2) == pytest.approx(1.0)
    # pos 5/8: half of the annealing part: 1 + (1 + cos(pi/2)) * (1e-5 - 1) / 2
    assert s.value(5) == pytest.approx(0.500005)
    assert s.value(8) == pytest.approx(1e-5)
    assert s.momentum_for(0) == pytest.approx(0.95)
    assert s.momentum_for(1) == pytest.approx(0.90)
    assert s.momentum_for(2) == pytest.approx(0.85)
    assert s.momentum_for(5) == pytest.approx(0.90)
    assert s.momentum_for(8) == pytest.approx(0.95)


def test_one_cycle_group_peak_and_fine_tune_settings():
    s = OneCycleSchedule(1e-3, 100, pct_start=0.99)
    assert s.lr_for(0, {"lr_max": 2e-3}) == pytest.approx(2e-3 / 25)
    assert s.lr_for(99, {}) == pytest.approx(1e-3)
    t = OneCycleSchedule(1e-3, 10, pct_start=0.3, div=5.0)
    assert t.value(0) == pytest.approx(2e-4) and t.value(3) == pytest.approx(1e-3)


def test_valley_on_hand_traced_cases():
    # strictly decreasing, 10 points: lds[9] = 10, start = 9 - 10 = -1, sections 10/3
    # -> idx = -1 + 3 + int(1.67) = 3 (fastai's own arithmetic)
    losses = [10.0 - i for i in range(10)]
    assert valley(list(range(10)), losses) == 3
    # longest decreasing subsequence 5,4,3,2,1 (ends at 5), start = 5 - 5 = 0 -> idx = 0 + 1 + 0
    assert valley(list(range(7)), [5.0, 4.0, 3.0, 6.0, 2.0, 1.0, 7.0]) == 1


def test_suggest_cuts_the_ends_and_nans():
    lrs = [10 ** (-7 + i * 0.08) for i in range(100)]
    losses = [5.0 - 0.04 * i for i in range(100)]
    # kept: indices 10..94 (85 points, decreasing): -1 + int(85/3) + int(85/6) = 41 -> index 51
    assert suggest(lrs, losses, 100) == pytest.approx(lrs[10 + 41])
    with_nan = losses[:30] + [float("nan")] * 70
    assert suggest(lrs, with_nan, 100) == pytest.approx(lrs[10 + (-1 + int(20 / 3) + int(20 / 6))])
    assert minimum([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="usable point"):
        suggest(lrs[:12], losses[:12], 100)


class _Lin(Task):
    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.model(x) - y) ** 2).mean()}


def test_lr_find_exponential_lrs_restores_weights_and_stops_on_divergence():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    task = _Lin(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 4)
    loader = [(x[i:i + 8], x[i:i + 8].sum(1, keepdim=True)) for i in range(0, 64, 8)]
    lrs, losses = lr_find(task, opt, loader, device=torch.device("cpu"), start_lr=1e-4, end_lr=100.0, num_it=30)
    assert lrs[:3] == pytest.approx([1e-4 * (1e6) ** (i / 30) for i in range(3)])
    assert len(lrs) < 30  # the loss blew up past 4x its best before the end
    assert losses[-1] > 4 * min(losses[:-1]) or not math.isfinite(losses[-1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.1 and not opt.state
